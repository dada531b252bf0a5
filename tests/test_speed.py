"""Speed that reflects the method, not the kernel's history: the upper-quartile step's rate (the median and mean kept),
interleaved runs, and the drift benchmark's trend and spread."""

from __future__ import annotations

import pytest

import helpers
from helpers import measures, training
from helpers.specs import SpecError
from helpers.tools.drift import trend
from tests.records import make_record


def _step(step: int, seconds: float, tokens: int) -> training.StepRecord:
    return training.StepRecord(step, seconds, tokens, tokens // 2, seconds * 0.9, 0.0, warmup=False)


def test_a_burst_of_slow_steps_moves_the_mean_rate_not_the_median():
    steady = [_step(i, 1.0, 100) for i in range(1, 10)]
    burst = steady[:6] + [_step(i, 3.0, 100) for i in (7, 8, 9)]  # three steps slowed by other load on the machine
    assert training._median_rate(steady) == pytest.approx(100.0)
    assert training._median_rate(burst) == pytest.approx(100.0)
    assert training._rate(burst)[0] == pytest.approx(900 / 15)  # the mean rate falls by 40%


def test_a_slow_stretch_over_most_steps_moves_the_median_not_the_upper_quartile():
    """Measured on this 2-core machine (README, "Throughput"): a stretch of slowed steps covering more than half a run
    took one seed's median 20% below its others, while the upper quartile stayed within 10%."""
    steps = [_step(i, 1.0, 100) for i in range(1, 9)] + [_step(i, 1.25, 100) for i in range(9, 21)]  # 12 of 20 slowed
    assert training._median_rate(steps) == pytest.approx(80.0)
    assert training._upper_quartile_rate(steps) == pytest.approx(100.0)
    assert training._upper_quartile_rate([_step(1, 2.0, 100)]) == 50.0 and training._upper_quartile_rate([]) == 0.0
    # linear interpolation between the 15th and 16th of 20 sorted rates, as numpy.percentile(rates, 75)
    ramp = [_step(i, 100 / (10 * i), 100) for i in range(1, 21)]  # rates 10, 20, ..., 200
    assert training._upper_quartile_rate(ramp) == pytest.approx(152.5)


def test_the_speed_measure_reads_the_upper_quartile_and_falls_back_for_older_records():
    record = make_record("lora-r8", training={"tokens_per_second": 90.0, "tokens_per_second_median": 100.0,
                                             "tokens_per_second_upper_quartile": 110.0})
    assert measures.MEASURES["tokens/s"].value(record) == 110.0
    older = make_record("lora-r8", training={"tokens_per_second": 90.0, "tokens_per_second_median": 100.0})
    older["training"].pop("tokens_per_second_upper_quartile", None)
    assert measures.MEASURES["tokens/s"].value(older) == 100.0
    oldest = make_record("lora-r8", training={"tokens_per_second": 90.0})
    for key in ("tokens_per_second_median", "tokens_per_second_upper_quartile"):
        oldest["training"].pop(key, None)
    assert measures.MEASURES["tokens/s"].value(oldest) == 90.0


def test_several_specs_run_interleaved_seed_by_seed_and_come_back_spec_by_spec(tmp_path, monkeypatch):
    lab = helpers.Lab("smoke", results=tmp_path, seeds=[42, 1, 2])
    order = []

    def run_seed(spec, seed, force=False):
        order.append((spec.run_id, seed))
        return {"run_id": spec.run_id, "seed": seed}

    monkeypatch.setattr(lab, "run_seed", run_seed)
    records = lab.run([helpers.lora(8), helpers.lora(16)])
    assert order == [("lora-r8", 42), ("lora-r16", 42), ("lora-r8", 1), ("lora-r16", 1), ("lora-r8", 2), ("lora-r16", 2)]
    assert [(r["run_id"], r["seed"]) for r in records] == [
        ("lora-r8", 42), ("lora-r8", 1), ("lora-r8", 2), ("lora-r16", 42), ("lora-r16", 1), ("lora-r16", 2)]
    assert [r["seed"] for r in lab.run(helpers.lora(8))] == [42, 1, 2]  # one spec as before


def test_a_bad_spec_among_several_is_refused_before_any_run(tmp_path, monkeypatch):
    lab = helpers.Lab("smoke", results=tmp_path)
    monkeypatch.setattr(lab, "run_seed", lambda *a, **k: pytest.fail("ran before every spec was checked"))
    gpt2_targets = helpers.specs.lora_config(8)
    gpt2_targets.target_modules = {"c_attn"}  # GPT-2's layer name: no such layer in SmolLM2
    bad = helpers.specs.RunSpec("lora-c_attn", gpt2_targets)
    with pytest.raises(SpecError, match="c_attn"):
        lab.run([helpers.lora(8), bad])


def test_trend_reports_a_steady_fall_and_no_trend_for_noise():
    falling = trend([169.0, 137.0, 99.0])  # QLoRA over three seeds in one kernel, the reference set's drift
    assert falling["last / first"] == pytest.approx(99 / 169)
    assert falling["slope % per repeat"] == pytest.approx(100 * -35 / (405 / 3))
    flat = trend([118.0, 135.0, 118.0])
    assert flat["slope % per repeat"] == pytest.approx(0.0)
    assert falling["spread"] == pytest.approx(169 / 99 - 1) and flat["spread"] == pytest.approx(135 / 118 - 1)
