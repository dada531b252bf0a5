"""Tables and sentences built from results records: every number shown in the lab comes from here or plots.

The frames keep raw numbers (so code can compute with them); they only *display* through the formatters below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pandas as pd

from .results import RUN_ORDER, run_sort_key

MIB = 2**20

# Which notebook writes which run: a missing run is reported together with how to produce it.
PRODUCED_BY = {"full": "01_full_finetune", "lora-r8": "02_lora_ranks", "lora-r16": "02_lora_ranks",
               "lora-r32": "02_lora_ranks", "qlora": "03_qlora"}


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


# How each column is shown; the frame itself keeps the raw values.
COLUMN_FORMATS: dict[str, Callable[[object], str]] = {
    "rank": lambda v: "—" if _missing(v) else f"{int(v)}",
    "trainable params": format_count,
    "trainable %": lambda v: "—" if _missing(v) else f"{v:.3g}",
    "artifact MiB": format_number,
    "peak memory MiB": format_number,
    "tokens/s": format_number,
    "train seconds": format_number,
    "perplexity before": lambda v: "—" if _missing(v) else f"{v:.2f}",
    "perplexity after": lambda v: "—" if _missing(v) else f"{v:.2f}",
    "bits/token after": lambda v: "—" if _missing(v) else f"{v:.3f}",
    "human mean": lambda v: "—" if _missing(v) else f"{v:.2f}",
    "human n": lambda v: "—" if _missing(v) else f"{int(v)}",
}


class LabFrame(pd.DataFrame):
    """A DataFrame that displays through COLUMN_FORMATS and wraps long text, in notebooks 01–04 alike.

    Subclassing (rather than returning a Styler) keeps it a real DataFrame: tests and students can index,
    compute and plot with the raw numbers.
    """

    @property
    def _constructor(self):
        return LabFrame

    def _formatters(self) -> dict:
        return {c: f for c, f in COLUMN_FORMATS.items() if c in self.columns}

    def _repr_html_(self) -> str | None:
        try:
            # Only long free text (answers) wraps; short labels such as "method" stay on one line.
            text_columns = [c for c in self.columns if c not in COLUMN_FORMATS
                            and not pd.api.types.is_numeric_dtype(self[c])
                            and self[c].astype(str).str.len().max(skipna=True) > 30]
            styler = self.style.format(self._formatters(), na_rep="—")
            if text_columns:
                styler = styler.set_properties(subset=text_columns,
                                               **{"white-space": "pre-wrap", "text-align": "left",
                                                  "vertical-align": "top", "min-width": "12em"})
            return styler.to_html()
        except Exception:  # display must never break a notebook; fall back to pandas' own rendering
            return super()._repr_html_()

    def formatted(self) -> pd.DataFrame:
        """Every cell as the text the lab shows for it (formatted up front: to_string and to_markdown
        skip formatters for missing values and print <NA>)."""
        shown = pd.DataFrame(self).astype(object)
        for column, format_ in self._formatters().items():
            shown[column] = [format_(v) for v in self[column]]
        return shown

    def __repr__(self) -> str:
        try:
            return self.formatted().to_string()
        except Exception:
            return super().__repr__()


# ---------------------------------------------------------------- frames

def _ordered(records: Iterable[dict]) -> list[dict]:
    return sorted(records, key=lambda r: run_sort_key(r["run_id"]))


def _human_means(human_eval: Mapping | None) -> dict[str, dict]:
    """Accept the human_eval.json dict (with "ratings") or an already aggregated {run_id: {mean, n}}."""
    if not human_eval:
        return {}
    if "ratings" in human_eval:
        from .widgets import aggregate  # lazy: tables must not need ipywidgets just to build a table

        return aggregate(dict(human_eval))
    return {run_id: dict(v) for run_id, v in human_eval.items()}


def summary_frame(records: list[dict], human_eval: dict | None = None) -> pd.DataFrame:
    """One row per run (RUN_ORDER), raw numbers; "human mean"/"human n" only when ratings exist."""
    rows = []
    for r in _ordered(records):
        t, e = r["training"], r["eval"]
        rows.append({
            "run": r["run_id"],
            "method": r["method"],
            "rank": r["lora"]["r"] if r.get("lora") else pd.NA,
            "trainable params": r["params"]["trainable"],
            "trainable %": r["params"]["trainable_pct"],
            "artifact MiB": r["artifact"]["bytes"] / MIB,
            "peak memory MiB": t["peak_memory_bytes"] / MIB,
            "tokens/s": t["tokens_per_second"],
            "train seconds": t["seconds"],
            "perplexity before": e["perplexity_before"],
            "perplexity after": e["perplexity_after"],
            "bits/token after": e["bits_per_token_after"],
        })
    columns = ["run", "method"] + [c for c in COLUMN_FORMATS if not c.startswith("human")]
    frame = LabFrame(pd.DataFrame(rows, columns=columns)).set_index("run")
    frame["rank"] = frame["rank"].astype("Int64")  # NA for full fine-tuning, an integer otherwise
    human = _human_means(human_eval)
    if human:
        frame["human mean"] = [human.get(run, {}).get("mean", math.nan) for run in frame.index]
        frame["human n"] = pd.array([human.get(run, {}).get("n", 0) for run in frame.index], dtype="Int64")
    return frame


def generations_frame(records: list[dict]) -> pd.DataFrame:
    """Rows = prompts; "base" = the untrained model's answer, then each run's answer after training.

    The base answer comes from a full-precision run: QLoRA's "before" is the 4-bit base, not the model the others
    started from.
    """
    ordered = _ordered(records)
    prompts: list[str] = []
    for r in ordered:
        prompts += [g["prompt"] for g in r.get("generations", []) if g["prompt"] not in prompts]
    base_source = next((r for r in ordered if r["method"] != "qlora"), ordered[0] if ordered else None)
    columns: dict[str, list[str]] = {}
    if base_source is not None:
        before = {g["prompt"]: g["before"] for g in base_source.get("generations", [])}
        columns["base"] = [before.get(p, "") for p in prompts]
    for r in ordered:
        after = {g["prompt"]: g["after"] for g in r.get("generations", [])}
        columns[r["run_id"]] = [after.get(p, "") for p in prompts]
    frame = LabFrame(columns, index=pd.Index(prompts, name="prompt"))
    return frame


# ---------------------------------------------------------------- sentences

def _by_id(records: Iterable[dict]) -> dict[str, dict]:
    return {r["run_id"]: r for r in records}


def _how_to_produce(run_ids: Iterable[str]) -> str:
    notebooks = sorted({PRODUCED_BY[run] for run in run_ids if run in PRODUCED_BY}) or ["01 to 03"]
    return "run notebook " + ", ".join(notebooks)


def missing_runs(records: list[dict]) -> list[str]:
    present = {r["run_id"] for r in records}
    return [run for run in RUN_ORDER if run not in present]


def compare_sentence(records: list[dict], run_a: str, run_b: str) -> str:
    """How run_a compares with run_b in memory, speed, perplexity and artifact size, or what is missing."""
    found = _by_id(records)
    absent = [run for run in (run_a, run_b) if run not in found]
    if absent:
        return f"Cannot compare {run_a} with {run_b}: no valid results for {', '.join(absent)} ({_how_to_produce(absent)})."
    a, b = found[run_a], found[run_b]
    mem_a, mem_b = a["training"]["peak_memory_bytes"], b["training"]["peak_memory_bytes"]
    tps_a, tps_b = a["training"]["tokens_per_second"], b["training"]["tokens_per_second"]
    ppl_a, ppl_b = a["eval"]["perplexity_after"], b["eval"]["perplexity_after"]
    art_a, art_b = a["artifact"]["bytes"], b["artifact"]["bytes"]
    parts = [
        f"peak memory {format_bytes(mem_a)} vs {format_bytes(mem_b)}"
        + (f" ({format_ratio(mem_a / mem_b)})" if mem_b else ""),
        f"speed {format_number(tps_a)} vs {format_number(tps_b)} tokens/s"
        + (f" ({format_ratio(tps_a / tps_b)})" if tps_b else ""),
        f"perplexity after {ppl_a:.2f} vs {ppl_b:.2f}",
        f"saved {format_bytes(art_a)} vs {format_bytes(art_b)}",
    ]
    return f"{run_a} vs {run_b}: " + "; ".join(parts) + "."


def loading_report(records: list[dict], left_out: list[tuple[str, str]], directory: Path | str) -> str:
    """What load_all found: the runs read, and every file left out with its reason."""
    lines = [f"Results folder: {directory}"]
    if records:
        lines.append(f"Read {len(records)} run(s): {', '.join(r['run_id'] for r in _ordered(records))}.")
    else:
        lines.append("No valid results yet.")
    missing = missing_runs(records)
    if missing:
        lines.append(f"Not there (yet): {', '.join(missing)} — {_how_to_produce(missing)} to produce them.")
    if left_out:
        lines.append(f"Left out {len(left_out)} file(s):")
        lines += [f"  {name}: {reason}" for name, reason in left_out]
    return "\n".join(lines)


def reading_notes(records: list[dict], directory: Path | str | None = None) -> list[str]:
    """Sentences that read the comparison figure, every number taken from the records.

    Each sentence needs only the runs it names, so any subset of runs gives the sentences it can support.
    """
    where = f" in {directory}" if directory else ""
    if not records:
        return [f"There are no valid results{where} yet. Run notebooks 01_full_finetune, 02_lora_ranks and 03_qlora "
                "(each writes results/<run_id>.json), then run this notebook again."]
    found = _by_id(records)
    notes = []
    missing = missing_runs(records)
    if missing:
        notes.append(f"Missing from this comparison: {', '.join(missing)} ({_how_to_produce(missing)}); "
                     "the sentences below use the runs that are there.")
    for field, what in (("profile", "profiles"), ("device", "devices")):
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
    if any(r["environment"]["profile"] == "smoke" for r in records):
        notes.append("These are smoke-profile numbers (a couple of training steps): they check that everything "
                     "works, not which method is better.")

    best = min(records, key=lambda r: r["eval"]["perplexity_after"])
    notes.append(f"Lowest held-out perplexity after training: {best['run_id']} "
                 f"({best['eval']['perplexity_after']:.2f}, from {best['eval']['perplexity_before']:.2f} before).")
    if "full" in found:
        full = found["full"]
        for run in ("lora-r8", "lora-r16", "lora-r32", "qlora"):
            if run in found and found[run]["params"]["trainable"]:
                ratio = full["params"]["trainable"] / found[run]["params"]["trainable"]
                notes.append(f"{run} trains {format_ratio(ratio)} fewer parameters than full fine-tuning "
                             f"({format_count(found[run]['params']['trainable'])} vs "
                             f"{format_count(full['params']['trainable'])}) and saves "
                             f"{format_bytes(found[run]['artifact']['bytes'])} instead of "
                             f"{format_bytes(full['artifact']['bytes'])}.")
                break  # the smallest rank present makes the point; the table has the rest
    if "qlora" in found and "lora-r16" in found:
        q, lo = found["qlora"]["training"], found["lora-r16"]["training"]
        if lo["peak_memory_bytes"] and lo["tokens_per_second"]:
            notes.append(f"QLoRA vs LoRA r16 (same rank, 4-bit base): peak memory "
                         f"{format_ratio(q['peak_memory_bytes'] / lo['peak_memory_bytes'])} "
                         f"({format_bytes(q['peak_memory_bytes'])} vs {format_bytes(lo['peak_memory_bytes'])}), speed "
                         f"{format_ratio(q['tokens_per_second'] / lo['tokens_per_second'])} "
                         f"({format_number(q['tokens_per_second'])} vs {format_number(lo['tokens_per_second'])} tokens/s).")
    else:
        notes.append("QLoRA vs LoRA r16 needs both runs: "
                     f"{', '.join(r for r in ('lora-r16', 'qlora') if r not in found)} missing.")
    if len(records) > 1:
        fast = max(records, key=lambda r: r["training"]["tokens_per_second"])
        slow = min(records, key=lambda r: r["training"]["tokens_per_second"])
        if slow["training"]["tokens_per_second"]:
            notes.append(f"Fastest: {fast['run_id']} ({format_number(fast['training']['tokens_per_second'])} tokens/s); "
                         f"slowest: {slow['run_id']} ({format_number(slow['training']['tokens_per_second'])} tokens/s), "
                         f"{format_ratio(fast['training']['tokens_per_second'] / slow['training']['tokens_per_second'])}"
                         " apart.")
    kinds = {r["training"]["memory_kind"] for r in records}
    if "cpu_rss_sampled" in kinds:
        notes.append("Peak memory here is the process RSS sampled during training on a CPU: it includes everything "
                     "the process touched, so small differences between runs are noise.")
    return notes


def markdown_table(records: list[dict]) -> str:
    """The summary table in Markdown, for the README's reference results (a test keeps them in sync)."""
    shown = summary_frame(records).formatted().reset_index()
    numeric = [c in COLUMN_FORMATS for c in shown.columns]
    lines = ["| " + " | ".join(shown.columns) + " |",
             "|" + "|".join("---:" if right else "---" for right in numeric) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines)
