"""The base model's "before" numbers (held-out perplexity, general-text perplexity, answers), computed once per profile
and stored beside the results, so notebooks 00-03 and every seed read them instead of measuring them again.

A fresh LoRA adapter is exactly zero (B = 0), so every full-precision run starts from these numbers; QLoRA starts
from the 4-bit base, which has its own file.
"""

from __future__ import annotations

import json
from pathlib import Path

from .data import fingerprint
from .specs import config_fields
from .results import VERSION_KEYS, code_version, digest, write_json_atomic
from .environment import package_versions
from .memory import release

BASELINE_DIR = "baseline"
VERSION = 1


def key(lab, quantization) -> str:
    p = lab.profile
    versions = package_versions()
    forgetting = fingerprint(lab.forgetting_set) if lab.forgetting_set is not None else None
    return digest(VERSION, p.model, config_fields(quantization) or None, lab.data.fingerprint,
                   forgetting, p.eval_batch_tokens, p.generation_tokens, lab.data.instructions, lab.env.precision.name,
                   lab.env.device_name, {k: versions.get(k) for k in VERSION_KEYS}, code_version())


def path(lab, quantization) -> Path:
    kind = "4bit" if quantization is not None else "full-precision"
    return lab.results_dir / BASELINE_DIR / f"{lab.profile.model}-{kind}-{key(lab, quantization)}.json"


def measure(lab, model) -> dict:
    return {"eval": lab.evaluate(model), "forgetting": lab.evaluate_forgetting(model), "generations": lab.generate(model)}


def get(lab, quantization=None) -> dict:
    """The stored numbers for this profile, data, precision, packages and code; measured (and stored) when absent."""
    target = path(lab, quantization)
    if target.exists():
        try:
            stored = json.loads(target.read_text())
            if stored.get("version") == VERSION:
                return stored
        except (OSError, json.JSONDecodeError):
            pass  # a damaged file is measured again
    model = lab.base_model(quantization)
    numbers = {"version": VERSION, "quantization": config_fields(quantization) or None,
               **measure(lab, model)}
    del model
    release()
    write_json_atomic(numbers, target)
    return numbers
