"""Does training speed drift with a kernel's history? (python -m helpers.tools.drift). Not part of `make lab`.

Trains the same spec and seed `--repeats` times in one process through lab.run's own path (baseline, training, the
largest-batch memory step, evaluation, saving: everything a notebook kernel does between runs), into a throwaway
results folder, and prints per repeat: tokens/s (mean over the timed steps, the median and the upper-quartile step), CPU seconds in user
and kernel mode, and minor page faults. Identical work, so any trend across repeats is the process's history (the
allocator, caches, leaked objects), and the step-to-step spread is the machine's. The last lines give each rate's
trend: last / first, the slope per repeat as % of the mean, and the spread max / min - 1 against the lab's 10%.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time

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
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    lab = Lab(args.profile, results=tempfile.mkdtemp(prefix="drift-"), seeds=1)
    spec = SPECS[args.run]()
    print(lab.describe(), f"\n{args.run}, seed {lab.seeds[0]}, {args.repeats} times in this process\n", flush=True)
    rows = []
    for i in range(args.repeats):
        cpu, faults, wall = os.times(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        record = lab.run_seed(spec, lab.seeds[0], force=True)
        after = os.times()
        t = record["training"]
        rows.append({"mean": t["tokens_per_second"], "median": t["tokens_per_second_median"],
                     "upper quartile": t["tokens_per_second_upper_quartile"]})
        print(f"repeat {i + 1}: {t['tokens_per_second']:.1f} tokens/s (median step {t['tokens_per_second_median']:.1f}, "
              f"upper-quartile step {t['tokens_per_second_upper_quartile']:.1f}); "
              f"whole run {time.perf_counter() - wall:.0f} s, CPU user {after.user - cpu.user:.0f} s, "
              f"kernel {after.system - cpu.system:.0f} s, minor page faults "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults:,}", flush=True)
    for key in ("mean", "median", "upper quartile"):
        found = trend([r[key] for r in rows])
        verdict = "within" if found["spread"] <= BOUND else "OUTSIDE"
        print(f"{key:>14}: last / first {found['last / first']:.3f}, slope {found['slope % per repeat']:+.1f}% per repeat, "
              f"spread {100 * found['spread']:.1f}% ({verdict} the lab's {100 * BOUND:.0f}%)")


if __name__ == "__main__":
    main()
