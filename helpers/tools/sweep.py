"""Learning rates from a sweep, not a guess: `make sweep` (python -m helpers.tools.sweep). Not part of `make lab`.

For each swept spec (full fine-tuning, and LoRA at r=8 and r=32 with alpha fixed at 16, so the sweep also shows
whether the best rate depends on the rank; with --variants, DoRA, rsLoRA, PiSSA and LoRA+ at r=16, each of which
changes the effective step size) and each rate of a small grid, train the profile's budget on its
training sample and measure perplexity on the validation split carved from the training side (helpers.data: whole
groups, never the held-out set the lab reports). QLoRA trains the same adapters and takes LoRA's rate.

Points of other specs already in the file (same profile and data) are kept. Writes <results>/sweep/sweep.json and
sweep.png (with --variants: sweep-variants.json and .png, LoRA r=16 swept beside its variants on the same data):
validation perplexity against the learning rate, one line per spec,
and prints the best rate per spec and the LoRA / full ratio. The profiles' learning_rates are set from it by hand,
with the sweep's files committed in notebooks/reference_results/ as the evidence.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..environment import results_dir
from ..evaluation import perplexity
from ..results import write_json_atomic
from ..runs import Lab, release
from ..specs import RunSpec, by_rate_key, from_run_id, full, lora, variant_runs
from ..training import build_base, make_trainer, train

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Per RunSpec.rate_key. The variants' grids are narrower (4-5 points, 80-120 s each), centred where each one's
# change to the step predicts LoRA's best (5e-3) moves: rsLoRA scales the update 4x at r=16 (alpha/sqrt(r) against
# alpha/r), PiSSA's A and B start large (W's principal part) so a step moves W by far more than from LoRA's zero B,
# LoRA+ trains B at 16x the rate given (A's). A best rate at a grid's edge is reported as such.
GRIDS = {"full": (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3), "lora": (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2),
         "dora": (1e-3, 2e-3, 5e-3, 1e-2), "rslora": (5e-4, 1e-3, 2e-3, 5e-3),
         "pissa": (1e-4, 2e-4, 5e-4, 1e-3, 2e-3), "loraplus": (2e-4, 5e-4, 1e-3, 2e-3)}
SWEPT = (full(), lora(8), lora(32))


def grid(spec: RunSpec, grids: dict[str, tuple[float, ...]] = GRIDS) -> tuple[float, ...]:
    return by_rate_key(grids, spec.rate_key)


def one_point(lab: Lab, spec: RunSpec, learning_rate: float, seed: int) -> dict:
    """Train `spec` at `learning_rate` on the profile's budget; its validation perplexity (nothing is saved)."""
    spec = dataclasses.replace(spec, learning_rate=learning_rate)
    profile = dataclasses.replace(lab.profile, checkpoint_steps=0)  # a sweep point is cheap to redo
    model = build_base(spec, profile, lab.env)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = make_trainer(model, spec, profile, lab.env, lab.data.train, lab.tokenizer, seed, Path(scratch),
                               f"{spec.run_id} lr={learning_rate:g}")
        outcome = train(trainer)
        found = perplexity(trainer.model, lab.data.validation, profile.eval_batch_tokens, lab.tokenizer.pad_token_id)
    del model, trainer
    release()
    return {"run_id": spec.run_id, "method": spec.method, "rank": spec.lora.r if spec.lora else None,
            "learning_rate": learning_rate, "seed": seed, "validation_perplexity": found["perplexity"],
            "validation_loss": found["loss"], "train_loss_last": outcome.log[-1]["loss"] if outcome.log else None,
            "seconds": outcome.seconds_total}


def best_rates(points: list[dict]) -> dict[str, dict]:
    """Per swept run: the rate with the lowest validation perplexity (mean over seeds), and its neighbours' cost."""
    out = {}
    for run_id in dict.fromkeys(p["run_id"] for p in points):
        by_rate: dict[float, list[float]] = {}
        for p in points:
            if p["run_id"] == run_id:
                by_rate.setdefault(p["learning_rate"], []).append(p["validation_perplexity"])
        means = {rate: sum(v) / len(v) for rate, v in sorted(by_rate.items())}
        best = min(means, key=means.get)
        out[run_id] = {"learning_rate": best, "validation_perplexity": means[best], "by_rate": means}
    return out


def sweep(profile: str = "cpu", seeds: int = 1, specs: tuple[RunSpec, ...] = SWEPT,
          grids: dict[str, tuple[float, ...]] = GRIDS, out: Path | None = None, name: str = "sweep") -> dict:
    lab = Lab(profile, seeds=seeds)
    if lab.data.validation is None:
        raise ValueError(f"profile {profile!r} has validation_examples = 0: nothing to choose a learning rate on. "
                         "Fix: give the profile validation_examples (e.g. 40).")
    out = out or results_dir() / "sweep"
    # Points an earlier (interrupted or narrower) sweep of the same profile and data already measured are kept.
    earlier = {}
    if (out / f"{name}.json").exists():
        previous = json.loads((out / f"{name}.json").read_text())
        if (previous.get("profile"), previous.get("data_fingerprint")) == (profile, lab.data.fingerprint):
            earlier = {(p["run_id"], p["learning_rate"], p["seed"]): p for p in previous["points"]}
    swept = {s.run_id for s in specs}
    points = [p for p in earlier.values() if p["run_id"] not in swept]  # the other specs' points, kept
    start = time.perf_counter()
    total = len(points) + sum(len(grid(s, grids)) for s in specs) * len(lab.seeds)
    for spec in specs:
        for rate in grid(spec, grids):
            for seed in lab.seeds:
                points.append(earlier.get((spec.run_id, rate, seed)) or one_point(lab, spec, rate, seed))
                p = points[-1]
                print(f"[{len(points)}/{total}] {spec.run_id} lr={rate:g} seed {seed}: validation perplexity "
                      f"{p['validation_perplexity']:.3f} ({p['seconds']:.0f} s)", flush=True)
    best = best_rates(points)
    lora_best = [b["learning_rate"] for run, b in best.items() if run.startswith("lora-r")]
    result = {"profile": profile, "model": lab.profile.model, "dataset": lab.profile.dataset,
              "data_fingerprint": lab.data.fingerprint,
              "validation_examples": len(lab.data.validation), "seeds": list(lab.seeds),
              "precision": lab.env.precision.name, "device": lab.env.device_name, "grids": grids, "points": points,
              "best": best, "seconds": time.perf_counter() - start}
    if "full" in best and lora_best:
        result["lora_to_full_ratio"] = sum(lora_best) / len(lora_best) / best["full"]["learning_rate"]
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result, out / f"{name}.json")
    from ..plots import save_figure

    save_figure(figure(result), out / f"{name}.png")
    return result


def figure(result: dict) -> Figure:
    """Validation perplexity against the learning rate (log x), one line per swept run, its best rate circled."""
    from matplotlib.figure import Figure  # lazy: matplotlib only once the points are measured

    from ..plots import run_color

    fig = Figure(figsize=(7.5, 4.4), layout="constrained")
    ax = fig.subplots()
    for run_id, best in result["best"].items():
        rates = sorted(float(r) for r in best["by_rate"])
        values = [best["by_rate"][r] if r in best["by_rate"] else best["by_rate"][str(r)] for r in rates]
        ax.plot(rates, values, marker="o", color=run_color(run_id), label=run_id, linewidth=1.5)
        ax.scatter([best["learning_rate"]], [best["validation_perplexity"]], s=160, facecolor="none",
                   edgecolor=run_color(run_id), linewidths=2, zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("validation perplexity after training")
    ratio = result.get("lora_to_full_ratio")
    ax.set_title("Learning-rate sweep on the validation split" + (f" · best LoRA / full = {ratio:.1f}×" if ratio
                                                                  else ""), fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, frameon=False)
    fig.supxlabel(f"profile {result['profile']} · {result['validation_examples']} validation examples · seeds "
                  f"{result['seeds']} · {result['precision']} · {result['device']}", fontsize=8, color="#444444")
    return fig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per point (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="default: <results>/sweep")
    parser.add_argument("--variants", action="store_true",
                        help="sweep LoRA r=16 and its variants DoRA, rsLoRA, PiSSA and LoRA+ into sweep-variants.json")
    parser.add_argument("--runs", default=None, help="run ids to sweep instead, comma-separated (e.g. lora-r16)")
    args = parser.parse_args()
    chosen = (tuple(from_run_id(r.strip()) for r in args.runs.split(",")) if args.runs
              else (lora(16), *variant_runs()) if args.variants else SWEPT)
    name = "sweep-variants" if args.variants else "sweep"
    result = sweep(args.profile, args.seeds, specs=chosen, out=args.out, name=name)
    print("\nbest learning rate (validation perplexity):")
    for run_id, b in result["best"].items():
        edge = b["learning_rate"] in (min(b["by_rate"], key=float), max(b["by_rate"], key=float))
        print(f"  {run_id:12} {b['learning_rate']:g} ({b['validation_perplexity']:.3f})"
              + ("  at the grid's edge: widen it" if edge else ""))
    if "lora_to_full_ratio" in result:
        print(f"LoRA / full learning-rate ratio: {result['lora_to_full_ratio']:.1f}x (LoRA Without Regret: about 10x)")
    print(f"written: {args.out or results_dir() / 'sweep'} ({name}.json, {name}.png) in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
