"""Budgets: one profile fixes model, data and token budget for every method, so runs compare fairly."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

import torch

from .environment import PROFILE_ENV, hub_offline


@dataclass(frozen=True)
class Profile:
    name: str
    model: str  # preset name in helpers.models.PRESETS
    dataset: str  # manifest name in data_manifests/
    train_examples: int  # cap on training rows (after the eval split)
    eval_examples: int  # cap on held-out rows; the same rows for every method
    max_length: int  # tokens per example; longer examples are dropped, never cut (a cut loses the EOS)
    batch_size: int  # examples per optimizer step (packed into one row, no padding)
    max_steps: int  # optimizer steps: batch_size * max_steps examples, identical for every method
    warmup_steps: int
    eval_batch_size: int
    generation_tokens: int  # greedy tokens per before/after generation
    generation_prompts: int  # how many of the manifest's fixed prompts to generate for
    logging_steps: int
    seed: int = 42


PROFILES: dict[str, Profile] = {
    # Tests: the real bundled model, a handful of steps, seconds per run.
    "smoke": Profile("smoke", "smollm2-135m-bundled", "python_docs", train_examples=8, eval_examples=6,
                     max_length=128, batch_size=2, max_steps=2, warmup_steps=0, eval_batch_size=6,
                     generation_tokens=8, generation_prompts=1, logging_steps=1),
    # The offline lab on a 2-core CPU: about a minute of training per method.
    "cpu": Profile("cpu", "smollm2-135m-bundled", "python_docs", train_examples=120, eval_examples=40,
                   max_length=192, batch_size=4, max_steps=30, warmup_steps=3, eval_batch_size=8,
                   generation_tokens=40, generation_prompts=3, logging_steps=2),
    # Colab T4: the Hub model at full precision and a Hub dataset, minutes per method.
    "gpu": Profile("gpu", "smollm2-135m", "alpaca_cleaned", train_examples=4000, eval_examples=300,
                   max_length=512, batch_size=16, max_steps=200, warmup_steps=10, eval_batch_size=16,
                   generation_tokens=96, generation_prompts=3, logging_steps=10),
}


def auto_profile_name() -> str:
    """$LAB_PROFILE, else `gpu` on a CUDA machine that may use the Hub, else `cpu`."""
    chosen = os.environ.get(PROFILE_ENV)
    if chosen:
        return chosen
    return "gpu" if torch.cuda.is_available() and not hub_offline() else "cpu"


def get_profile(name: str | None = None, **overrides) -> Profile:
    """The named (or auto-chosen) profile; overrides whose value is None keep the profile's value."""
    name = name or auto_profile_name()
    if name not in PROFILES:
        raise ValueError(f"Unknown profile {name!r} (from the parameters cell or ${PROFILE_ENV}). "
                         f"Choose one of: {', '.join(PROFILES)}.")
    known = {f.name for f in fields(Profile)}
    unknown = set(overrides) - (known - {"name"})
    if unknown:
        raise ValueError(f"Unknown profile setting(s) {sorted(unknown)}; settable: {sorted(known - {'name'})}.")
    return replace(PROFILES[name], **{k: v for k, v in overrides.items() if v is not None})
