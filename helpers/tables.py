"""Tables built from results records: one row per run (or prompt), raw values inside (numbers, or
helpers.statistics.Interval) so code can compute with them, shown through helpers.formatting.

The sentences that read these tables are in helpers.notes; what each column measures, in helpers.measures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import pandas as pd

from .formatting import MIB, format_count, format_interval, format_number, missing
from .measures import FLAGS, MEASURES, by_run, flags, interval, mean, usable

MEMORY_CATEGORIES = ("weights", "gradients", "optimizer", "activations", "other")


# ---------------------------------------------------------------- frames

def _interval_format(decimals: int | None) -> Callable[[object], str]:
    return lambda v: "—" if missing(v) else format_interval(v, decimals)


# How each column is shown; the frame itself keeps the raw values.
COLUMN_FORMATS: dict[str, Callable[[object], str]] = {
    "rank": lambda v: "—" if missing(v) else f"{int(v)}",
    "seeds": lambda v: "—" if missing(v) else f"{int(v)}",
    "trainable params": format_count,
    "trainable %": lambda v: "—" if missing(v) else f"{v:.3g}",
    "artifact MiB": format_number,
    "peak memory MiB": _interval_format(0),
    "tokens/s": _interval_format(0),
    "perplexity before": lambda v: "—" if missing(v) else f"{v:.2f}",
    "perplexity after": _interval_format(2),
    "general-text before": lambda v: "—" if missing(v) else f"{v:.2f}",
    "general-text after": _interval_format(2),
    "repeated 3-grams % before": lambda v: "—" if missing(v) else f"{v:.0f}",
    "repeated 3-grams % after": _interval_format(0),
    "greedy repeated 3-grams %": lambda v: "—" if missing(v) else f"{v:.0f}",
    "penalised repeated 3-grams %": lambda v: "—" if missing(v) else f"{v:.0f}",
    "human mean": lambda v: "—" if missing(v) else f"{v:.2f}",
    "human n": lambda v: "—" if missing(v) else f"{int(v)}",
    **{f"{c} MiB": format_number for c in MEMORY_CATEGORIES},
    "total MiB": format_number, "step peak MiB": format_number, "predicted total MiB": format_number,
    "predicted peak MiB": format_number, "prediction error %": lambda v: "—" if missing(v) else f"{v:+.0f}%",
}


class LabFrame(pd.DataFrame):
    """A DataFrame that displays through COLUMN_FORMATS and wraps long text, in notebooks 01–05 alike.

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


def summary_frame(records: list[dict], human_eval: dict | None = None) -> pd.DataFrame:
    """One row per run (RUN_ORDER): what it trains and saves, and each measured quantity as mean ± 95% interval
    over its seeds. Flagged records (worse than before training, a token budget changed by skipped updates) are left
    out of the row and counted in "excluded"."""
    rows = []
    for run_id, all_recs in by_run(records).items():
        recs = usable(all_recs) or all_recs  # a run with only flagged records still shows, flagged
        first = recs[0]
        method = first["method"] + (f" + {first['variant']}" if first.get("variant") else "")  # e.g. lora + dora
        row = {"run": run_id, "method": method, "rank": first["lora"]["r"] if first.get("lora") else pd.NA,
               "seeds": len(recs), "trainable params": first["params"]["trainable"],
               "trainable %": first["params"]["trainable_pct"],
               "artifact MiB": mean(r["artifact"]["bytes"] / MIB for r in recs)}
        for key in ("peak memory MiB", "tokens/s"):
            row[key] = interval(recs, MEASURES[key])
        row["perplexity before"] = first["eval"]["perplexity_before"]
        row["perplexity after"] = interval(recs, MEASURES["perplexity after"])
        if any(r.get("forgetting") for r in recs):
            row["general-text before"] = mean(MEASURES["general-text before"].value(r) for r in recs)
            row["general-text after"] = interval(recs, MEASURES["general-text after"])
        if any(r.get("generations") for r in recs):
            row["repeated 3-grams % before"] = mean(MEASURES["repeated 3-grams % before"].value(r) for r in recs)
            row["repeated 3-grams % after"] = interval(recs, MEASURES["repeated 3-grams % after"])
        counts = {key: sum(key in flags(r) for r in all_recs) for key in FLAGS}
        row["excluded"] = ", ".join(f"{n} {FLAGS[key]}" for key, n in counts.items() if n)
        rows.append(row)
    columns = ["run", "method", "rank", "seeds", "trainable params", "trainable %", "artifact MiB", "peak memory MiB",
               "tokens/s", "perplexity before", "perplexity after"]
    if any("general-text after" in row for row in rows):
        columns += ["general-text before", "general-text after"]
    if any("repeated 3-grams % after" in row for row in rows):
        columns += ["repeated 3-grams % before", "repeated 3-grams % after"]
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
            row[f"{c} MiB"] = mean(m["categories"][c] / MIB for m in memories if m.get("categories"))
        row["total MiB"] = sum(row[f"{c} MiB"] for c in MEMORY_CATEGORIES)
        row["step peak MiB"] = mean(m.get("step_peak_bytes", 0) / MIB for m in memories)
        # The prediction is for the measured batch (the same for every seed); each seed's prediction is compared with
        # that seed's measurement.
        paired = [m for m in memories if m.get("predicted") and m.get("categories")]
        row["predicted total MiB"] = mean(m["predicted"]["total"] / MIB for m in paired) if paired else None
        row["predicted peak MiB"] = mean(m["predicted"]["peak"] / MIB for m in paired) if paired else None
        if paired:
            row["prediction error %"] = mean(
                100 * (m["predicted"]["total"] / sum(m["categories"][c] for c in MEMORY_CATEGORIES) - 1) for m in paired)
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


def param_groups_frame(optimizer, model) -> pd.DataFrame:
    """One row per non-empty parameter group of an optimizer: its learning rate, weight decay, and which of the model's
    trainable tensors it holds (by kind: lora_A, lora_B, ...). LoRA+ shows here as B's group at ratio x A's rate."""
    names = {id(p): n for n, p in model.named_parameters()}
    rows = []
    for k, group in enumerate(optimizer.param_groups):
        if not group["params"]:  # LoRA+'s groups for adapted embeddings and undecayed B tensors, when there are none
            continue
        kinds = sorted({next((part for part in names.get(id(p), "?").split(".") if part.startswith("lora_")), "other")
                        for p in group["params"]})
        # a scheduler moves "lr" along the schedule and keeps the peak as "initial_lr"
        rows.append({"group": k, "peak learning rate": group.get("initial_lr", group["lr"]),
                     "weight decay": group["weight_decay"],
                     "tensors": len(group["params"]), "parameters": sum(p.numel() for p in group["params"]),
                     "holds": ", ".join(kinds)})
    return LabFrame(pd.DataFrame(rows)).set_index("group")


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


def markdown_table(records: list[dict], columns: list[str] | None = None) -> str:
    """The summary table in Markdown, for the README's reference results (a test keeps them in sync)."""
    shown = summary_frame(records).formatted().reset_index()
    if columns:
        shown = shown[["run", *columns]]
    right = {i for i, c in enumerate(shown.columns) if c in COLUMN_FORMATS}
    return markdown(list(shown.columns), [list(map(str, row)) for row in shown.itertuples(index=False)], right)


def markdown(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    """A Markdown table of text cells; the columns numbered in `right` (numbers) are right-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)



__all__ = ["COLUMN_FORMATS", "LabFrame", "MEMORY_CATEGORIES", "bench_frame", "generations_frame", "markdown",
           "markdown_table", "memory_frame", "prediction_frame", "summary_frame"]
