"""Timing any Trainer's optimizer steps from outside, for `make bench`: tokens/s and the split of a step come from
the real training path, not a re-implementation.

StepTimer wraps the Trainer instance's training_step and compute_loss and hooks the decoder. The split: forward = the
decoder (embeddings + blocks); LM head + loss = compute_loss minus the decoder; backward = training_step minus
compute_loss; data = from the end of the previous step to this step's training_step (fetching and collating the
batch); optimizer = the rest of the step (gradient clipping, AdamW, scheduler, zero_grad, callbacks). No
synchronisation is needed on a CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import Trainer, TrainerCallback

PARTS = ("forward s", "LM head + loss s", "backward s", "optimizer s", "data s")


@dataclass
class StepTime:
    seconds: float  # the whole optimizer step
    real_tokens: int  # non-pad tokens (attention_mask, or every token of a packed row)
    slots: int  # token positions computed, padding included
    data: float  # previous step's end -> this step's training_step
    backbone: float  # the decoder's forward
    loss: float  # compute_loss: decoder + LM head + loss
    train_step: float  # training_step: compute_loss + backward


def real_tokens(inputs: dict) -> int:
    mask = inputs.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


class StepTimer(TrainerCallback):
    """Times every optimizer step of any Trainer (plain, SFT, LabTrainer) without changing what it computes: wraps the
    instance's training_step and compute_loss, hooks the decoder, and closes a step in on_step_end."""

    def __init__(self) -> None:
        self.steps: list[StepTime] = []
        self.lab_rate: float | None = None  # helpers.training's own tokens/s for the same run, when it is the lab's
        self._last_end: float | None = None
        self._clear()

    def _clear(self) -> None:
        self._fetched: float | None = None
        self._open: float | None = None
        self._sums = {"real": 0, "slots": 0, "backbone": 0.0, "loss": 0.0, "train_step": 0.0}

    def attach(self, trainer: Trainer) -> StepTimer:
        trainer.training_step = self._timed(trainer.training_step, "train_step", count=True)
        trainer.compute_loss = self._timed(trainer.compute_loss, "loss")
        decoder = decoder_of(trainer.model)
        decoder.register_forward_pre_hook(lambda *_: setattr(self, "_open", time.perf_counter()))
        decoder.register_forward_hook(lambda *_: self._add("backbone", time.perf_counter() - self._open))
        trainer.add_callback(self)
        return self

    def _add(self, key: str, value: float) -> None:
        self._sums[key] += value

    def _timed(self, inner: Callable, key: str, count: bool = False) -> Callable:
        def wrapper(model, inputs, *args, **kwargs):
            start = time.perf_counter()
            if count:
                self._fetched = self._fetched or start
                self._add("real", real_tokens(inputs))
                self._add("slots", int(inputs["input_ids"].numel()))
            result = inner(model, inputs, *args, **kwargs)
            self._add(key, time.perf_counter() - start)
            return result
        return wrapper

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_end = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        end = time.perf_counter()
        s = self._sums
        self.steps.append(StepTime(end - self._last_end, s["real"], s["slots"], (self._fetched or end) - self._last_end,
                                   s["backbone"], s["loss"], s["train_step"]))
        self._last_end = end
        self._clear()


def tokens_per_second(steps: list[StepTime]) -> float:
    return sum(s.real_tokens for s in steps) / sum(s.seconds for s in steps)


def step_split(steps: list[StepTime]) -> dict[str, float]:
    """Mean seconds per step in each part (they add up to the step)."""
    n = len(steps)
    mean = {k: sum(getattr(s, k) for s in steps) / n for k in ("seconds", "data", "backbone", "loss", "train_step")}
    return {"forward s": mean["backbone"], "LM head + loss s": mean["loss"] - mean["backbone"],
            "backward s": mean["train_step"] - mean["loss"],
            "optimizer s": max(0.0, mean["seconds"] - mean["train_step"] - mean["data"]), "data s": mean["data"]}
