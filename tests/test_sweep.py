"""helpers.tools.sweep on the smoke profile: every grid point trains and is scored on the validation split, never on the
held-out set, and the best rate per run and the LoRA / full ratio come from those scores."""

import json

import pytest

from helpers.tools import sweep
from helpers.specs import full, lora


def test_sweep_scores_every_point_on_the_validation_split(tmp_path, monkeypatch):
    seen = []
    real = sweep.perplexity
    monkeypatch.setattr(sweep, "perplexity", lambda model, dataset, *a, **k: seen.append(dataset) or real(model,
                                                                                                          dataset, *a, **k))
    result = sweep.sweep("smoke", 1, specs=(full(), lora(8)), grids={"full": (1e-5, 1e-4), "lora": (1e-4, 1e-3)},
                         out=tmp_path)
    assert len(result["points"]) == 4 and len(seen) == 4
    lab_eval = {tuple(x) for x in seen[0]["input_ids"]}
    assert result["validation_examples"] == len(seen[0]) > 0
    assert all(p["validation_perplexity"] > 1 for p in result["points"])
    for run_id, best in result["best"].items():
        assert best["validation_perplexity"] == min(best["by_rate"].values())
    assert result["lora_to_full_ratio"] == pytest.approx(result["best"]["lora-r8"]["learning_rate"]
                                                         / result["best"]["full"]["learning_rate"])
    assert json.loads((tmp_path / "sweep.json").read_text())["best"].keys() == result["best"].keys()
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    from helpers import Lab
    held_out = {tuple(x) for x in Lab("smoke").data.eval["input_ids"]}
    assert not lab_eval & held_out, "the sweep never looks at the reported held-out set"


def test_best_rates_average_over_seeds():
    points = [{"run_id": "full", "learning_rate": lr, "validation_perplexity": v}
              for lr, v in ((1e-5, 9.0), (1e-5, 7.0), (5e-5, 7.5), (5e-5, 7.9))]
    best = sweep.best_rates(points)["full"]
    assert best["learning_rate"] == 5e-5 and best["validation_perplexity"] == pytest.approx(7.7)


def test_the_cpu_profile_uses_the_committed_sweeps_best_rates():
    """The rates in helpers/profiles.py are the evidence's, not a guess: full's best, and LoRA's (one for every rank)."""
    from helpers.profiles import PROFILES
    from helpers.results import REFERENCE_DIR
    evidence = json.loads((REFERENCE_DIR / "sweep.json").read_text())
    assert evidence["profile"] == "cpu"
    best = {run: b["learning_rate"] for run, b in evidence["best"].items()}
    assert PROFILES["cpu"].learning_rates["full"] == best.pop("full")
    assert set(best.values()) == {PROFILES["cpu"].learning_rates["lora"]}, "with alpha fixed, one rate for every rank"


def test_the_cpu_profile_uses_the_variants_sweeps_best_rates():
    """Each LoRA variant's rate is its best on the committed variants sweep, an interior point of its grid; LoRA r16,
    swept beside them on the same data, has the rate the profile gives LoRA."""
    from helpers.profiles import PROFILES
    from helpers.results import REFERENCE_DIR
    evidence = json.loads((REFERENCE_DIR / "sweep-variants.json").read_text())
    assert evidence["profile"] == "cpu"
    rates = PROFILES["cpu"].learning_rates
    for run, best in evidence["best"].items():
        key = run.split("-")[0]
        assert rates[key] == best["learning_rate"], run
        grid = sorted(float(r) for r in best["by_rate"])
        assert grid[0] < best["learning_rate"] < grid[-1], f"{run}: the best rate is at its grid's edge"
    assert {"dora-r16", "rslora-r16", "pissa-r16", "loraplus-r16", "lora-r16"} <= set(evidence["best"])
