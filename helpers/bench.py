"""`make bench` (python -m helpers.bench): how fast the lab's training path is against the naive recipe of the seed
project it was built from, on the same model and the same examples in one process, and where the difference comes
from, one lever at a time.

Rows (LoRA r8, then full fine-tuning):
- naive baseline (seed-002 recipe): plain transformers.Trainer, every example padded to 512 tokens, labels =
  input_ids with the padding as targets, fp32, LoRA dropout 0.05.
- padded to the batch's longest (LoRA only): the same Trainer, padding only to the longest example of the step,
  padding out of attention and loss (the lab's labels): the padding lever alone.
- packed, no padding (fp32, dropout 0.05): helpers.training with fp32 forced: the packing lever.
- + bf16 autocast: helpers.training as detect() chooses it, LoRA dropout still 0.05: the precision lever.
- lab (+ LoRA dropout 0): helpers.training exactly as `make lab` runs it (full: "lab (+ bf16 autocast)").
- lab with TRL's fused LM head: the same, with SFTTrainer.compute_loss instead of LabTrainer's full-logits loss.

Where the numbers come from: every row is a real Trainer run (transformers.Trainer for the naive and padded rows,
helpers.training's build_base + make_trainer + train for the others). StepTimer times each optimizer step of that
Trainer from outside (its own training_step and compute_loss, and hooks on the decoder), so tokens/s and the split of
a step are the real path's, not a re-implementation's. The split: forward = the decoder (embeddings + blocks);
LM head + loss = compute_loss minus the decoder; backward = training_step minus compute_loss; data = from the end of
the previous step to this step's training_step (fetching and collating the batch); optimizer = the rest of the step
(gradient clipping, AdamW, scheduler, zero_grad, callbacks). No synchronisation is needed on a CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import MethodType
from typing import Callable

import torch
from datasets import Dataset
from peft import get_peft_model
from transformers import (DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainerCallback, TrainingArguments,
                          default_data_collator)
from trl import SFTTrainer

from . import specs
from .environment import Environment, choose_precision, package_versions, results_dir
from .models import load_config, load_model
from .results import BENCH_FILE, write_json_atomic
from .profiles import PROFILES
from .runs import Lab, release
from .training import (PROGRESS_ENV, build_base, expected_lora_parameters, make_trainer, peft_config, target_modules,
                       train)

NAIVE = "naive baseline (seed-002 recipe)"
NAIVE_WIDTH = 512  # the recipe's padding="max_length", max_length=512
NAIVE_DROPOUT = 0.05  # the recipe's lora_dropout
PADDED = "padded to the batch's longest (fp32, dropout 0.05)"
PACKED = "packed, no padding (fp32, dropout 0.05)"
PACKED_FULL = "packed, no padding (fp32)"
BF16 = "+ bf16 autocast (dropout 0.05)"
LAB = "lab (+ LoRA dropout 0)"
LAB_FULL = "lab (+ bf16 autocast)"
FUSED = "lab with TRL's fused LM head"
# The levers in order: each row changes one thing from the row before it (the name says what).
LORA_CHAIN = ((NAIVE, ""), (PADDED, "padding"), (PACKED, "packing"), (BF16, "bf16 autocast"), (LAB, "LoRA dropout 0"))
FULL_CHAIN = ((NAIVE, ""), (PACKED_FULL, "padding + packing"), (LAB_FULL, "bf16 autocast"))
PARTS = ("forward s", "LM head + loss s", "backward s", "optimizer s", "data s")
COLUMNS = ("pipeline", "method", "precision", "padding %", "tokens/s", "× naive", "MFU %", "peak GFLOP/s", *PARTS)
GEMM_TOKENS = 512  # rows of the model-shaped GEMMs: about one packed step of the cpu profile (4 x ~123 tokens)


# ---------------------------------------------------------------- the machine's matmul peak

def gemm_gflops(m: int, k: int, n: int, dtype: torch.dtype, windows: int = 3, seconds: float = 0.1) -> float:
    """GFLOP/s of an (m x k) @ (k x n) matmul: the best of a few short windows (a peak, so the least disturbed one)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    torch.mm(a, b)  # the first call picks and caches the kernel
    best = 0.0
    for _ in range(windows):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            torch.mm(a, b)
            calls += 1
        best = max(best, 2 * m * k * n * calls / elapsed / 1e9)
    return best


def gemm_shapes(config) -> dict[str, tuple[int, int, int]]:
    """A square GEMM and the model's own: attention projection, MLP up and down, LM head, on one packed step."""
    h, i, v, t = config.hidden_size, config.intermediate_size, config.vocab_size, GEMM_TOKENS
    return {"2048x2048x2048": (2048, 2048, 2048), f"{t}x{h}x{h} (q/o proj)": (t, h, h),
            f"{t}x{h}x{i} (gate/up proj)": (t, h, i), f"{t}x{i}x{h} (down proj)": (t, i, h),
            f"{t}x{h}x{v} (LM head)": (t, h, v)}


def measure_peaks(config) -> dict[str, dict[str, float]]:
    """{precision: {shape: GFLOP/s}} for fp32 and bf16; a row's MFU uses the best shape of its precision."""
    return {name: {label: round(gemm_gflops(*shape, dtype), 1) for label, shape in gemm_shapes(config).items()}
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}


# ---------------------------------------------------------------- useful work per real token

def matmul_parameters(model: torch.nn.Module) -> int:
    """Weights that matmuls touch: every nn.Linear, the (tied) LM head once; the embedding lookup is no matmul."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def mean_context(lengths: list[int]) -> float:
    """Keys a real token attends to, on average: causal attention within its own example, so position + 1.
    Packing keeps examples apart and padding adds no useful key, so every pipeline does the same useful work."""
    return sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)


def flops_per_token(method: str, matmul_params: int, layers: int, width: int, context: float,
                    adapter_params: int = 0) -> float:
    """Training FLOPs per real token. Weights: 2N forward + 2N backward to the activations, + 2N for the weight
    gradients when they train (full: 6N); LoRA's frozen base has no weight gradients (4N) and its adapters train
    (6 x adapter params). Attention: QK^T and AV are 4*L*width*context forward, twice that backward (12*L*width*ctx)."""
    weights = (6 if method == "full" else 4) * matmul_params + 6 * adapter_params
    return weights + 12 * layers * width * context


def mfu_percent(tokens_per_second: float, flops: float, peak_gflops: float) -> float:
    return 100 * tokens_per_second * flops / (peak_gflops * 1e9)


# ---------------------------------------------------------------- timing a Trainer from outside

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


# ---------------------------------------------------------------- rows

def tokens_per_second(steps: list[StepTime]) -> float:
    return sum(s.real_tokens for s in steps) / sum(s.seconds for s in steps)


def step_split(steps: list[StepTime]) -> dict[str, float]:
    """Mean seconds per step in each part (they add up to the step)."""
    n = len(steps)
    mean = {k: sum(getattr(s, k) for s in steps) / n for k in ("seconds", "data", "backbone", "loss", "train_step")}
    return {"forward s": mean["backbone"], "LM head + loss s": mean["loss"] - mean["backbone"],
            "backward s": mean["train_step"] - mean["loss"],
            "optimizer s": max(0.0, mean["seconds"] - mean["train_step"] - mean["data"]), "data s": mean["data"]}


def make_row(pipeline: str, method: str, precision: str, steps: list[StepTime], naive_rate: float | None,
             flops: float, peak_gflops: float) -> dict:
    """One table row from the timed steps (warm-up steps already left out)."""
    rate = tokens_per_second(steps)
    slots = sum(s.slots for s in steps)
    row = {"pipeline": pipeline, "method": method, "precision": precision,
           "padding %": round(100 * (1 - sum(s.real_tokens for s in steps) / slots), 1),
           "tokens/s": round(rate, 1), "× naive": round(rate / naive_rate, 2) if naive_rate else 1.0,
           "MFU %": round(mfu_percent(rate, flops, peak_gflops), 2), "peak GFLOP/s": round(peak_gflops, 1)}
    row.update({k: round(v, 3) for k, v in step_split(steps).items()})
    return row


def gains(rows: list[dict], chain: tuple[tuple[str, str], ...], method: str) -> dict[str, float]:
    """Each lever's factor (ratio of consecutive rows of `chain` present for `method`), the total lab / naive, and
    the lab's full-logits loss against TRL's fused LM head."""
    rate = {r["pipeline"]: r["tokens/s"] for r in rows if r["method"] == method}
    present = [(pipeline, lever) for pipeline, lever in chain if pipeline in rate]
    found = {lever: rate[b] / rate[a] for (a, _), (b, lever) in zip(present, present[1:])}
    found["total (lab / naive)"] = rate[present[-1][0]] / rate[present[0][0]]
    if FUSED in rate:
        found["full logits instead of the fused LM head"] = rate[present[-1][0]] / rate[FUSED]
    return found


# ---------------------------------------------------------------- the pipelines

@dataclass
class Setup:
    """What every row shares: the lab (cpu profile with the bench's step count, model, examples), a scratch folder."""
    lab: Lab
    output_dir: Path

    @property
    def env(self) -> Environment:
        return self.lab.env


def recipe_padding(dataset: Dataset, tokenizer, width: int = NAIVE_WIDTH) -> Dataset:
    """The recipe's tokenization on the lab's own tokens: padded to `width`, labels = input_ids, padding included."""
    def pad(batch: dict) -> dict:
        padded = tokenizer.pad({"input_ids": batch["input_ids"]}, padding="max_length", max_length=width)
        return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"],
                "labels": [list(ids) for ids in padded["input_ids"]]}
    return dataset.map(pad, batched=True, remove_columns=dataset.column_names)


def run_recipe(setup: Setup, spec: specs.RunSpec, fixed_width: bool) -> StepTimer:
    """The seed recipe: plain transformers.Trainer, fp32; batch, AdamW, learning rate and schedule as the lab's."""
    lab, profile = setup.lab, setup.lab.profile
    model = load_model(profile.model, "cpu")
    if spec.lora:
        model = get_peft_model(model, peft_config(spec, profile.model))
    if fixed_width:
        data, collator = recipe_padding(lab.data.train, lab.tokenizer), default_data_collator
    else:  # only the padding changes: to the step's longest example, masked out of attention and loss
        data, collator = lab.data.train, DataCollatorForSeq2Seq(lab.tokenizer, padding="longest")
    args = TrainingArguments(
        output_dir=str(setup.output_dir), seed=lab.seeds[0], data_seed=lab.seeds[0], max_steps=profile.max_steps,
        per_device_train_batch_size=profile.batch_size, learning_rate=profile.learning_rate(spec.method),
        lr_scheduler_type="linear", warmup_steps=profile.warmup_steps, max_grad_norm=1.0, weight_decay=0.0,
        optim="adamw_torch", bf16=False, fp16=False, use_cpu=True, save_strategy="no", report_to="none",
        logging_steps=profile.max_steps, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
    trainer.remove_callback(PrinterCallback)  # a quiet bench output; the Trainer still logs as the recipe's did
    timer = StepTimer().attach(trainer)
    trainer.train()
    return timer


def run_lab(setup: Setup, spec: specs.RunSpec, env: Environment, fused_head: bool = False) -> StepTimer:
    """helpers.training as Lab.run_seed calls it; `fused_head` swaps in SFTTrainer's own (fused LM head) loss."""
    lab = setup.lab
    model = build_base(spec, lab.profile, env)
    trainer = make_trainer(model, spec, lab.profile, env, lab.data.train, lab.tokenizer, lab.seeds[0],
                           setup.output_dir, f"bench {spec.run_id}")
    if fused_head:
        trainer.compute_loss = MethodType(SFTTrainer.compute_loss, trainer)
    timer = StepTimer().attach(trainer)
    outcome = train(trainer)
    if [s.tokens for s in trainer.steps] != [s.real_tokens for s in timer.steps]:  # the lab counts the same steps
        raise RuntimeError(f"bench {spec.run_id}: the lab's step records and the bench timer disagree on the tokens")
    timer.lab_rate = outcome.tokens_per_second
    return timer


def plan(setup: Setup) -> list[tuple[str, str, str, Callable[[], StepTimer]]]:
    """(pipeline, method, precision, run) in table order: LoRA r8 lever by lever, then full fine-tuning."""
    lab_env = setup.env
    fp32_env = replace(lab_env, precision=choose_precision("cpu", native_bf16=False))
    lab_precision = lab_env.precision.name
    # The naive LoRA adapts the same 7 projections as the lab (only its dropout is the recipe's): the same adapted
    # layers mean the same work per real token, so the ratio measures the pipeline, not the adapter.
    naive_lora, lab_lora, full = specs.lora(8, dropout=NAIVE_DROPOUT), specs.lora(8), specs.full()
    rows = [
        (NAIVE, "lora-r8", "fp32", lambda: run_recipe(setup, naive_lora, fixed_width=True)),
        (PADDED, "lora-r8", "fp32", lambda: run_recipe(setup, naive_lora, fixed_width=False)),
        (PACKED, "lora-r8", "fp32", lambda: run_lab(setup, naive_lora, fp32_env)),
        (BF16, "lora-r8", lab_precision, lambda: run_lab(setup, naive_lora, lab_env)),
        (LAB, "lora-r8", lab_precision, lambda: run_lab(setup, lab_lora, lab_env)),
        (FUSED, "lora-r8", lab_precision, lambda: run_lab(setup, lab_lora, lab_env, fused_head=True)),
        (NAIVE, "full", "fp32", lambda: run_recipe(setup, full, fixed_width=True)),
        (PACKED_FULL, "full", "fp32", lambda: run_lab(setup, full, fp32_env)),
        (LAB_FULL, "full", lab_precision, lambda: run_lab(setup, full, lab_env)),
        (FUSED, "full", lab_precision, lambda: run_lab(setup, full, lab_env, fused_head=True)),
    ]
    if lab_precision == "fp32":  # a CPU without bf16 matmuls: no bf16 lever, the packed fp32 full run is the lab's
        rows = [r for r in rows if r[0] not in (BF16, PACKED_FULL)]
    return rows


# ---------------------------------------------------------------- the bench

def machine() -> str:
    """The CPU model, its cores and whether it multiplies bf16 in hardware."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor() or platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    bf16 = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "none"
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, bf16 matmul: {bf16}"


def work_per_token(lab: Lab) -> tuple[dict[str, float], dict]:
    """({method: FLOPs per real token}, the numbers that went into them) for this model and these examples."""
    config = load_config(lab.profile.model)
    model = load_model(lab.profile.model, "cpu")
    n = matmul_parameters(model)
    adapters = expected_lora_parameters(model, target_modules(specs.lora(8), lab.profile.model), 8)
    del model
    width = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    context = mean_context([len(x) for x in lab.data.train["input_ids"]])
    flops = {"full": flops_per_token("full", n, config.num_hidden_layers, width, context),
             "lora-r8": flops_per_token("lora", n, config.num_hidden_layers, width, context, adapters)}
    return flops, {"matmul_params": n, "adapter_params": adapters, "layers": config.num_hidden_layers,
                   "attention_width": width, "mean_context": round(context, 1)}


@contextmanager
def headless(progress: Path):
    """The lab path as `make lab` runs it: progress lines to a file instead of progress bars and log dicts."""
    before = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = str(progress)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = before


def measure_rows(lab: Lab, warmup: int, methods: tuple[str, ...], flops: dict[str, float],
                 peaks: dict[str, float]) -> tuple[list[dict], dict]:
    """Run every planned row of `methods` in table order: (rows, checks on the runs themselves)."""
    rows, orders, agreement, naive_rate = [], set(), [], {}
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch, headless(Path(scratch) / "progress.txt"):
        for pipeline, method, precision, run in plan(Setup(lab, Path(scratch))):
            if method not in methods:
                continue
            start = time.perf_counter()
            timer = run()
            timed = timer.steps[warmup:] or timer.steps
            row = make_row(pipeline, method, precision, timed, naive_rate.get(method), flops[method], peaks[precision])
            naive_rate.setdefault(method, row["tokens/s"])  # the naive row comes first in each method
            rows.append(row)
            orders.add(tuple(s.real_tokens for s in timer.steps))
            if timer.lab_rate is not None and warmup == 1:  # the lab also leaves out exactly the first step
                agreement.append(abs(timer.lab_rate / tokens_per_second(timed) - 1))
            print(f"  {method:8s} {pipeline}: {row['tokens/s']:.0f} tokens/s, x{row['× naive']:.2f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            del timer
            release()
    return rows, {"same_order": len(orders) == 1, "lab_disagreement": max(agreement, default=None)}


def notes_for(lab: Lab, steps: int, warmup: int, flops: dict[str, float], work: dict, peaks: dict[str, float],
              checks: dict, found: dict[str, dict[str, float]], seconds: float) -> list[str]:
    """What a reader needs to trust the table: the method, the FLOPs arithmetic, the checks, the levers."""
    batch, total, seed = lab.profile.batch_size, warmup + steps, lab.seeds[0]
    notes = [
        f"tokens/s: real (non-pad) tokens per second of wall time over {steps} steps after {warmup} warm-up step(s) "
        f"of {batch} examples ({total * batch} of the cpu profile's training examples, drawn in the seed-{seed} "
        "order of the lab's runs); × naive: against the naive row of the same method.",
        "same examples in the same order in every row: " + ("yes" if checks["same_order"] else "NO (samplers differ)"),
        f"MFU: useful FLOPs per real token x tokens/s / peak. Weights: 6N full, 4N + 6 x adapter params LoRA r8, "
        f"N = {work['matmul_params']:,} matmul parameters (the tied LM head once), adapters "
        f"{work['adapter_params']:,}; attention 12 x L x h x T_ctx with L = {work['layers']}, h = "
        f"{work['attention_width']}, T_ctx = {work['mean_context']} (mean causal context of a real token within its "
        "own example: padding and packed neighbours are no useful work). FLOPs/token: full "
        f"{flops['full'] / 1e9:.3f} G, LoRA r8 {flops['lora-r8'] / 1e9:.3f} G.",
        f"peak: the best GEMM of the row's precision measured at the start (GFLOP/s): fp32 {peaks['fp32']:.0f}, "
        f"bf16 {peaks['bf16']:.0f}; every shape in gemm_gflops.",
        "every row is a real Trainer run: transformers.Trainer for the naive and padded rows, helpers.training "
        "(build_base, make_trainer, train) for the others; the step split comes from timing that same Trainer "
        "(forward = decoder, LM head + loss = compute_loss minus decoder, backward = training_step minus "
        "compute_loss, data = fetch and collation, optimizer = the rest: clipping, AdamW, scheduler, zero_grad).",
    ]
    if checks["lab_disagreement"] is not None:
        notes.append(f"lab rows: helpers.training's own tokens/s agrees with this timer within "
                     f"{100 * checks['lab_disagreement']:.1f}%.")
    notes += [f"{method}: " + ", ".join(f"{lever} x{value:.2f}" for lever, value in g.items())
              for method, g in found.items()]
    return notes + [f"whole bench: {seconds:.0f} s in one process"]


def bench(steps: int, warmup: int, methods: tuple[str, ...] = ("lora-r8", "full")) -> dict:
    """Measure every row (warm-up + timed steps each) and return the bench record (what bench.json holds)."""
    began = time.perf_counter()
    total = warmup + steps
    # the cpu profile, shortened: no checkpoints (their saving is no training), its LR warm-up while it fits
    lab = Lab("cpu", seeds=1, max_steps=total, checkpoint_steps=0,
              warmup_steps=min(PROFILES["cpu"].warmup_steps, total - 1))
    print(f"Measuring the matmul peak on {machine()} ...", flush=True)
    gemms = measure_peaks(load_config(lab.profile.model))
    peaks = {name: max(by_shape.values()) for name, by_shape in gemms.items()}
    flops, work = work_per_token(lab)
    rows, checks = measure_rows(lab, warmup, methods, flops, peaks)
    found = {method: gains(rows, LORA_CHAIN if method == "lora-r8" else FULL_CHAIN, method)
             for method in methods if any(r["method"] == method for r in rows)}
    versions = package_versions()
    return {"machine": machine(), "torch": torch.__version__,
            "packages": {k: versions.get(k) for k in ("transformers", "trl", "peft")},
            "steps": {"warmup": warmup, "timed": steps}, "peaks_gflops": peaks, "gemm_gflops": gemms,
            "flops_per_token": flops, "rows": rows, "gains": found,
            "notes": notes_for(lab, steps, warmup, flops, work, peaks, checks, found, time.perf_counter() - began)}


def table(record: dict) -> str:
    import pandas as pd
    frame = pd.DataFrame(record["rows"], columns=list(COLUMNS)).set_index("pipeline")
    return frame.to_string()


def headline(record: dict) -> str:
    lines = []
    for method, found in record["gains"].items():
        levers = ", ".join(f"{lever} x{value:.2f}" for lever, value in found.items()
                           if lever != "total (lab / naive)")
        lines.append(f"{method}: the lab trains {found['total (lab / naive)']:.1f}x the naive baseline's real "
                     f"tokens/s ({levers})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.bench", description=__doc__.split("\n\n")[0])
    # 1 + 3 steps per row keep the whole bench near 6 minutes on 2 quiet cores (the two naive rows take half)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per row (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up steps per row, left out (default 1)")
    parser.add_argument("--methods", default="lora-r8,full", help="comma-separated, from: lora-r8, full")
    parser.add_argument("--out", type=Path, default=None, help=f"default: the results folder's {BENCH_FILE}")
    args = parser.parse_args(argv)
    import datasets
    import transformers
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1 (the first step pays for lazy initialisation)")
    if not set(args.methods.split(",")) <= {"lora-r8", "full"}:
        parser.error(f"--methods {args.methods!r}: choose from lora-r8, full (comma-separated)")
    record = bench(args.steps, args.warmup, tuple(args.methods.split(",")))
    print(f"\n{record['machine']} · torch {record['torch']} · peaks (GFLOP/s) {record['peaks_gflops']}\n")
    print(table(record))
    print("\n" + headline(record))
    print("\n" + "\n".join(f"- {note}" for note in record["notes"]))
    path = write_json_atomic(record, args.out or results_dir() / BENCH_FILE)
    print(f"\n-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
