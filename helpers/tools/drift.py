"""Does training speed drift with a process's history? (python -m helpers.tools.drift). Not part of `make lab`.

Trains one spec for the seeds of `--order`, one after another, through lab.run_seed's own path (baseline, training,
the largest-batch memory step, evaluation, saving: everything a notebook kernel does between runs), into a throwaway
results folder, and prints per run: tokens/s (mean over the timed steps, the median and the upper-quartile step), CPU
seconds in user and kernel mode, and minor page faults. The default order trains seed 42 first and last: the same
work, so a gap between the two is the process's history (in one process: a heap fragmented by the runs between;
with `--own-process`, as make lab trains, every run starts in a fresh process and the gap is the machine's own
variation). The last lines give each rate's trend: last / first, the slope per run as % of the mean, and the spread
max / min - 1 against the lab's 10%.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time

from ..environment import ISOLATE_ENV
from ..runs import Lab
from ..specs import full, lora, qlora

SPECS = {"full": full, "lora-r8": lambda: lora(8), "lora-r16": lambda: lora(16), "qlora": qlora}


BOUND = 0.10  # the lab's target: repeats of one spec within 10% of each other


def trend(rates: list[float]) -> dict[str, float]:
    """last / first, the least-squares slope per repeat as a percentage of the mean, and the spread max / min - 1."""
    slope = statistics.linear_regression(range(len(rates)), rates).slope if len(rates) > 1 else 0.0
    return {"last / first": rates[-1] / rates[0], "slope % per repeat": 100 * slope / statistics.fmean(rates),
            "spread": max(rates) / min(rates) - 1}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=os.environ.get("LAB_PROFILE", "cpu"))
    parser.add_argument("--run", choices=sorted(SPECS), default="lora-r8")
    parser.add_argument("--order", default="42,1,2,42", help="training seeds in run order (default: 42,1,2,42)")
    parser.add_argument("--own-process", action="store_true",
                        help="train each run in a fresh process of its own, as make lab does ($LAB_ISOLATE_RUNS=1)")
    args = parser.parse_args(argv)
    order = [int(seed) for seed in args.order.split(",")]
    os.environ[ISOLATE_ENV] = "1" if args.own_process else "0"
    lab = Lab(args.profile, results=tempfile.mkdtemp(prefix="drift-"), seeds=sorted(set(order)))
    spec = SPECS[args.run]()
    where = "each in a fresh process of its own" if args.own_process else "all in this process"
    print(lab.describe(), f"\n{args.run}, seeds {order} in this order, {where}\n", flush=True)
    who = resource.RUSAGE_CHILDREN if args.own_process else resource.RUSAGE_SELF
    rows = []
    for i, seed in enumerate(order):
        cpu, faults, wall = os.times(), resource.getrusage(who).ru_minflt, time.perf_counter()
        record = lab.run_seed(spec, seed, force=True)
        after = os.times()
        user = (after.children_user - cpu.children_user) if args.own_process else after.user - cpu.user
        system = (after.children_system - cpu.children_system) if args.own_process else after.system - cpu.system
        t = record["training"]
        rows.append({"mean": t["tokens_per_second"], "median": t["tokens_per_second_median"],
                     "upper quartile": t["tokens_per_second_upper_quartile"]})
        print(f"run {i + 1}, seed {seed}: {t['tokens_per_second']:.1f} tokens/s (median step "
              f"{t['tokens_per_second_median']:.1f}, upper-quartile step {t['tokens_per_second_upper_quartile']:.1f}); "
              f"whole run {time.perf_counter() - wall:.0f} s, CPU user {user:.0f} s, kernel {system:.0f} s, minor page "
              f"faults {resource.getrusage(who).ru_minflt - faults:,}", flush=True)
    for key in ("mean", "median", "upper quartile"):  # across every run: seeds differ, and so do their steps
        found = trend([r[key] for r in rows])
        print(f"{key:>14}, all runs: last / first {found['last / first']:.3f}, slope {found['slope % per repeat']:+.1f}% "
              f"per run, spread {100 * found['spread']:.1f}%")
    if len(order) > 1 and order[0] == order[-1]:  # the same work first and last: the gap is the process's history
        same = rows[-1]["upper quartile"] / rows[0]["upper quartile"] - 1
        verdict = "within" if abs(same) <= BOUND else "OUTSIDE"
        print(f"seed {order[0]}, the same work first and last: upper-quartile step {100 * same:+.1f}% ({verdict} the "
              f"lab's {100 * BOUND:.0f}%)" + ("; each run's whole time includes starting its process" if args.own_process
                                             else ""), flush=True)


if __name__ == "__main__":
    main()
