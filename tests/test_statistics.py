"""helpers.statistics: t quantiles against tables, hand-computed intervals, bootstrap properties, reading notes."""

import math

import numpy as np
import pytest

from helpers.statistics import (Interval, bootstrap_perplexity, compare_runs, paired_bootstrap_difference, paired_t,
                                perplexity_of, summarize, t_interval, t_quantile)


def synthetic_examples(n: int, seed: int, nll_per_token: float = 2.7) -> list[list[float]]:
    """[summed NLL, tokens] pairs like the records hold: varying lengths, per-token loss around nll_per_token."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(20, 200, size=n)
    nll = tokens * rng.normal(nll_per_token, 0.4, size=n)
    return [[float(a), int(t)] for a, t in zip(nll, tokens)]


# --- t quantile and t interval ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423),
                                          (10**6, 1.9600)])
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-3)  # symmetric


def test_t_quantile_rejects_bad_arguments():
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)


def test_t_interval_hand_example():
    iv = t_interval([1.0, 2.0, 3.0])  # s = 1, n = 3, t(0.975, 2) = 4.3027
    assert iv.method == "t" and iv.n == 3 and iv.mean == pytest.approx(2.0)
    assert iv.half_width == pytest.approx(4.3027 / math.sqrt(3), abs=1e-3)
    assert iv.half_width == pytest.approx(2.4841, abs=1e-3)
    assert iv.text(2) == "2.00 ± 2.48"
    assert iv.excludes(0.0) is False and iv.excludes(5.0) is True


def test_t_interval_single_value_has_no_uncertainty():
    iv = t_interval([15.3])
    assert (iv.method, iv.n, iv.mean, iv.low, iv.high) == ("single", 1, 15.3, 15.3, 15.3)
    assert not iv.excludes(0.0)  # one number never supports a claim
    assert iv.text(2) == "15.30 (n=1)"


def test_interval_text_forms():
    assert Interval(15.31, 14.89, 15.73, 3, "t").text(2) == "15.31 ± 0.42"
    assert Interval(15.31, 14.90, 15.80, 172, "bootstrap").text(2) == "15.31 [14.90, 15.80]"
    assert Interval(15.31, 14.89, 15.73, 172, "bootstrap").text(2) == "15.31 ± 0.42"  # symmetric: short form
    assert Interval(-0.001, -0.5, 0.5, 3, "t").text(2) == "0.00 ± 0.50"  # no "-0.00"


# --- bootstrap -------------------------------------------------------------------------------------------------------

def test_perplexity_of_is_token_weighted():
    pairs = [[10.0, 5], [30.0, 15]]
    assert perplexity_of(pairs) == pytest.approx(math.exp(40.0 / 20.0))


def test_bootstrap_is_deterministic_and_contains_the_estimate():
    data = synthetic_examples(172, seed=1)
    first, again = bootstrap_perplexity(data, seed=3), bootstrap_perplexity(data, seed=3)
    assert first == again
    assert first.method == "bootstrap" and first.n == 172
    assert first.mean == pytest.approx(perplexity_of(data))
    assert first.low < first.mean < first.high


def test_bootstrap_narrows_with_more_examples():
    few = bootstrap_perplexity(synthetic_examples(20, seed=2))
    many = bootstrap_perplexity(synthetic_examples(2000, seed=2))
    assert many.half_width < few.half_width / 3  # ~ 1/sqrt(100) = 1/10 in theory; 1/3 leaves room for noise


def test_bootstrap_seed_changes_interval_only_slightly():
    data = synthetic_examples(172, seed=4)
    a, b = bootstrap_perplexity(data, seed=0), bootstrap_perplexity(data, seed=1)
    assert (a.low, a.high) != (b.low, b.high)
    assert abs(a.low - b.low) < 0.1 * a.half_width and abs(a.high - b.high) < 0.1 * a.half_width


def test_paired_bootstrap_of_identical_data_is_exactly_zero():
    data = synthetic_examples(50, seed=5)
    iv = paired_bootstrap_difference(data, [list(p) for p in data])
    assert (iv.mean, iv.low, iv.high) == (0.0, 0.0, 0.0)
    assert not iv.excludes(0.0)


def test_paired_bootstrap_detects_a_shift_and_checks_lengths():
    a = synthetic_examples(100, seed=6)
    b = [[nll + 0.05 * tok, tok] for nll, tok in a]  # b is worse by 0.05 nats per token on every example
    iv = paired_bootstrap_difference(a, b)
    assert iv.high < 0 and iv.mean == pytest.approx(perplexity_of(a) - perplexity_of(b))
    with pytest.raises(ValueError, match="same held-out examples"):
        paired_bootstrap_difference(a, b[:-1])


# --- paired over seeds -----------------------------------------------------------------------------------------------

def test_paired_t_hand_example():
    a = {0: 15.0, 1: 16.0, 2: 17.0, 7: 99.0}  # seed 7 has no partner and is ignored
    b = {0: 14.0, 1: 14.0, 2: 14.0}
    iv = paired_t(a, b)  # differences 1, 2, 3 -> same as the t_interval hand example
    assert iv.n == 3 and iv.mean == pytest.approx(2.0) and iv.half_width == pytest.approx(2.4841, abs=1e-3)
    assert paired_t({0: 15.0}, {0: 14.5}).method == "single"
    with pytest.raises(ValueError, match="shared"):
        paired_t({0: 1.0}, {1: 1.0})


# --- reading notes ---------------------------------------------------------------------------------------------------

def test_compare_runs_within_noise():
    iv = Interval(-0.12, -0.40, 0.16, 3, "t")
    text = compare_runs("lora-r8", "full", iv, "held-out perplexity", lower_is_better=True)
    assert text == ("lora-r8 and full are within noise on held-out perplexity: difference -0.12 "
                    "(95% CI -0.40 to 0.16 includes 0, paired over 3 seeds).")
    assert "beats" not in text


@pytest.mark.parametrize("lower_is_better, winner, loser", [(True, "lora-r8", "full"), (False, "full", "lora-r8")])
def test_compare_runs_names_the_winner(lower_is_better, winner, loser):
    iv = Interval(-0.42, -0.60, -0.24, 3, "t")  # a − b < 0 everywhere
    text = compare_runs("lora-r8", "full", iv, "held-out perplexity", lower_is_better=lower_is_better)
    assert text == (f"{winner} beats {loser} on held-out perplexity by 0.42 "
                    f"(95% CI 0.24 to 0.60, paired over 3 seeds).")
    assert text.count("beats") == 1 and text.startswith(winner)


@pytest.mark.parametrize("lower_is_better, winner", [(True, "qlora"), (False, "lora-r16")])
def test_compare_runs_positive_difference_bootstrap(lower_is_better, winner):
    iv = Interval(0.31, 0.05, 0.60, 172, "bootstrap")  # a − b > 0: b is lower
    text = compare_runs("lora-r16", "qlora", iv, "perplexity", lower_is_better=lower_is_better, unit=" ppl")
    assert text.startswith(f"{winner} beats ")
    assert "by 0.31 ppl (95% CI 0.05 to 0.60, bootstrap over 172 held-out examples, one seed)." in text


def test_compare_runs_single_value_claims_nothing():
    text = compare_runs("full", "qlora", Interval(0.5, 0.5, 0.5, 1, "single"), "perplexity", lower_is_better=True)
    assert "beats" not in text and "no claim" in text


# --- summarize -------------------------------------------------------------------------------------------------------

def test_summarize_picks_the_method():
    data = synthetic_examples(60, seed=8)
    assert summarize({0: 15.1, 1: 15.4, 2: 15.2}).method == "t"
    assert summarize({0: 15.1, 1: 15.4}, {0: data, 1: data}).method == "t"  # seeds win over examples
    boot = summarize({0: perplexity_of(data)}, {0: data})
    assert boot.method == "bootstrap" and boot.n == 60 and boot.mean == pytest.approx(perplexity_of(data))
    assert summarize({0: 15.1}).method == "single"
    assert summarize({0: 15.1}, {1: data}).method == "single"  # per-example data of another seed is not used
    with pytest.raises(ValueError):
        summarize({})
