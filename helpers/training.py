"""Run specs (full / LoRA / QLoRA as data), the model each spec builds, and one Trainer-based loop."""

from __future__ import annotations

import gc
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import psutil
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import DataCollatorWithFlattening, Trainer, TrainerCallback, TrainingArguments

from .environment import Environment, return_freed_memory_to_os
from .models import bnb_config, get_preset, load_model
from .profiles import Profile

FULL_LR = 5e-5  # all weights move: a small step keeps the pretrained knowledge
LORA_LR = 3e-4  # adapters start at zero and are few: they need a larger step to learn in the same budget


@dataclass(frozen=True)
class LoraSpec:
    r: int
    alpha: int
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # None: the model preset's attention + MLP projections


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    method: str  # "full" | "lora" | "qlora"
    learning_rate: float
    lora: LoraSpec | None = None
    quantization: QuantSpec | None = None
    paged_optimizer_on_cuda: bool = False  # paged 8-bit AdamW: optimizer state pages to CPU under pressure


def full() -> RunSpec:
    return RunSpec("full", "full", FULL_LR)


def lora(r: int, alpha: int | None = None) -> RunSpec:
    """alpha = 2r by default: the update is scaled by alpha / r, so every rank gets the same scale (2)."""
    return RunSpec(f"lora-r{r}", "lora", LORA_LR, LoraSpec(r, alpha if alpha is not None else 2 * r))


def qlora(r: int = 16) -> RunSpec:
    # QLoRA = LoRA on a 4-bit NF4 base: the same spec plus one quantization line.
    return replace(lora(r), run_id="qlora", method="qlora", quantization=QuantSpec(), paged_optimizer_on_cuda=True)


STANDARD_RUNS: tuple[RunSpec, ...] = (full(), lora(8), lora(16), lora(32), qlora())


def target_modules(spec: RunSpec, preset_name: str) -> list[str]:
    return list(spec.lora.target_modules or get_preset(preset_name).lora_targets)


def expected_lora_parameters(model: torch.nn.Module, targets: list[str], r: int) -> int:
    """r * (in + out) per adapted linear layer: A is r x in, B is out x r."""
    total = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] in targets and hasattr(module, "weight") and module.weight.dim() == 2:
            in_f = getattr(module, "in_features", None) or getattr(module, "nx", None)
            out_f = getattr(module, "out_features", None) or getattr(module, "nf", None)
            total += r * (in_f + out_f)
    return total


def build_model(spec: RunSpec, profile: Profile, env: Environment) -> torch.nn.Module:
    """The base model prepared for this spec's method; only what the spec trains has requires_grad."""
    quant = None
    if spec.quantization:
        if spec.quantization.bits != 4:
            raise ValueError(f"{spec.run_id}: only 4-bit quantization is supported, got {spec.quantization.bits}.")
        quant = bnb_config(spec.quantization.quant_type, spec.quantization.double_quant, env.precision.dtype)
    model = load_model(profile.model, env.device, quant)
    if spec.method == "full":
        return model
    if quant is not None:
        # Casts norms and the head to fp32 for stable training; checkpointing stays off for every method alike.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
                        target_modules=target_modules(spec, profile.model), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


class MemoryMeter:
    """Peak memory of one run, above what the process held when the meter started.

    CUDA: the allocator's max_memory_allocated, reset at each measured block. CPU: RSS sampled every
    20 ms by a thread (ru_maxrss would be the process's lifetime peak, i.e. an earlier run's).
    Only blocks under `measure()` count, so loading transients and evaluation do not inflate a method's cost.
    """

    def __init__(self, device: str):
        self.device = device
        self.kind = "cuda_max_allocated" if device == "cuda" else "cpu_rss_sampled"
        gc.collect()
        return_freed_memory_to_os()
        if device == "cuda":
            torch.cuda.empty_cache()
            self.baseline = torch.cuda.memory_allocated()
        else:
            self._process = psutil.Process()
            self.baseline = self._process.memory_info().rss
        self.peak = self.baseline

    @contextmanager
    def measure(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            try:
                yield
            finally:
                torch.cuda.synchronize()
                self.peak = max(self.peak, torch.cuda.max_memory_allocated())
            return
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                self.peak = max(self.peak, self._process.memory_info().rss)
                stop.wait(0.02)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def peak_bytes(self) -> int:
        return int(self.peak - self.baseline)


class CountingCollator:
    """Packs a batch into one row without padding (position ids restart per example, and
    transformers masks attention at the restarts), counting real and padded token slots."""

    def __init__(self):
        self.inner = DataCollatorWithFlattening(return_position_ids=True)
        self.real_tokens = 0
        self.slots = 0

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.inner(examples)
        self.real_tokens += sum(len(e["input_ids"]) for e in examples)
        self.slots += batch["input_ids"].numel()
        return batch

    @property
    def pad_fraction(self) -> float:
        return 1 - self.real_tokens / self.slots if self.slots else 0.0


class StepClock(TrainerCallback):
    """Wall time and real tokens at the end of every optimizer step (for throughput after warm-up)."""

    def __init__(self, collator: CountingCollator):
        self.collator = collator
        self.marks: list[tuple[float, int]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks = [(time.perf_counter(), self.collator.real_tokens)]

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.marks.append((time.perf_counter(), self.collator.real_tokens))

    def tokens_per_second(self) -> float:
        """Excludes step 1: it pays for lazy initialisation and kernel warm-up, not for training."""
        if len(self.marks) < 3:
            (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        else:
            (t0, n0), (t1, n1) = self.marks[1], self.marks[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


@dataclass
class TrainingOutcome:
    steps: int
    tokens: int
    seconds: float
    tokens_per_second: float
    pad_fraction: float
    optimizer: str
    log: list[dict] = field(default_factory=list)


def train(model: torch.nn.Module, spec: RunSpec, profile: Profile, env: Environment, train_set) -> TrainingOutcome:
    """One code path for every method: Trainer with the spec's learning rate and the profile's budget."""
    collator = CountingCollator()
    clock = StepClock(collator)
    optimizer = "paged_adamw_8bit" if spec.paged_optimizer_on_cuda and env.device == "cuda" else "adamw_torch"
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch, max_steps=profile.max_steps, per_device_train_batch_size=profile.batch_size,
            learning_rate=spec.learning_rate, lr_scheduler_type="linear", warmup_steps=profile.warmup_steps,
            logging_steps=profile.logging_steps, save_strategy="no", report_to="none", seed=profile.seed,
            data_seed=profile.seed, fp16=env.precision.fp16, bf16=env.precision.bf16, optim=optimizer,
            use_cpu=env.device == "cpu", dataloader_num_workers=0, remove_unused_columns=False,
            disable_tqdm=False, max_grad_norm=1.0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collator, callbacks=[clock])
        result = trainer.train()
    log = [{"step": e["step"], "loss": e["loss"], "lr": e.get("learning_rate"), "grad_norm": e.get("grad_norm")}
           for e in trainer.state.log_history if "loss" in e]
    return TrainingOutcome(steps=trainer.state.global_step, tokens=collator.real_tokens,
                           seconds=result.metrics["train_runtime"], tokens_per_second=clock.tokens_per_second(),
                           pad_fraction=collator.pad_fraction, optimizer=optimizer, log=log)


def release() -> None:
    """After the caller drops its last reference to a model: give its memory back before the next run."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return_freed_memory_to_os()
