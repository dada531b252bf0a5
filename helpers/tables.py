"""Tables and sentences built from results records: every number shown in the lab comes from here or plots.

A run (full, lora-r8, ...) has one record per training seed. The frames show each run's mean with a 95% interval
(t over seeds, or a bootstrap over held-out examples when there is one seed); they keep raw values (numbers, or
helpers.statistics.Interval) so code can compute with them, and only *display* through the formatters below.
A record flagged as worse than before training is listed, never averaged in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .results import RUN_ORDER, record_sort_key, run_sort_key
from .statistics import Interval, compare_runs, paired_bootstrap_difference, paired_t, summarize

MIB = 2**20

# Which notebook writes which run: a missing run is reported together with how to produce it.
PRODUCED_BY = {"full": "01_full_finetune", "lora-r8": "02_lora_ranks", "lora-r16": "02_lora_ranks",
               "lora-r32": "02_lora_ranks", "qlora": "03_qlora"}
MEMORY_CATEGORIES = ("weights", "gradients", "optimizer", "activations", "other")


# ---------------------------------------------------------------- number formatting

def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _scaled(value: float, base: int, units: list[str], decimals: list[tuple[int, int, int]], sep: str) -> str:
    """Pick the unit, then re-check after rounding so 999.96k reads 1.00M rather than 1000.0k."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    for i, unit in enumerate(units):
        scaled = value / base**i
        big, mid, small = decimals[i]
        places = big if scaled >= 100 else mid if scaled >= 10 else small
        text = f"{scaled:.{places}f}"
        if float(text) < base or i == len(units) - 1:
            return f"{sign}{text}{sep}{unit}"
    raise AssertionError("unreachable")


def format_count(n: float | None) -> str:
    """Parameter and token counts: 812, 811k, 2.44M, 134.5M, 1.10B ("—" when missing)."""
    if _missing(n):
        return "—"
    if abs(n) < 1000:
        return f"{n:.0f}"
    return _scaled(float(n), 1000, ["", "k", "M", "B", "T"],
                   [(0, 0, 0), (0, 1, 2), (1, 1, 2), (1, 1, 2), (1, 1, 2)], "")


def format_bytes(n: float | None) -> str:
    """Binary units, as the memory and artifact columns (MiB): 812 B, 1.50 KiB, 18.7 MiB, 2.32 GiB."""
    if _missing(n):
        return "—"
    if abs(n) < 1024:
        return f"{n:.0f} B"
    return _scaled(float(n), 1024, ["B", "KiB", "MiB", "GiB", "TiB"],
                   [(0, 0, 0), (1, 1, 2), (1, 1, 2), (1, 1, 2), (1, 1, 2)], " ")


def format_number(x: float | None) -> str:
    """A measured value with about three significant digits: 2,377 · 161 · 39.9 · 7.34 ("—" when missing)."""
    if _missing(x):
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def format_ratio(x: float) -> str:
    return f"{x:,.0f}×" if x >= 100 else f"{x:.1f}×" if x >= 10 else f"{x:.2f}×"


def _decimals_for(x: float) -> int:
    return 0 if abs(x) >= 100 else 1 if abs(x) >= 10 else 2


def format_interval(v: object, decimals: int | None = None) -> str:
    """An Interval as '15.31 ± 0.42' (decimals from the size when not given), a plain number as format_number."""
    if isinstance(v, Interval):
        return v.text(_decimals_for(v.mean) if decimals is None else decimals)
    return format_number(v) if decimals is None or _missing(v) else f"{v:.{decimals}f}"


# ---------------------------------------------------------------- what is measured, and how to read it

@dataclass(frozen=True)
class Measure:
    """One measured quantity of a record, with the per-example data a one-seed bootstrap needs (when it has any)."""

    title: str
    value: Callable[[dict], float | None]
    lower_is_better: bool
    decimals: int | None = None  # None: from the size of the value
    per_example: Callable[[dict], list | None] | None = None


def _step_peak_mib(r: dict) -> float | None:
    memory = r.get("memory") or {}
    peak = memory.get("step_peak_bytes", memory.get("device_peak_bytes"))
    return None if peak is None else peak / MIB


def _forgetting(key: str) -> Callable[[dict], object]:
    return lambda r: (r.get("forgetting") or {}).get(key)


MEASURES: dict[str, Measure] = {
    "perplexity after": Measure("held-out perplexity after training", lambda r: r["eval"]["perplexity_after"], True, 2,
                                lambda r: r["eval"].get("per_example_after")),
    "general-text after": Measure("general-text perplexity after training (forgetting)",
                                  _forgetting("perplexity_after"), True, 2, _forgetting("per_example_after")),
    "tokens/s": Measure("training speed (real tokens/s)", lambda r: r["training"]["tokens_per_second"], False, 0),
    "peak memory MiB": Measure("peak memory of a training step (MiB)", _step_peak_mib, True, 0),
}


def usable(records: Iterable[dict]) -> list[dict]:
    """The records that enter means and comparisons: a run that ended worse than it started is not a result."""
    return [r for r in records if not r.get("status", {}).get("worse_than_before")]


def flagged(records: Iterable[dict]) -> list[dict]:
    return [r for r in records if r.get("status", {}).get("worse_than_before")]


def by_run(records: Iterable[dict]) -> dict[str, list[dict]]:
    """{run_id: its records by seed}, runs in RUN_ORDER."""
    grouped: dict[str, list[dict]] = {}
    for r in sorted(records, key=record_sort_key):
        grouped.setdefault(r["run_id"], []).append(r)
    return grouped


def interval(records: list[dict], measure: Measure) -> Interval | None:
    """Mean and 95% interval of one run's records: t over seeds, else a bootstrap over held-out examples."""
    values = {r["seed"]: measure.value(r) for r in records if measure.value(r) is not None}
    if not values:
        return None
    per_example = None
    if measure.per_example is not None:
        per_example = {r["seed"]: measure.per_example(r) for r in records if measure.per_example(r)}
    return summarize(values, per_example or None)


def difference(records: list[dict], run_a: str, run_b: str, measure: Measure) -> Interval | None:
    """run_a − run_b, paired: over the seeds both have (t), or with one shared seed a bootstrap over the same
    held-out examples. None when the two runs share no seed."""
    runs = by_run(usable(records))
    a = {r["seed"]: r for r in runs.get(run_a, []) if measure.value(r) is not None}
    b = {r["seed"]: r for r in runs.get(run_b, []) if measure.value(r) is not None}
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    if len(shared) == 1 and measure.per_example is not None:
        seed = shared[0]
        pa, pb = measure.per_example(a[seed]), measure.per_example(b[seed])
        if pa and pb and len(pa) == len(pb):
            return paired_bootstrap_difference(pa, pb)
    return paired_t({s: measure.value(a[s]) for s in shared}, {s: measure.value(b[s]) for s in shared})


def verdict(records: list[dict], run_a: str, run_b: str, key: str) -> str | None:
    """'A beats B on ... by x (95% CI ...)' or '... within noise ...', from the paired difference; None if unpaired."""
    measure = MEASURES[key]
    diff = difference(records, run_a, run_b, measure)
    if diff is None:
        return None
    return compare_runs(run_a, run_b, diff, measure.title, measure.lower_is_better,
                        measure.decimals if measure.decimals is not None else _decimals_for(diff.mean))


# ---------------------------------------------------------------- frames

def _interval_format(decimals: int | None) -> Callable[[object], str]:
    return lambda v: "—" if _missing(v) else format_interval(v, decimals)


# How each column is shown; the frame itself keeps the raw values.
COLUMN_FORMATS: dict[str, Callable[[object], str]] = {
    "rank": lambda v: "—" if _missing(v) else f"{int(v)}",
    "seeds": lambda v: "—" if _missing(v) else f"{int(v)}",
    "trainable params": format_count,
    "trainable %": lambda v: "—" if _missing(v) else f"{v:.3g}",
    "artifact MiB": format_number,
    "peak memory MiB": _interval_format(0),
    "tokens/s": _interval_format(0),
    "perplexity before": lambda v: "—" if _missing(v) else f"{v:.2f}",
    "perplexity after": _interval_format(2),
    "general-text before": lambda v: "—" if _missing(v) else f"{v:.2f}",
    "general-text after": _interval_format(2),
    "human mean": lambda v: "—" if _missing(v) else f"{v:.2f}",
    "human n": lambda v: "—" if _missing(v) else f"{int(v)}",
    **{f"{c} MiB": format_number for c in MEMORY_CATEGORIES},
    "total MiB": format_number, "step peak MiB": format_number, "predicted total MiB": format_number,
    "predicted peak MiB": format_number, "prediction error %": lambda v: "—" if _missing(v) else f"{v:+.0f}%",
}


class LabFrame(pd.DataFrame):
    """A DataFrame that displays through COLUMN_FORMATS and wraps long text, in notebooks 01–04 alike.

    Subclassing (rather than returning a Styler) keeps it a real DataFrame: tests and students can index,
    compute and plot with the raw values.
    """

    @property
    def _constructor(self):
        return LabFrame

    def _formatters(self) -> dict:
        return {c: f for c, f in COLUMN_FORMATS.items() if c in self.columns}

    def _repr_html_(self) -> str | None:
        try:
            shown = self.formatted()
            # Only long free text (answers) wraps; short labels such as "method" stay on one line.
            text_columns = [c for c in shown.columns if c not in COLUMN_FORMATS
                            and shown[c].astype(str).str.len().max(skipna=True) > 30]
            styler = shown.style
            if text_columns:
                styler = styler.set_properties(subset=text_columns,
                                               **{"white-space": "pre-wrap", "text-align": "left",
                                                  "vertical-align": "top", "min-width": "12em"})
            return styler.to_html()
        except Exception:  # display must never break a notebook; fall back to pandas' own rendering
            return super()._repr_html_()

    def formatted(self) -> pd.DataFrame:
        """Every cell as the text the lab shows for it."""
        shown = pd.DataFrame(self).astype(object)
        for column, format_ in self._formatters().items():
            shown[column] = [format_(v) for v in self[column]]
        return shown

    def __repr__(self) -> str:
        try:
            return self.formatted().to_string()
        except Exception:
            return super().__repr__()


def _human_means(human_eval: Mapping | None) -> dict[str, dict]:
    """Accept the human_eval.json dict (with "ratings") or an already aggregated {run_id: {mean, n}}."""
    if not human_eval:
        return {}
    if "ratings" in human_eval:
        from .ratings import aggregate

        return aggregate(dict(human_eval))
    return {run_id: dict(v) for run_id, v in human_eval.items()}


def _mean(values: Iterable[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return sum(found) / len(found) if found else None


def summary_frame(records: list[dict], human_eval: dict | None = None) -> pd.DataFrame:
    """One row per run (RUN_ORDER): what it trains and saves, and each measured quantity as mean ± 95% interval
    over its seeds. Records worse than before training are left out of the row (and counted in "excluded")."""
    rows = []
    for run_id, all_recs in by_run(records).items():
        recs = usable(all_recs) or all_recs  # a run with only flagged records still shows, flagged
        first = recs[0]
        row = {"run": run_id, "method": first["method"], "rank": first["lora"]["r"] if first.get("lora") else pd.NA,
               "seeds": len(recs), "trainable params": first["params"]["trainable"],
               "trainable %": first["params"]["trainable_pct"],
               "artifact MiB": _mean(r["artifact"]["bytes"] / MIB for r in recs)}
        for key in ("peak memory MiB", "tokens/s"):
            row[key] = interval(recs, MEASURES[key])
        row["perplexity before"] = first["eval"]["perplexity_before"]
        row["perplexity after"] = interval(recs, MEASURES["perplexity after"])
        if any(r.get("forgetting") for r in recs):
            row["general-text before"] = _mean(_forgetting("perplexity_before")(r) for r in recs)
            row["general-text after"] = interval(recs, MEASURES["general-text after"])
        bad = len(flagged(all_recs))
        row["excluded"] = f"{bad} worse than before" if bad else ""
        rows.append(row)
    columns = ["run", "method", "rank", "seeds", "trainable params", "trainable %", "artifact MiB", "peak memory MiB",
               "tokens/s", "perplexity before", "perplexity after"]
    if any("general-text after" in row for row in rows):
        columns += ["general-text before", "general-text after"]
    if any(row["excluded"] for row in rows):
        columns.append("excluded")
    frame = LabFrame(pd.DataFrame(rows, columns=columns)).set_index("run")
    frame["rank"] = frame["rank"].astype("Int64")  # NA for full fine-tuning, an integer otherwise
    human = _human_means(human_eval)
    if human:
        frame["human mean"] = [human.get(run, {}).get("mean", math.nan) for run in frame.index]
        frame["human n"] = pd.array([human.get(run, {}).get("n", 0) for run in frame.index], dtype="Int64")
    return frame


def memory_frame(records: list[dict]) -> pd.DataFrame:
    """Memory of a training step by category (MiB, mean over seeds), their total, the measured step peak, and the
    prediction made before training from the spec and the architecture."""
    rows = []
    for run_id, recs in by_run(usable(records) or records).items():
        memories = [r.get("memory") or {} for r in recs]
        if not any(m.get("categories") for m in memories):
            continue
        row = {"run": run_id}
        for c in MEMORY_CATEGORIES:
            row[f"{c} MiB"] = _mean(m["categories"][c] / MIB for m in memories if m.get("categories"))
        row["total MiB"] = sum(row[f"{c} MiB"] for c in MEMORY_CATEGORIES)
        row["step peak MiB"] = _mean(m.get("step_peak_bytes", 0) / MIB for m in memories)
        predicted = memories[0].get("predicted") or {}
        row["predicted total MiB"] = predicted.get("total", 0) / MIB if predicted else None
        row["predicted peak MiB"] = predicted.get("peak", 0) / MIB if predicted else None
        if row["predicted total MiB"]:
            row["prediction error %"] = 100 * (row["predicted total MiB"] / row["total MiB"] - 1)
        rows.append(row)
    return LabFrame(pd.DataFrame(rows)).set_index("run") if rows else LabFrame(pd.DataFrame())


def prediction_frame(predictions: Mapping[str, Mapping[str, int]]) -> pd.DataFrame:
    """Predicted memory of one training step per run (MiB by category, their total, and the peak: activations are
    freed while gradients are created, so the peak holds the larger of the two)."""
    rows = [{"run": run, "trainable params": p["trainable_params"],
             **{f"{c} MiB": p[c] / MIB for c in MEMORY_CATEGORIES},
             "predicted total MiB": p["total"] / MIB, "predicted peak MiB": p["peak"] / MIB}
            for run, p in predictions.items()]
    return LabFrame(pd.DataFrame(rows)).set_index("run")


def frame(rows: list[Mapping]) -> pd.DataFrame:
    """Rows of plain values (a helper's list of dicts) shown like every other table of the lab."""
    return LabFrame(pd.DataFrame(list(rows)))


def settings_frame(args) -> pd.DataFrame:
    """The SFTConfig fields the lab sets on purpose: the trainer's value, TRL's default and why (helpers.training)."""
    from .training import explain_settings

    return LabFrame(pd.DataFrame(explain_settings(args))).set_index("field")


def bench_frame(bench: Mapping | None) -> pd.DataFrame:
    """`make bench`'s table: each pipeline's real tokens/s, the ratio to the naive peer, MFU and where a step's time
    goes; empty (with a hint) when no measurement exists."""
    if not bench:
        return LabFrame(pd.DataFrame({"note": ["no bench.json yet: run `make bench`"]}))
    frame = LabFrame(pd.DataFrame(bench["rows"])).set_index("pipeline")
    frame.attrs["machine"] = bench.get("machine", "")
    return frame


def generations_frame(records: list[dict]) -> pd.DataFrame:
    """Rows = prompts; "base" = the untrained model's answer, then each run's answer after training (its first seed).

    The base answer comes from a full-precision run: QLoRA's "before" is the 4-bit base, not the model the others
    started from.
    """
    firsts = [recs[0] for recs in by_run(records).values()]
    prompts: list[str] = []
    for r in firsts:
        prompts += [g["prompt"] for g in r.get("generations", []) if g["prompt"] not in prompts]
    base_source = next((r for r in firsts if r["method"] != "qlora"), firsts[0] if firsts else None)
    columns: dict[str, list[str]] = {}
    if base_source is not None:
        before = {g["prompt"]: g["before"] for g in base_source.get("generations", [])}
        columns["base"] = [before.get(p, "") for p in prompts]
    for r in firsts:
        after = {g["prompt"]: g["after"] for g in r.get("generations", [])}
        columns[r["run_id"]] = [after.get(p, "") for p in prompts]
    return LabFrame(columns, index=pd.Index(prompts, name="prompt"))


# ---------------------------------------------------------------- sentences

def _how_to_produce(run_ids: Iterable[str]) -> str:
    notebooks = sorted({PRODUCED_BY[run] for run in run_ids if run in PRODUCED_BY}) or ["01 to 03"]
    return "run notebook " + ", ".join(notebooks)


def missing_runs(records: list[dict]) -> list[str]:
    present = {r["run_id"] for r in records}
    return [run for run in RUN_ORDER if run not in present]


def _mean_of(records: list[dict], run_id: str, value: Callable[[dict], float | None]) -> float | None:
    return _mean(value(r) for r in by_run(usable(records)).get(run_id, []))


def compare_sentence(records: list[dict], run_a: str, run_b: str) -> str:
    """How run_a compares with run_b in memory, speed, perplexity and artifact size, or what is missing."""
    runs = by_run(usable(records))
    absent = [run for run in (run_a, run_b) if run not in runs]
    if absent:
        return f"Cannot compare {run_a} with {run_b}: no valid results for {', '.join(absent)} ({_how_to_produce(absent)})."
    parts = []
    for key, unit in (("peak memory MiB", " MiB"), ("tokens/s", " tokens/s"), ("perplexity after", "")):
        measure = MEASURES[key]
        a, b = interval(runs[run_a], measure), interval(runs[run_b], measure)
        if a is None or b is None:
            continue
        ratio = f" ({format_ratio(a.mean / b.mean)})" if b.mean else ""
        parts.append(f"{measure.title} {format_interval(a, measure.decimals)} vs "
                     f"{format_interval(b, measure.decimals)}{unit}{ratio}")
    art_a = _mean_of(records, run_a, lambda r: r["artifact"]["bytes"])
    art_b = _mean_of(records, run_b, lambda r: r["artifact"]["bytes"])
    parts.append(f"saved {format_bytes(art_a)} vs {format_bytes(art_b)}")
    return f"{run_a} vs {run_b}: " + "; ".join(parts) + "."


def loading_report(records: list[dict], left_out: list[tuple[str, str]], directory: Path | str) -> str:
    """What load_all found: the runs read (with their seeds), and every file left out with its reason."""
    lines = [f"Results folder: {directory}"]
    if records:
        lines.append("Read " + ", ".join(f"{run} ({len(recs)} seed{'s' if len(recs) > 1 else ''})"
                                         for run, recs in by_run(records).items()) + ".")
    else:
        lines.append("No valid results yet.")
    missing = missing_runs(records)
    if missing:
        lines.append(f"Not there (yet): {', '.join(missing)} — {_how_to_produce(missing)} to produce them.")
    for r in flagged(records):
        lines.append(f"Flagged: {r['run_id']} seed {r['seed']} ended worse than it started "
                     f"({r['eval']['perplexity_before']:.2f} -> {r['eval']['perplexity_after']:.2f}); it is shown but "
                     "not averaged in.")
    if left_out:
        older = [name for name, reason in left_out if reason.startswith("older schema")]
        if older:
            lines.append(f"Older schema ({len(older)} file(s), from an earlier version of the lab; re-run their "
                         f"notebooks): {', '.join(older)}")
        others = [(name, reason) for name, reason in left_out if not reason.startswith("older schema")]
        if others:
            lines.append(f"Left out {len(others)} file(s):")
            lines += [f"  {name}: {reason}" for name, reason in others]
    return "\n".join(lines)


def _notes_about_the_set(records: list[dict], where: str) -> list[str]:
    notes = []
    missing = missing_runs(records)
    if missing:
        notes.append(f"Missing from this comparison: {', '.join(missing)} ({_how_to_produce(missing)}); "
                     "the sentences below use the runs that are there.")
    for field, what in (("profile", "profiles"), ("device", "devices"), ("dtype", "precisions")):
        values = sorted({r["environment"][field] for r in records})
        if len(values) > 1:
            notes.append(f"The runs come from different {what} ({', '.join(values)}): their numbers are not "
                         "comparable; re-run them with the same settings.")
    tokens = sorted({r["training"]["tokens"] for r in records})
    if len(tokens) == 1:
        notes.append(f"Every run trained on the same {format_count(tokens[0])} real tokens, so the differences come "
                     "from the method.")
    else:
        notes.append(f"The runs trained on different numbers of tokens ({', '.join(map(format_count, tokens))}): "
                     "the comparison is not like for like.")
    seeds = sorted({len(recs) for recs in by_run(usable(records)).values()})
    if seeds == [1]:
        notes.append("One training seed per run: intervals on perplexity are bootstraps over the held-out examples "
                     "(they do not include seed-to-seed variation); speed and memory have none. Run with "
                     "LAB_SEEDS=3 for intervals over seeds.")
    else:
        notes.append(f"Intervals are 95% t-intervals over {', '.join(map(str, seeds))} training seeds per run; "
                     "differences are paired by seed.")
    if any(r["environment"]["profile"] == "smoke" for r in records):
        notes.append("These are smoke-profile numbers (a couple of training steps): they check that everything "
                     "works, not which method is better.")
    for r in flagged(records):
        notes.append(f"{r['run_id']} (seed {r['seed']}) ended worse than it started on held-out perplexity "
                     f"({r['eval']['perplexity_before']:.2f} -> {r['eval']['perplexity_after']:.2f}): it is not a "
                     "result, and is left out of every mean and comparison (try a lower learning rate).")
    return notes


def _memory_notes(records: list[dict]) -> list[str]:
    runs = by_run(usable(records))
    notes = []

    def category(run_id: str, name: str) -> float | None:
        return _mean((r.get("memory") or {}).get("categories", {}).get(name) for r in runs.get(run_id, []))

    full = [category("full", c) for c in ("gradients", "optimizer")]
    for run in ("lora-r8", "lora-r16", "lora-r32"):
        small = [category(run, c) for c in ("gradients", "optimizer")]
        if None not in full + small:
            notes.append(f"Full fine-tuning pays {format_bytes(full[0])} for gradients and {format_bytes(full[1])} for "
                         f"AdamW state (4 + 8 bytes per trainable parameter); {run} pays {format_bytes(small[0])} and "
                         f"{format_bytes(small[1])}: {format_bytes(sum(full) - sum(small))} less.")
            break
    w_lora, w_q = category("lora-r16", "weights"), category("qlora", "weights")
    if w_lora and w_q:
        notes.append(f"The 4-bit base stores the weights in {format_bytes(w_q)} instead of {format_bytes(w_lora)} "
                     f"(QLoRA vs LoRA r16): {format_bytes(w_lora - w_q)} saved.")
    acts = {run: category(run, "activations") for run in runs}
    if acts.get("full") and any(acts.get(r) for r in ("lora-r8", "lora-r16")):
        lora_run = "lora-r8" if acts.get("lora-r8") else "lora-r16"
        notes.append(f"Activations (what autograd keeps for the backward pass) are about the same size for every "
                     f"method: {format_bytes(acts['full'])} for full fine-tuning, {format_bytes(acts[lora_run])} for "
                     f"{lora_run}. They depend on the tokens per step, not on how many weights train.")
    return notes


def reading_notes(records: list[dict], directory: Path | str | None = None) -> list[str]:
    """Sentences that read the comparison figure, every number taken from the records, and "A beats B" only when the
    95% interval of the paired difference excludes zero. Each sentence needs only the runs it names."""
    where = f" in {directory}" if directory else ""
    if not records:
        return [f"There are no valid results{where} yet. Run notebooks 01_full_finetune, 02_lora_ranks and 03_qlora "
                "(each writes one results file per run and seed), then run this notebook again."]
    notes = _notes_about_the_set(records, where)
    runs = by_run(usable(records))
    ppl = {run: interval(recs, MEASURES["perplexity after"]) for run, recs in runs.items()}
    ppl = {run: i for run, i in ppl.items() if i is not None}
    if ppl:
        best = min(ppl, key=lambda run: ppl[run].mean)
        before = runs[best][0]["eval"]["perplexity_before"]
        notes.append(f"Lowest mean held-out perplexity after training: {best} ({ppl[best].text(2)}, from "
                     f"{before:.2f} before).")
        for a, b in (("full", "lora-r32"), ("lora-r32", "lora-r16"), ("lora-r16", "lora-r8"), ("qlora", "lora-r16")):
            if a in ppl and b in ppl and (sentence := verdict(records, a, b, "perplexity after")):
                notes.append(sentence)
    if "full" in runs:
        full = runs["full"][0]
        for run in ("lora-r8", "lora-r16", "lora-r32", "qlora"):
            if run in runs and runs[run][0]["params"]["trainable"]:
                other = runs[run][0]
                notes.append(f"{run} trains {format_ratio(full['params']['trainable'] / other['params']['trainable'])} "
                             f"fewer parameters than full fine-tuning ({format_count(other['params']['trainable'])} vs "
                             f"{format_count(full['params']['trainable'])}) and saves "
                             f"{format_bytes(_mean_of(records, run, lambda r: r['artifact']['bytes']))} instead of "
                             f"{format_bytes(_mean_of(records, 'full', lambda r: r['artifact']['bytes']))}.")
                break  # the smallest rank present makes the point; the table has the rest
    notes += _memory_notes(records)
    if "qlora" in runs and "lora-r16" in runs:
        notes.append("QLoRA vs LoRA r16 (same rank, same optimizer, 4-bit base): "
                     + compare_sentence(records, "qlora", "lora-r16").split(": ", 1)[1])
        for key in ("peak memory MiB", "tokens/s"):
            if sentence := verdict(records, "qlora", "lora-r16", key):
                notes.append(sentence)
    else:
        notes.append("QLoRA vs LoRA r16 needs both runs: "
                     f"{', '.join(r for r in ('lora-r16', 'qlora') if r not in runs)} missing.")
    forgetting = {run: interval(recs, MEASURES["general-text after"]) for run, recs in runs.items()}
    forgetting = {run: i for run, i in forgetting.items() if i is not None}
    if forgetting:
        parts = []
        for run, after in forgetting.items():
            before = _mean_of(records, run, _forgetting("perplexity_before"))
            parts.append(f"{run} {before:.2f} -> {after.text(2)}")
        notes.append("Forgetting, measured as perplexity on general text outside the training domain (before -> "
                     "after): " + "; ".join(parts) + ".")
        if "full" in forgetting and "lora-r8" in forgetting and (s := verdict(records, "full", "lora-r8",
                                                                             "general-text after")):
            notes.append(s)
    speed = {run: interval(recs, MEASURES["tokens/s"]) for run, recs in runs.items()}
    speed = {run: i for run, i in speed.items() if i is not None and i.mean > 0}
    if len(speed) > 1:
        fast, slow = max(speed, key=lambda r: speed[r].mean), min(speed, key=lambda r: speed[r].mean)
        notes.append(f"Fastest: {fast} ({speed[fast].text(0)} tokens/s); slowest: {slow} ({speed[slow].text(0)} "
                     f"tokens/s), {format_ratio(speed[fast].mean / speed[slow].mean)} apart.")
    return notes


def markdown_table(records: list[dict], columns: list[str] | None = None) -> str:
    """The summary table in Markdown, for the README's reference results (a test keeps them in sync)."""
    shown = summary_frame(records).formatted().reset_index()
    if columns:
        shown = shown[["run", *columns]]
    numeric = [c in COLUMN_FORMATS for c in shown.columns]
    lines = ["| " + " | ".join(shown.columns) + " |",
             "|" + "|".join("---:" if right else "---" for right in numeric) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines)


__all__ = ["COLUMN_FORMATS", "LabFrame", "MEASURES", "MEMORY_CATEGORIES", "Measure", "by_run", "compare_sentence",
           "difference", "flagged", "format_bytes", "format_count", "format_interval", "format_number",
           "format_ratio", "generations_frame", "interval", "loading_report", "markdown_table", "memory_frame",
           "missing_runs", "reading_notes", "summary_frame", "usable", "verdict", "run_sort_key"]
