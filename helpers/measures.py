"""What is measured in results records, and its uncertainty: one Measure per quantity, a run's mean with a 95%
interval, and paired differences (between two runs, or after − before within one run).

A run (full, lora-r8, ...) has one record per training seed. Intervals are t over seeds, or with one seed a bootstrap
over held-out examples where the measure has per-example data. A flagged record (worse than before training, or a token
budget changed by skipped updates: FLAGS) is listed by the notes, never averaged in (`usable`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .formatting import MIB
from .results import RUN_ORDER, record_sort_key, trained_tokens  # trained_tokens: results words skips with it
from .statistics import Interval, dominated_by, paired_bootstrap_difference, paired_t, summarize

REPEAT_N = 3  # word n-grams for the repetition rate: 3 catches a repeated phrase, not a repeated "of the"


@dataclass(frozen=True)
class Measure:
    """One measured quantity of a record, with the per-example data a one-seed bootstrap needs (when it has any)."""

    title: str
    value: Callable[[dict], float | None]
    lower_is_better: bool
    decimals: int | None = None  # None: from the size of the value
    per_example: Callable[[dict], list | None] | None = None


def repeated_ngram_rate(text: str, n: int = REPEAT_N) -> float | None:
    """Share of the word n-grams of `text` that repeat an n-gram seen earlier in the same text (0 = no phrase comes
    back, 0.9 = almost everything is a loop). Words are lower-cased runs of letters and digits, so punctuation and line
    breaks do not hide a repeat. None when the text has fewer than n words (no n-gram to judge)."""
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return None
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams)


def answer_repetition(record: dict, which: str) -> float | None:
    """Mean repeated-3-gram rate, in percent, of a record's greedy answers `which` ("before" or "after") training;
    answers too short to judge are left out."""
    rates = [rate for g in record.get("generations") or [] if (rate := repeated_ngram_rate(g[which])) is not None]
    return 100 * sum(rates) / len(rates) if rates else None


def _step_peak_mib(r: dict) -> float | None:
    memory = r.get("memory") or {}
    peak = memory.get("step_peak_bytes", memory.get("device_peak_bytes"))
    return None if peak is None else peak / MIB


def _forgetting(key: str) -> Callable[[dict], object]:
    return lambda r: (r.get("forgetting") or {}).get(key)


def _speed(r: dict) -> float:
    """The upper quartile of the step rates (load on the machine only slows steps: README, "Throughput"); in records
    made before it, the median step's rate, or before that the mean rate."""
    t = r["training"]
    return t.get("tokens_per_second_upper_quartile", t.get("tokens_per_second_median", t["tokens_per_second"]))


def _mean_training_loss(r: dict) -> float | None:
    """The mean of the logged training losses: the area under the loss curve, lower when the loss falls sooner. Paired
    across methods by seed, which fixes the batches each step trains on (PiSSA's and LoRA+'s claim is faster
    convergence, notebook 04)."""
    losses = [entry["loss"] for entry in r["training"].get("log") or []]
    return sum(losses) / len(losses) if losses else None


MEASURES: dict[str, Measure] = {
    "perplexity before": Measure("held-out perplexity before training", lambda r: r["eval"]["perplexity_before"], True,
                                 2, lambda r: r["eval"].get("per_example_before")),
    "perplexity after": Measure("held-out perplexity after training", lambda r: r["eval"]["perplexity_after"], True, 2,
                                lambda r: r["eval"].get("per_example_after")),
    "general-text before": Measure("general-text perplexity before training", _forgetting("perplexity_before"), True,
                                   2, _forgetting("per_example_before")),
    "general-text after": Measure("general-text perplexity after training", _forgetting("perplexity_after"), True, 2,
                                  _forgetting("per_example_after")),
    "repeated 3-grams % before": Measure("repeated word 3-grams in the answers before training (%)",
                                         lambda r: answer_repetition(r, "before"), True, 0),
    "repeated 3-grams % after": Measure("repeated word 3-grams in the answers after training (%)",
                                        lambda r: answer_repetition(r, "after"), True, 0),
    "tokens/s": Measure("training speed (real tokens/s)", _speed, False, 0),
    "peak memory MiB": Measure("peak memory of a training step (MiB)", _step_peak_mib, True, 0),
    "mean training loss": Measure("mean training loss over the logged steps", _mean_training_loss, True, 3),
}


# (x, y) of each Pareto panel of notebook 05: what a run bought (y) against what it cost (x). No composite score.
PARETO_PAIRS = (("peak memory MiB", "perplexity after"), ("tokens/s", "perplexity after"))


@dataclass(frozen=True)
class Domination:
    """`run` is dominated by `by` on the means. On the measures in `unresolved` the 95% interval of their paired
    difference (the same test as every "beats" of the reading notes) includes zero, and on those in `no_interval` it
    has none (one seed, no per-example data): there the dominance is within noise, not established."""

    run: str
    by: str
    unresolved: tuple[str, ...]
    no_interval: tuple[str, ...]

    @property
    def within_noise(self) -> bool:
        return bool(self.unresolved or self.no_interval)


@dataclass(frozen=True)
class Frontier:
    keys: tuple[str, ...]  # MEASURES keys, one per objective
    intervals: dict[str, tuple[Interval, ...]]  # per run (RUN_ORDER), one per key
    front: list[str]  # the runs no other run dominates
    dominated: list[Domination]


def pareto(records: list[dict], keys: tuple[str, ...]) -> Frontier:
    """The Pareto frontier of the runs on the MEASURES `keys`, from their means over usable seeds, and for every
    dominated run which runs dominate it and whether their intervals tell them apart."""
    runs = {run: tuple(interval(recs, MEASURES[k]) for k in keys) for run, recs in by_run(usable(records)).items()}
    runs = {run: found for run, found in runs.items() if None not in found}
    beaten = dominated_by({run: [i.mean for i in found] for run, found in runs.items()},
                          [MEASURES[k].lower_is_better for k in keys])
    dominated = []
    for run, winners in beaten.items():
        for by in winners:
            # Paired (same seeds, same held-out examples), as every other verdict: two runs' own intervals can overlap
            # while their paired difference clearly excludes zero.
            diffs = {k: difference(records, by, run, MEASURES[k]) for k in keys}
            dominated.append(Domination(
                run, by,
                unresolved=tuple(k for k, d in diffs.items() if d is not None and d.method != "single"
                                 and not d.excludes(0.0)),
                no_interval=tuple(k for k, d in diffs.items() if d is None or d.method == "single")))
    return Frontier(tuple(keys), runs, [run for run in runs if run not in beaten], dominated)


# A record's status flags (older records lack the later ones: not flagged) and how a table names each.
FLAGS = {"worse_than_before": "worse than before", "budget_changed": "budget changed by skipped updates"}


def flags(record: dict) -> list[str]:
    """The FLAGS keys set in a record's status."""
    status = record.get("status", {})
    return [key for key in FLAGS if status.get(key)]


def usable(records: Iterable[dict]) -> list[dict]:
    """The records that enter means and comparisons: a run that ended worse than it started, or trained another token
    budget than the others (skipped updates), is not a result."""
    return [r for r in records if not flags(r)]


def flagged(records: Iterable[dict]) -> list[dict]:
    return [r for r in records if flags(r)]


def by_run(records: Iterable[dict]) -> dict[str, list[dict]]:
    """{run_id: its records by seed}, runs in RUN_ORDER."""
    grouped: dict[str, list[dict]] = {}
    for r in sorted(records, key=record_sort_key):
        grouped.setdefault(r["run_id"], []).append(r)
    return grouped


def missing_runs(records: list[dict]) -> list[str]:
    present = {r["run_id"] for r in records}
    return [run for run in RUN_ORDER if run not in present]


def mean(values: Iterable[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return sum(found) / len(found) if found else None


def mean_of(records: list[dict], run_id: str, value: Callable[[dict], float | None]) -> float | None:
    """Mean of `value` over a run's usable records (None when it has none)."""
    return mean(value(r) for r in by_run(usable(records)).get(run_id, []))


def interval(records: list[dict], measure: Measure) -> Interval | None:
    """Mean and 95% interval of one run's records: t over seeds, else a bootstrap over held-out examples."""
    values = {r["seed"]: measure.value(r) for r in records if measure.value(r) is not None}
    if not values:
        return None
    per_example = None
    if measure.per_example is not None:
        per_example = {r["seed"]: measure.per_example(r) for r in records if measure.per_example(r)}
    return summarize(values, per_example or None)


def _paired(a: dict[int, dict], b: dict[int, dict], measure_a: Measure, measure_b: Measure) -> Interval | None:
    """measure_a(a) − measure_b(b) over the seeds both have (t), or with one shared seed a paired bootstrap over the
    same examples when both measures keep per-example data."""
    a = {s: r for s, r in a.items() if measure_a.value(r) is not None}
    b = {s: r for s, r in b.items() if measure_b.value(r) is not None}
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    if len(shared) == 1 and measure_a.per_example is not None and measure_b.per_example is not None:
        seed = shared[0]
        pa, pb = measure_a.per_example(a[seed]), measure_b.per_example(b[seed])
        if pa and pb and len(pa) == len(pb):
            return paired_bootstrap_difference(pa, pb)
    return paired_t({s: measure_a.value(a[s]) for s in shared}, {s: measure_b.value(b[s]) for s in shared})


def difference(records: list[dict], run_a: str, run_b: str, measure: Measure) -> Interval | None:
    """run_a − run_b, paired: over the seeds both have (t), or with one shared seed a bootstrap over the same
    held-out examples. None when the two runs share no seed."""
    runs = by_run(usable(records))
    return _paired({r["seed"]: r for r in runs.get(run_a, [])}, {r["seed"]: r for r in runs.get(run_b, [])},
                   measure, measure)


def change(run_records: list[dict], before: str, after: str) -> Interval | None:
    """after − before within one run, paired by seed (the same base, data and prompts on both sides)."""
    by_seed = {r["seed"]: r for r in usable(run_records)}
    return _paired(by_seed, by_seed, MEASURES[after], MEASURES[before])


__all__ = ["FLAGS", "MEASURES", "PARETO_PAIRS", "Domination", "Frontier", "Measure", "REPEAT_N", "answer_repetition",
           "by_run", "change", "difference", "flagged", "flags", "interval", "mean", "mean_of", "missing_runs",
           "pareto", "repeated_ngram_rate", "trained_tokens", "usable"]
