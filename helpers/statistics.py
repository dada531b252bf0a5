"""Uncertainty for the comparisons in notebook 05: intervals over seeds, bootstraps over held-out examples, and
reading notes that only claim "A beats B" when the interval of the difference excludes zero.

Everything here is plain Python + numpy. scipy is deliberately not a dependency (it is large, and Colab students
would install it for one function), so the Student-t quantile is computed from the regularized incomplete beta
function below; it is exact to ~1e-10, far beyond what a 95% interval needs.

Per-example data are the `[summed NLL, predicted tokens]` pairs that `helpers.evaluation.perplexity` stores; a
run's perplexity is exp(total NLL / total tokens), so a bootstrap resamples examples (the unit that was drawn from
the population), never tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Method = Literal["t", "bootstrap", "single"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval.

    n counts what the interval was computed over: seeds for "t", held-out examples for "bootstrap", 1 for "single"
    (one value, so no uncertainty estimate exists and low == high == mean).
    """

    mean: float
    low: float
    high: float
    n: int
    method: Method
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.method not in ("t", "bootstrap", "single"):
            raise ValueError(f"unknown interval method {self.method!r}; expected 't', 'bootstrap' or 'single'")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.low > self.high:
            raise ValueError(f"interval low {self.low} is above high {self.high}")

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def excludes(self, value: float = 0.0) -> bool:
        """True when `value` lies outside [low, high].

        A "single" interval is a point with no uncertainty, so it never counts as excluding anything: otherwise one
        seed's difference of 0.01 would read as a significant win.
        """
        if self.method == "single":
            return False
        return value < self.low or value > self.high

    def overlaps(self, other: "Interval") -> bool:
        """True when the two intervals share a value: their difference is not established by them alone."""
        return self.low <= other.high and other.low <= self.high

    def text(self, decimals: int = 2) -> str:
        """'15.31 ± 0.42'; '15.31 [14.90, 15.80]' for a bootstrap interval that is visibly asymmetric; '15.31 (n=1)'
        for a single value (printing '± 0.00' would claim a precision nobody measured)."""
        mean = _fmt(self.mean, decimals)
        if self.method == "single":
            return f"{mean} (n=1)"
        below, above = _fmt(self.mean - self.low, decimals), _fmt(self.high - self.mean, decimals)
        # Percentile bootstraps need not be centred on the estimate; show both ends when rounding can tell.
        if self.method == "bootstrap" and below != above:
            return f"{mean} [{_fmt(self.low, decimals)}, {_fmt(self.high, decimals)}]"
        return f"{mean} ± {_fmt(self.half_width, decimals)}"

    def __str__(self) -> str:
        return self.text()


def _fmt(x: float, decimals: int) -> str:
    """Fixed decimals without the '-0.00' that rounding a tiny negative number would print."""
    s = f"{x:.{decimals}f}"
    return s[1:] if s.startswith("-") and float(s) == 0.0 else s


def percent_text(x: float, signed: bool = False) -> str:
    """A relative size in percent, one decimal below 10% so a 0.6% difference does not read as 1%."""
    places = 0 if abs(x) >= 10 else 1
    text = _fmt(x, places)
    return f"{'+' if signed and not text.startswith('-') else ''}{text}%"


SMALL_PERCENT = 1.0  # a difference beyond noise but under this share of the value is called small, in words


# --- Student t -------------------------------------------------------------------------------------------------------

def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, as in Numerical Recipes `betacf`)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    # Convergence takes O(sqrt(max(a, b))) terms; 100k covers df in the millions, and typical df stop in < 20.
    for m in range(1, 100_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge for a={a}, b={b}, x={x}")


def _regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # The fraction converges fast only on this side of the mean; use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a).
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with df degrees of freedom: P(|T| > |t|) = I_{df/(df+t²)}(df/2, 1/2)."""
    tail = 0.5 * _regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: int) -> float:
    """The t with P(T <= t) = p, by bisection on `t_cdf` (monotone, so bisection cannot fail)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:  # the distribution is symmetric about 0
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:  # bracket: df=1 at p=0.9995 needs ~636, so doubling reaches it in 10 steps
        low, high = high, high * 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * high:
            break
    return (low + high) / 2.0


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """mean ± t·s/√n over independent values (one per seed). With one value there is no spread to measure, so the
    result is method "single" with low = high = mean; callers then fall back to the bootstrap."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"t_interval needs a non-empty list of numbers, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"t_interval got non-finite values: {x.tolist()}")
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, mean, mean, 1, "single", confidence)
    half = t_quantile(0.5 + confidence / 2.0, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, int(x.size), "t", confidence)


# --- Bootstrap over held-out examples --------------------------------------------------------------------------------

def _pairs(per_example: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """[[nll, tokens], ...] -> (nll, tokens) arrays, checked."""
    arr = np.asarray(per_example, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
        raise ValueError(f"per-example data must be a non-empty list of [summed NLL, tokens] pairs, got shape "
                         f"{arr.shape}")
    nll, tokens = arr[:, 0], arr[:, 1]
    if np.any(tokens < 0) or tokens.sum() <= 0:
        raise ValueError("per-example token counts must be >= 0 with a positive total")
    return nll, tokens


def perplexity_of(per_example: Sequence[Sequence[float]]) -> float:
    """exp(total NLL / total tokens): token-weighted, exactly like the recorded perplexity (not a mean of
    per-example perplexities, which would weight a 5-token answer like a 500-token one)."""
    nll, tokens = _pairs(per_example)
    return math.exp(nll.sum() / tokens.sum())


def _resampled_perplexities(nll: np.ndarray, tokens: np.ndarray, idx: np.ndarray) -> np.ndarray:
    total_tokens = tokens[idx].sum(axis=1)
    if np.any(total_tokens == 0):  # only possible when almost every example has zero predicted tokens
        raise ValueError("a bootstrap resample drew only zero-token examples; too few examples have tokens")
    return np.exp(nll[idx].sum(axis=1) / total_tokens)


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    # One (resamples, n) draw instead of a Python loop: 2000 × 2000 indices is 32 MB and takes milliseconds.
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentile_interval(point: float, stats: np.ndarray, n: int, confidence: float) -> Interval:
    alpha = 1.0 - confidence
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Interval(point, float(low), float(high), n, "bootstrap", confidence)


def bootstrap_perplexity(per_example: Sequence[Sequence[float]], resamples: int = 2000, seed: int = 0,
                         confidence: float = 0.95) -> Interval:
    """Percentile interval of the perplexity over examples resampled with replacement; the mean is the perplexity
    of the data as given. Deterministic for a given seed."""
    nll, tokens = _pairs(per_example)
    idx = _indices(nll.size, resamples, seed)
    return _percentile_interval(perplexity_of(per_example), _resampled_perplexities(nll, tokens, idx), nll.size,
                                confidence)


def paired_bootstrap_difference(per_example_a: Sequence[Sequence[float]], per_example_b: Sequence[Sequence[float]],
                                resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> Interval:
    """Interval of perplexity(a) − perplexity(b), resampling the SAME example indices for both.

    Pairing cancels the example-to-example difficulty both runs share (a hard example is hard for both), which is
    most of the variance; two independent bootstraps would give a much wider, misleading interval.
    """
    nll_a, tok_a = _pairs(per_example_a)
    nll_b, tok_b = _pairs(per_example_b)
    if nll_a.size != nll_b.size:
        raise ValueError(f"paired bootstrap needs the same held-out examples for both runs: got {nll_a.size} and "
                         f"{nll_b.size} examples")
    idx = _indices(nll_a.size, resamples, seed)
    diffs = _resampled_perplexities(nll_a, tok_a, idx) - _resampled_perplexities(nll_b, tok_b, idx)
    point = perplexity_of(per_example_a) - perplexity_of(per_example_b)
    return _percentile_interval(point, diffs, nll_a.size, confidence)


# --- Paired over seeds -----------------------------------------------------------------------------------------------

def paired_t(a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95) -> Interval:
    """t interval of mean(a[s] − b[s]) over the seeds both runs have. Pairing by seed removes what a seed does to
    both runs alike (data order, initialisation of the adapter), so fewer seeds are needed than for unpaired means."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError(f"paired_t needs at least 1 seed shared by both runs: a has seeds {sorted(a)}, "
                         f"b has seeds {sorted(b)}")
    return t_interval([a[s] - b[s] for s in shared], confidence)


# --- Pareto dominance -------------------------------------------------------------------------------------------------

def dominated_by(points: Mapping[str, Sequence[float]], lower_is_better: Sequence[bool]) -> dict[str, list[str]]:
    """{name: the names that dominate it} for every dominated point, names in the order given. B dominates A when B is
    at least as good as A on every objective and better on at least one (compared on the values given, e.g. means):
    two equal points do not dominate each other. A name missing from the result is on the Pareto frontier."""
    for name, values in points.items():
        if len(values) != len(lower_is_better):
            raise ValueError(f"{name} has {len(values)} values for {len(lower_is_better)} objectives")

    def at_least_as_good(b: Sequence[float], a: Sequence[float]) -> bool:
        return all(y <= x if low else y >= x for y, x, low in zip(b, a, lower_is_better))

    found: dict[str, list[str]] = {}
    for name, a in points.items():
        by = [other for other, b in points.items()
              if other != name and at_least_as_good(b, a) and any(y != x for y, x in zip(b, a))]
        if by:
            found[name] = by
    return found


# --- Summaries and reading notes -------------------------------------------------------------------------------------

def summarize(values_by_seed: Mapping[int, float], per_example_by_seed: Mapping[int, Sequence] | None = None,
              resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> Interval:
    """One run's interval: t over seeds when there are ≥ 2; with one seed, the bootstrap over that seed's
    per-example pairs when given (so the value is a perplexity); otherwise "single"."""
    if not values_by_seed:
        raise ValueError("summarize needs at least one seed's value")
    seeds = sorted(values_by_seed)
    if len(seeds) >= 2:
        return t_interval([values_by_seed[s] for s in seeds], confidence)
    only = seeds[0]
    if per_example_by_seed is not None and only in per_example_by_seed:
        return bootstrap_perplexity(per_example_by_seed[only], resamples, seed, confidence)
    return t_interval([values_by_seed[only]], confidence)


def _how(interval: Interval) -> str:
    if interval.method == "t":
        return f"paired over {interval.n} seeds"
    if interval.method == "bootstrap":
        return f"bootstrap over {interval.n} held-out examples, one seed"
    return "one seed, no interval"


def compare_runs(name_a: str, name_b: str, interval: Interval, what: str, lower_is_better: bool,
                 decimals: int = 2, unit: str = "", means: Mapping[str, float] | None = None) -> str:
    """One sentence reading `interval` (of a − b). Names a winner only when the interval excludes 0.

    The winner's margin and CI are reported as positive amounts (|a − b|) so the sentence reads the same either way
    round; "within noise" keeps the signed difference a − b. `unit` is appended to the margin as given (" ppl", "%").
    `means` ({name: mean}) adds the margin as a percentage of the loser's mean, and says "small" under 1%: a
    difference can be real and still too small to matter.
    """
    level = f"{interval.confidence * 100:g}% CI"
    how = _how(interval)
    if interval.method == "single":
        # One number has no noise estimate: report it, but claim nothing.
        return (f"{name_a} vs {name_b} on {what}: difference {_fmt(interval.mean, decimals)}{unit} from one seed, "
                "which gives no interval, so no claim either way.")
    if not interval.excludes(0.0):
        return (f"{name_a} and {name_b} are within noise on {what}: difference {_fmt(interval.mean, decimals)}{unit} "
                f"({level} {_fmt(interval.low, decimals)} to {_fmt(interval.high, decimals)} includes 0, {how}).")
    # Direction from the interval, not the point: a percentile bootstrap can (rarely) leave its point outside.
    a_wins = (interval.high < 0) == lower_is_better
    winner, loser = (name_a, name_b) if a_wins else (name_b, name_a)
    # The interval lies entirely on one side of 0, so |low|..|high| (sorted) is the interval of the margin.
    lo, hi = sorted((abs(interval.low), abs(interval.high)))
    size = ""
    if means and means.get(loser):
        pct = 100 * abs(interval.mean) / abs(means[loser])
        size = f" = {percent_text(pct)} of {loser}'s {_fmt(means[loser], decimals)}"
        if pct < SMALL_PERCENT:
            size += f", a small difference (under {SMALL_PERCENT:g}%)"
    return (f"{winner} beats {loser} on {what} by {_fmt(abs(interval.mean), decimals)}{unit}{size} "
            f"({level} {_fmt(lo, decimals)} to {_fmt(hi, decimals)}, {how}).")
