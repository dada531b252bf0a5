"""A notebook's session: profile + data + the run of one spec end to end, skipped when already done."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import torch

from . import results
from .data import LabData, load_manifest, prepare_data
from .environment import Environment, detect, package_versions, results_dir, write_directory_atomically
from .evaluation import generate, perplexity
from .models import get_preset, load_model, load_tokenizer, parameter_count
from .profiles import Profile, get_profile
from .training import MemoryMeter, RunSpec, build_model, expected_lora_parameters, release, target_modules, train


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def save_artifact(model: torch.nn.Module, target: Path) -> int:
    """Adapter only for LoRA/QLoRA (PEFT saves just the adapter), the whole model for full fine-tuning."""
    return directory_bytes(write_directory_atomically(target, model.save_pretrained))


class Lab:
    """What one notebook works with. Settings left as None take the profile's value."""

    def __init__(self, profile: str | None = None, results: str | Path | None = None, **overrides):
        self.env: Environment = detect()
        self.profile: Profile = get_profile(profile, **overrides)
        self.results_dir = Path(results) if results else results_dir()
        self._before: dict[tuple, tuple[dict, list[str]]] = {}

    def describe(self) -> str:
        p = self.profile
        return (f"{self.env.describe()}\nprofile {p.name}: model {p.model}, data {p.dataset}, "
                f"{p.max_steps} steps x {p.batch_size} examples (max {p.max_length} tokens), "
                f"eval on {p.eval_examples} held-out examples\nresults -> {self.results_dir}")

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.profile.model)

    @cached_property
    def data(self) -> LabData:
        p = self.profile
        return prepare_data(p.dataset, self.tokenizer, get_preset(p.model).prompt_format, p.max_length,
                            p.train_examples, p.eval_examples, p.generation_prompts, p.seed)

    def artifact_path(self, record: dict) -> Path:
        return self.results_dir / record["artifact"]["path"]

    def result_path(self, run_id: str) -> Path:
        return self.results_dir / f"{run_id}.json"

    def config_fingerprint(self, spec: RunSpec) -> str:
        """What decides a run's numbers; a stored result with another fingerprint is stale."""
        manifest = load_manifest(self.profile.dataset).path.read_text()
        blob = json.dumps([asdict(spec), asdict(self.profile), manifest, results.SCHEMA_VERSION,
                           self.env.device, self.env.precision.name], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def finished(self, spec: RunSpec) -> dict | None:
        """The stored result for this exact spec and profile, if a valid one exists."""
        path = self.result_path(spec.run_id)
        if not path.exists():
            return None
        try:
            record = results.read(path)
        except results.ResultsError as err:
            print(f"{path.name} is unusable ({err}); it will be run again.")
            return None
        if record.get("config_fingerprint") != self.config_fingerprint(spec):
            print(f"{path.name} was made with other settings; it will be run again.")
            return None
        return record

    def base_model(self) -> torch.nn.Module:
        """The untouched full-precision base model, e.g. for the 'before' picture."""
        return load_model(self.profile.model, self.env.device)

    def evaluate(self, model: torch.nn.Module, desc: str = "perplexity") -> dict[str, float]:
        return perplexity(model, self.data.eval, self.tokenizer.pad_token_id, self.profile.eval_batch_size,
                          desc=desc)

    def generate(self, model: torch.nn.Module) -> list[str]:
        return generate(model, self.tokenizer, self.data.prompts, self.profile.generation_tokens)

    def _before_training(self, spec: RunSpec, model: torch.nn.Module) -> tuple[dict, list[str]]:
        # A fresh LoRA adapter is exactly zero (B = 0), so every unquantized run starts from the same
        # base numbers: measure them once per session, once more for the 4-bit base.
        key = (self.profile.model, spec.quantization)
        if key not in self._before:
            self._before[key] = (self.evaluate(model, "perplexity before"), self.generate(model))
        return self._before[key]

    def run(self, spec: RunSpec, force: bool = False) -> dict:
        """Build, evaluate, train, evaluate, save, record. Skipped when a matching result exists."""
        if not force and (done := self.finished(spec)) is not None:
            print(f"{spec.run_id}: already done ({self.result_path(spec.run_id)}), skipped. "
                  "Set FORCE = True to run it again.")
            return done
        env, profile, data = self.env, self.profile, self.data
        started = _now()
        meter = MemoryMeter(env.device)  # baseline before the model exists: its weights count
        model = build_model(spec, profile, env)
        trainable, total = model.get_nb_trainable_parameters() if spec.lora else parameter_count(model)
        before, generations_before = self._before_training(spec, model)
        with meter.measure():  # training only: loading transients and evaluation are not the method's cost
            outcome = train(model, spec, profile, env, data.train)
        after = self.evaluate(model, "perplexity after")
        generations_after = self.generate(model)
        artifact_dir = self.results_dir / "artifacts" / spec.run_id
        artifact_bytes = save_artifact(model, artifact_dir)

        lora_block = None
        expected = trainable
        if spec.lora:
            targets = target_modules(spec, profile.model)
            expected = expected_lora_parameters(model.get_base_model(), targets, spec.lora.r)
            lora_block = {"r": spec.lora.r, "alpha": spec.lora.alpha, "dropout": spec.lora.dropout,
                          "target_modules": targets}
        quant_block = None
        if spec.quantization:
            quant_block = {"bits": spec.quantization.bits, "quant_type": spec.quantization.quant_type,
                           "double_quant": spec.quantization.double_quant,
                           "compute_dtype": str(env.precision.dtype).removeprefix("torch.")}
        versions = package_versions()
        record = {
            "schema_version": results.SCHEMA_VERSION, "run_id": spec.run_id, "method": spec.method,
            "seed": profile.seed, "started_at": started, "finished_at": _now(),
            "config_fingerprint": self.config_fingerprint(spec),
            "lora": lora_block, "quantization": quant_block,
            "model": {"preset": profile.model, "source": get_preset(profile.model).source,
                      "total_params": total - (trainable if spec.lora else 0)},
            "data": {"manifest": data.manifest.name, "fingerprint": data.fingerprint,
                     "train_examples": len(data.train), "eval_examples": len(data.eval)},
            "params": {"trainable": trainable, "total": total, "trainable_pct": 100 * trainable / total,
                       "expected_trainable": expected},
            "training": {"steps": outcome.steps, "tokens": outcome.tokens, "seconds": outcome.seconds,
                         "tokens_per_second": outcome.tokens_per_second, "pad_fraction": outcome.pad_fraction,
                         "peak_memory_bytes": meter.peak_bytes, "memory_kind": meter.kind,
                         "memory_baseline_bytes": int(meter.baseline), "learning_rate": spec.learning_rate,
                         "optimizer": outcome.optimizer, "batch_size": profile.batch_size, "log": outcome.log},
            "eval": {"tokens": after["tokens"], "loss_before": before["loss"],
                     "perplexity_before": before["perplexity"], "bits_per_token_before": before["bits_per_token"],
                     "loss_after": after["loss"], "perplexity_after": after["perplexity"],
                     "bits_per_token_after": after["bits_per_token"]},
            "generations": [{"prompt": p, "before": b, "after": a} for p, b, a in
                            zip(data.instructions, generations_before, generations_after)],
            # relative to the results folder, so a results folder can be moved or copied (Drive, a USB stick)
            "artifact": {"path": str(artifact_dir.relative_to(self.results_dir)), "bytes": artifact_bytes},
            "environment": {"device": env.device_name, "dtype": env.precision.name, "profile": profile.name,
                            **{k: versions.get(k) for k in ("python", "torch", "transformers", "peft", "trl",
                                                             "bitsandbytes")}},
        }
        path = results.write_atomic(record, self.result_path(spec.run_id))
        print(f"{spec.run_id}: perplexity {before['perplexity']:.2f} -> {after['perplexity']:.2f}, "
              f"{outcome.tokens_per_second:.0f} tokens/s, peak memory {meter.peak_bytes / 2**20:.0f} MiB -> {path}")
        del model
        release()
        return record
