"""`make bench` (python -m helpers.tools.bench): how fast the lab's training path is against the naive recipe of the
seed project it was built from, on the same model and the same examples in one process, and where the difference
comes from, one lever at a time.

This module runs the rows and reports them (the table, each lever's factor, the notes bench.json keeps). The rows
themselves are in pipelines.py, the step timer that measures them in timing.py, the FLOPs and the matmul peak behind
the MFU column in mfu.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..environment import package_versions, results_dir
from ..memory import release
from ..models import load_config
from ..profiles import PROFILES
from ..results import BENCH_FILE, write_json_atomic
from ..runs import Lab
from .mfu import measure_peaks, mfu_percent, work_per_token
from .pipelines import FULL_CHAIN, FUSED, LORA_CHAIN, Setup, headless, plan
from .timing import PARTS, StepTime, step_split, tokens_per_second

COLUMNS = ("pipeline", "method", "precision", "padding %", "tokens/s", "× naive", "MFU %", "peak GFLOP/s", *PARTS)


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
    parser = argparse.ArgumentParser(prog="python -m helpers.tools.bench", description=__doc__.split("\n\n")[0])
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
