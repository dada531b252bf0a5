"""The lab's plots. One colour per run everywhere; every value drawn comes from the results records.

Helpers never call plt.show(). comparison_figure builds a bare matplotlib Figure (no pyplot state, nothing is
displayed or leaked behind the caller's back); the single-axis plots, when not given an axis, open one with pyplot so
that a notebook cell ending in `plots.loss_curves(records);` shows it like any other pyplot figure.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from .results import RUN_ORDER
from .statistics import Interval
from .formatting import MIB, format_count, format_number
from .measures import MEASURES, PARETO_PAIRS, by_run, interval, missing_runs, pareto, usable
from .tables import MEMORY_CATEGORIES

RUN_COLORS: dict[str, str] = {
    # Full fine-tuning stands apart (vermillion); LoRA ranks are one blue family, darker = larger rank, so the
    # rank reads as an ordered quantity; QLoRA (LoRA r16 on a 4-bit base) is a separate green. Colour-blind safe.
    "full": "#D55E00",
    "lora-r8": "#9ECAE1",
    "lora-r16": "#4292C6",
    "lora-r32": "#08519C",
    "qlora": "#009E73",
    # LoRA r16's variants (notebook 04): Paul Tol's muted set, apart from the blues and the green
    "dora-r16": "#AA4499",
    "rslora-r16": "#DDAA33",
    "pissa-r16": "#882255",
    "loraplus-r16": "#999933",
}
FALLBACK_COLOR = "#999999"

CATEGORY_COLORS = {"weights": "#4D4D4D", "gradients": "#E69F00", "optimizer": "#CC79A7", "activations": "#56B4E9",
                   "other": "#D9D9D9"}


def run_color(run_id: str) -> str:
    return RUN_COLORS.get(run_id, FALLBACK_COLOR)


def _new_axes(ax: Axes | None, size: tuple[float, float] = (6.4, 4.0)) -> Axes:
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=size, layout="constrained")
    return ax


def _empty(ax: Axes, message: str) -> Axes:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#666666", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


# ---------------------------------------------------------------- metrics shared by the figure and the explorer

@dataclass(frozen=True)
class Metric:
    title: str
    value: Callable[[list[dict]], float | Interval | None]  # a run's records -> its value (mean ± interval)
    label: Callable[[float], str]
    log: bool = False
    lower_is_better: bool = False


def _first(key: str, scale: float = 1.0) -> Callable[[list[dict]], float]:
    section, field = key.split(".")
    return lambda recs: sum(r[section][field] for r in recs) / len(recs) / scale


def _measured(key: str) -> Callable[[list[dict]], Interval | None]:
    return lambda recs: interval(recs, MEASURES[key])


METRICS: dict[str, Metric] = {
    "trainable params": Metric("Trainable parameters (count, log scale)", _first("params.trainable"), format_count,
                               log=True),
    "peak memory": Metric("Peak memory of a training step (MiB)", _measured("peak memory MiB"), format_number,
                          lower_is_better=True),
    "tokens/s": Metric("Training speed (real tokens/s)", _measured("tokens/s"), format_number),
    "perplexity after": Metric("Held-out perplexity after training (lower is better)", _measured("perplexity after"),
                               lambda v: f"{v:.2f}", lower_is_better=True),
    "general-text perplexity after": Metric("General-text perplexity after training (forgetting; lower is better)",
                                            _measured("general-text after"), lambda v: f"{v:.2f}",
                                            lower_is_better=True),
    "artifact size": Metric("Saved artifact (MiB)", _first("artifact.bytes", MIB), format_number, log=True),
}


def _count_tick(value: float, _pos: object = None) -> str:
    """Axis ticks in the table's units (1M, 10M, 100M), not 10^6."""
    text = format_count(value)
    number = text.rstrip("kMBT")
    return (number.rstrip("0").rstrip(".") if "." in number else number) + text[len(number):]


def _headroom(ax: Axes, values: list[float], log: bool, room: float = 1.18) -> None:
    """Room above the tallest bar for its label; on a log axis the bars start at a round power of ten below the
    smallest value, because a log bar's length depends on where it starts."""
    positive = [v for v in values if v > 0]
    if not positive:
        return
    if log:
        ax.set_yscale("log")
        ax.set_ylim(10 ** math.floor(math.log10(min(positive))), max(positive) * 3)
    else:
        ax.set_ylim(0, max(positive) * room)


def _groups(records: list[dict]) -> list[tuple[str, list[dict], bool]]:
    """(run_id, the records its bars use, flagged) in RUN_ORDER: a run whose every record was flagged (ended worse than
    it started, or skipped updates changed its budget) is still drawn (flagged), never mixed into another run's mean."""
    out = []
    for run_id, recs in by_run(records).items():
        good = usable(recs)
        out.append((run_id, good or recs, not good))
    return out


def _tick_labels(ax: Axes, groups: list[tuple[str, list[dict], bool]]) -> None:
    labels = [f"{run} ⚠" if bad else run for run, _, bad in groups]
    ax.set_xticks(range(len(groups)), labels, rotation=25, ha="right", rotation_mode="anchor")


def _error_bars(ax: Axes, xs: list[float], values: list[float | Interval | None]) -> None:
    """95% intervals as whiskers; a single value (one seed, no bootstrap) has none."""
    for x, v in zip(xs, values):
        if isinstance(v, Interval) and v.method != "single":
            ax.errorbar([x], [v.mean], yerr=[[v.mean - v.low], [v.high - v.mean]], fmt="none", ecolor="#222222",
                        elinewidth=1, capsize=3, zorder=4)


def _point(v: float | Interval | None) -> float:
    return 0.0 if v is None else v.mean if isinstance(v, Interval) else float(v)


def _bars(ax: Axes, records: list[dict], metric: Metric) -> Axes:
    """One bar per run in RUN_ORDER, coloured by run, its mean written on top, its 95% interval as a whisker."""
    groups = _groups(records)
    values = [metric.value(recs) for _, recs, _ in groups]
    points = [_point(v) for v in values]
    bars = ax.bar(range(len(groups)), points, color=[run_color(run) for run, _, _ in groups], edgecolor="#333333",
                  linewidth=0.6, width=0.7)
    for bar, (_, _, bad) in zip(bars, groups):
        if bad:
            bar.set_hatch("xx")
            bar.set_edgecolor("#B00000")
    _error_bars(ax, list(range(len(groups))), values)
    ax.bar_label(bars, labels=[metric.label(p) for p in points], padding=2, fontsize=8)
    _tick_labels(ax, groups)
    _headroom(ax, [v.high if isinstance(v, Interval) else _point(v) for v in values], metric.log)
    if metric.log:
        ax.yaxis.set_major_locator(LogLocator(base=10, numticks=12))
        ax.yaxis.set_major_formatter(FuncFormatter(_count_tick if metric.label is format_count
                                                   else lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title(metric.title, fontsize=10)
    ax.grid(axis="y", alpha=0.3, which="major")
    ax.set_axisbelow(True)
    return ax


def metric_bars(records: list[dict], metric: str, run_ids: list[str], ax: Axes | None = None) -> Axes:
    """Bars of one METRICS entry for the chosen runs (always drawn in RUN_ORDER, whatever the selection order)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    ax = _new_axes(ax)
    chosen = [r for r in records if r["run_id"] in set(run_ids)]
    if not chosen:
        return _empty(ax, "select at least one run" if records else "no results yet: run notebooks 01–04")
    if all(METRICS[metric].value(recs) is None for recs in by_run(chosen).values()):
        return _empty(ax, f"no {metric} in these results")
    return _bars(ax, chosen, METRICS[metric])


def _category_means(recs: list[dict]) -> dict[str, float] | None:
    found = [(r.get("memory") or {}).get("categories") for r in recs]
    found = [c for c in found if c]
    if not found:
        return None
    return {c: sum(f[c] for f in found) / len(found) / MIB for c in MEMORY_CATEGORIES}


def memory_panel(ax: Axes, records: list[dict]) -> Axes:
    """Memory of a training step stacked by category (each at its largest during the step), the measured step peak
    as a black tick, and the prediction made before training as a hollow diamond."""
    groups = _groups(records)
    means = [_category_means(recs) for _, recs, _ in groups]
    if not any(means):  # results without categories: the peak alone
        return _bars(ax, records, METRICS["peak memory"])
    xs = list(range(len(groups)))
    bottom = [0.0] * len(groups)
    for category in MEMORY_CATEGORIES:
        heights = [m[category] if m else 0.0 for m in means]
        ax.bar(xs, heights, bottom=bottom, width=0.7, color=CATEGORY_COLORS[category], edgecolor="#333333",
               linewidth=0.4, label=category)
        bottom = [b + h for b, h in zip(bottom, heights)]
    peaks = [interval(recs, MEASURES["peak memory MiB"]) for _, recs, _ in groups]
    ax.scatter(xs, [_point(p) for p in peaks], marker="_", s=500, color="black", linewidths=2, zorder=5,
               label="measured step peak")
    _error_bars(ax, xs, peaks)
    # The prediction for the measured batch (the same for every seed), averaged like the measured peak beside it.
    predicted = [[p["peak"] for r in recs if (p := (r.get("memory") or {}).get("predicted"))] for _, recs, _ in groups]
    predicted = [sum(p) / len(p) if p else None for p in predicted]
    if any(predicted):
        ax.scatter([x for x, p in zip(xs, predicted) if p], [p / MIB for p in predicted if p], marker="D", s=30,
                   facecolor="white", edgecolor="black", zorder=6, label="predicted before training")
    for x, total in zip(xs, bottom):
        ax.text(x, total, f"{format_number(total)}", ha="center", va="bottom", fontsize=8)
    _tick_labels(ax, groups)
    _headroom(ax, bottom + [_point(p) for p in peaks], False, 1.45)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda k: labels[k] not in MEMORY_CATEGORIES)  # categories first
    ax.legend([handles[k] for k in order], [labels[k] for k in order], fontsize=7, ncols=3, loc="upper center",
              frameon=False)
    ax.set_title("Memory of a training step by category (MiB)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return ax


# ---------------------------------------------------------------- the four-panel comparison

def _subtitle(records: list[dict]) -> str:
    def joined(values):
        return ", ".join(sorted(set(values)))

    dates = sorted(r["finished_at"][:10] for r in records)
    when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    env = [r["environment"] for r in records]
    text = (f"profile {joined(e['profile'] for e in env)} · model {joined(r['model']['preset'] for r in records)} · "
            f"data {joined(r['data']['manifest'] for r in records)} · {joined(e['device'] for e in env)} · {when}")
    missing = missing_runs(records)
    return text + (f" · not run: {', '.join(missing)}" if missing else "")


def _perplexity_panel(ax: Axes, records: list[dict]) -> None:
    """Before (light, hatched) and after (solid, with its 95% interval) side by side: the drop is what training bought."""
    groups = _groups(records)
    width = 0.38
    xs = list(range(len(groups)))
    colors = [run_color(run) for run, _, _ in groups]
    before = [sum(r["eval"]["perplexity_before"] for r in recs) / len(recs) for _, recs, _ in groups]
    after = [interval(recs, MEASURES["perplexity after"]) for _, recs, _ in groups]
    for offset, values, style in ((-width / 2, before, dict(alpha=0.35, hatch="///")),
                                  (width / 2, [_point(v) for v in after], dict(alpha=1.0))):
        bars = ax.bar([x + offset for x in xs], values, width=width, color=colors, edgecolor="#333333", linewidth=0.6,
                      **style)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=2, fontsize=7)
    _error_bars(ax, [x + width / 2 for x in xs], after)
    _tick_labels(ax, groups)
    # Extra headroom: the legend sits in a strip above the tallest bar, never on a bar.
    _headroom(ax, before + [v.high if isinstance(v, Interval) else _point(v) for v in after], False, 1.35)
    # Neutral legend swatches (Patch handles, not extra bars): the colour means the run, the fill means when.
    ax.legend(handles=[Patch(facecolor="#bbbbbb", hatch="///", alpha=0.5, edgecolor="#333333", label="before training"),
                       Patch(facecolor="#555555", edgecolor="#333333", label="after training (95% CI)")],
              fontsize=8, loc="upper center", ncols=2, frameon=False)
    ax.set_title("Held-out perplexity (lower is better)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def comparison_figure(records: list[dict], save_to: Path | None = None) -> Figure:
    """Trainable parameters, peak memory, speed and perplexity, one bar group per run, four panels in a row.

    With save_to, writes the PNG (dpi 150) and an SVG beside it, each atomically.
    """
    fig = Figure(figsize=(17, 4.6), layout="constrained")
    axes = fig.subplots(1, 4)
    if not records:
        titles = [METRICS["trainable params"].title, "Memory of a training step by category (MiB)",
                  METRICS["tokens/s"].title, "Held-out perplexity (lower is better)"]
        for ax, title in zip(axes, titles):
            _empty(ax, "no results")
            ax.set_title(title, fontsize=10)
        fig.suptitle("No valid results yet: run notebooks 01–04, then this one again", fontsize=12)
    else:
        _bars(axes[0], records, METRICS["trainable params"])
        memory_panel(axes[1], records)
        _bars(axes[2], records, METRICS["tokens/s"])
        _perplexity_panel(axes[3], records)
        variants = any(r.get("variant") for r in records)
        fig.suptitle("Full fine-tuning vs LoRA vs QLoRA" + (", and LoRA's variants" if variants else ""), fontsize=13,
                     fontweight="bold")
        fig.supxlabel(_subtitle(records), fontsize=9, color="#444444")
    if save_to is not None:
        save_figure(fig, Path(save_to))
    return fig


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _save_one(fig: Figure, path: Path, fmt: str, **kwargs) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{fmt}", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format=fmt, bbox_inches="tight", **kwargs)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the figure should get ordinary permissions
        os.replace(tmp, path)  # readers see the old file or the new one, never half a file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure(fig: Figure, path: Path) -> tuple[Path, Path]:
    """PNG at dpi 150 for screens and the README, SVG beside it for slides and print."""
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    svg = path.with_suffix(".svg")
    _save_one(fig, path, "png", dpi=150)
    _save_one(fig, svg, "svg", metadata={"Date": None})  # no timestamp: same records, same file
    return path, svg


# ---------------------------------------------------------------- single-axis plots

def loss_curves(records: list[dict], ax: Axes | None = None) -> Axes:
    """Training loss vs step: each run's mean over seeds as a line, each seed as a faint line behind it."""
    ax = _new_axes(ax)
    drawn = 0
    for run_id, recs, _ in _groups(records):
        logs = [r["training"]["log"] for r in recs if r["training"]["log"]]
        if not logs:
            continue
        color = run_color(run_id)
        by_step: dict[int, list[float]] = {}
        for log in logs:
            for entry in log:
                by_step.setdefault(entry["step"], []).append(entry["loss"])
            if len(logs) > 1:
                ax.plot([e["step"] for e in log], [e["loss"] for e in log], color=color, alpha=0.25, linewidth=0.8)
        steps = sorted(by_step)
        ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], label=run_id, color=color,
                marker="o" if len(steps) <= 30 else None, markersize=3, linewidth=1.5)
        drawn += 1
    if not drawn:
        return _empty(ax, "no training logs yet: run notebooks 01–04")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("Training loss (mean over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return ax


def _scatter_runs(ax: Axes, points: list[tuple[str, float, Interval | None]], xlog: bool) -> None:
    """Runs as dots with vertical 95% whiskers; runs sharing an x get their labels on alternate sides."""
    placed: list[float] = []
    for run_id, x, y in points:
        ax.scatter([x], [_point(y)], s=60, color=run_color(run_id), edgecolor="#333333", zorder=3)
        _error_bars(ax, [x], [y])
        near = (lambda a, b: abs(math.log10(a) - math.log10(b)) < 0.06) if xlog else (lambda a, b: abs(a - b) < 1e-9)
        twins = sum(1 for other in placed if near(x, other))
        placed.append(x)
        left = twins % 2 == 1
        # on a light backdrop above the whiskers: runs with equal memory stack their error bars through the labels
        ax.annotate(run_id, (x, _point(y)), textcoords="offset points", xytext=(-8 if left else 8, 0),
                    ha="right" if left else "left", va="center", fontsize=8, zorder=6,
                    bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})


def perplexity_vs_params(records: list[dict], ax: Axes | None = None) -> Axes:
    """What each run bought (perplexity after, mean ± 95% interval) for what it trained (trainable parameters, log x)."""
    ax = _new_axes(ax)
    groups = _groups(records)
    if not groups:
        return _empty(ax, "no results yet: run notebooks 01–04")
    points = [(run, recs[0]["params"]["trainable"], interval(recs, MEASURES["perplexity after"]))
              for run, recs, _ in groups]
    _scatter_runs(ax, points, xlog=True)
    base = next((recs[0] for _, recs, _ in groups if recs[0]["method"] != "qlora"), None)
    if base is not None:  # the untrained full-precision model: the line every run should get below
        ax.axhline(base["eval"]["perplexity_before"], color="#888888", linestyle="--", linewidth=1,
                   label=f"base model before training ({base['eval']['perplexity_before']:.2f})")
        ax.legend(fontsize=8, frameon=False, loc="best")
    ax.set_xscale("log")
    xs = [x for _, x, _ in points]
    ax.set_xlim(min(xs) / 4, max(xs) * 6)  # room on both sides for the labels
    ax.xaxis.set_major_formatter(FuncFormatter(_count_tick))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("held-out perplexity after training")
    ax.set_title("Perplexity vs trainable parameters", fontsize=10)
    ax.grid(alpha=0.3, which="major")
    return ax


def learning_vs_forgetting(records: list[dict], ax: Axes | None = None) -> Axes:
    """Learning (held-out perplexity after, x) against forgetting (general-text perplexity after, y), each run's mean
    with its 95% interval; dashed lines mark the base model on both, and an arrow joins a 4-bit run to its own 4-bit
    base. Down and left is better."""
    ax = _new_axes(ax)
    groups = [(run, recs) for run, recs, _ in _groups(records) if any(r.get("forgetting") for r in recs)]
    if not groups:
        return _empty(ax, "no general-text (forgetting) measurements in these results")
    points = []
    for run, recs in groups:
        x = interval(recs, MEASURES["perplexity after"])
        y = interval(recs, MEASURES["general-text after"])
        points.append((run, x.mean, y))
        if isinstance(x, Interval) and x.method != "single":
            ax.errorbar([x.mean], [_point(y)], xerr=[[x.mean - x.low], [x.high - x.mean]], fmt="none",
                        ecolor="#222222", elinewidth=1, capsize=3, zorder=4)
    _scatter_runs(ax, points, xlog=False)
    for run, recs in groups:  # a 4-bit run starts from its own base, not the dashed one: show where it started
        if recs[0]["method"] == "qlora":
            start = (_point(interval(recs, MEASURES["perplexity before"])),
                     _point(interval(recs, MEASURES["general-text before"])))
            end = next((x, _point(y)) for r, x, y in points if r == run)
            ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "color": run_color(run), "lw": 1})
            ax.scatter(*start, s=60, facecolor="none", edgecolor=run_color(run), zorder=3,
                       label=f"{run}'s own 4-bit base before training")
    base = next((recs[0] for _, recs in groups if recs[0]["method"] != "qlora"), None)
    if base is not None:
        ax.axvline(base["eval"]["perplexity_before"], color="#888888", linestyle="--", linewidth=1)
        ax.axhline(base["forgetting"]["perplexity_before"], color="#888888", linestyle="--", linewidth=1,
                   label="base model before training")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, frameon=False, loc="best")
    ax.set_xlabel("held-out perplexity after training (learning: lower is better)")
    ax.set_ylabel("general-text perplexity after (forgetting: lower is better)")
    ax.set_title("What each method learned vs what it forgot", fontsize=10)
    ax.grid(alpha=0.3)
    return ax


def _pareto_panel(ax: Axes, records: list[dict], keys: tuple[str, str]) -> Axes:
    """One Pareto panel: each run's mean with its 95% intervals on both axes, the runs no other run dominates ringed
    and joined by the frontier line, the dominated ones paler. Dominance is on the means (helpers.measures.pareto)."""
    x_key, y_key = keys
    frontier = pareto(records, keys)
    if not frontier.intervals:
        return _empty(ax, "no results yet: run notebooks 01–04")
    points = []
    for run, (x, y) in frontier.intervals.items():
        points.append((run, x.mean, y))
        if x.method != "single":
            ax.errorbar([x.mean], [y.mean], xerr=[[x.mean - x.low], [x.high - x.mean]], fmt="none", ecolor="#222222",
                        elinewidth=1, capsize=3, zorder=4)
    _scatter_runs(ax, points, xlog=False)
    dominated = {d.run for d in frontier.dominated}
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]  # one per run, in the order drawn
    for dot, (run, _, _) in zip(dots, points):
        dot.set_alpha(0.35 if run in dominated else 1.0)
    front = sorted(frontier.front, key=lambda run: frontier.intervals[run][0].mean)
    xs = [frontier.intervals[run][0].mean for run in front]
    ys = [frontier.intervals[run][1].mean for run in front]
    ax.plot(xs, ys, color="#444444", linestyle="--", linewidth=1, zorder=2, label="Pareto frontier")
    ax.scatter(xs, ys, s=200, facecolors="none", edgecolors="black", linewidths=1.5, zorder=5,
               label="not dominated (on the frontier)")
    ax.legend(fontsize=8, frameon=False, loc="best")
    better = ("lower" if MEASURES[y_key].lower_is_better else "higher",
              "left" if MEASURES[x_key].lower_is_better else "right")
    ax.set_xlabel(MEASURES[x_key].title)
    ax.set_ylabel(MEASURES[y_key].title)
    ax.set_title(f"{y_key} vs {x_key}: {better[0]} and to the {better[1]} is better", fontsize=10)
    ax.grid(alpha=0.3)
    return ax


# Where a run label may go instead, tried in this order (offset points from its dot): right, left, then a line above
# or below on either side.
_LABEL_SPOTS = [(8, 0), (-8, 0), (8, 10), (-8, 10), (8, -10), (-8, -10), (8, 20), (-8, 20), (8, -20), (-8, -20)]


def _separate_labels(fig: Figure) -> None:
    """Move run labels that cover one another (runs with nearly equal values on both axes) to the first free spot.
    Done on the laid-out figure: only there do labels, sized in points, have their final places."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes:
        placed = []
        for label in (t for t in ax.texts if t.get_text() in RUN_ORDER):
            for dx, dy in _LABEL_SPOTS:
                label.set_position((dx, dy))
                label.set_horizontalalignment("left" if dx > 0 else "right")
                box = label.get_window_extent(renderer)
                if not any(box.overlaps(other) for other in placed):
                    break
            placed.append(box)


def pareto_figure(records: list[dict], save_to: Path | None = None) -> Figure:
    """Held-out perplexity after training against step-peak memory and against tokens/s (measures.PARETO_PAIRS), one
    panel each, the non-dominated runs marked. With save_to, writes the PNG and SVG like comparison_figure."""
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    for ax, keys in zip(fig.subplots(1, len(PARETO_PAIRS)), PARETO_PAIRS):
        _pareto_panel(ax, records, keys)
    if records:
        fig.suptitle("Pareto frontiers: which runs no other run beats on both axes", fontsize=13, fontweight="bold")
        fig.supxlabel(_subtitle(records), fontsize=9, color="#444444")
        _separate_labels(fig)
    if save_to is not None:
        save_figure(fig, Path(save_to))
    return fig


__all__ = ["CATEGORY_COLORS", "METRICS", "RUN_COLORS", "RUN_ORDER", "comparison_figure", "learning_vs_forgetting",
           "loss_curves", "memory_panel", "metric_bars", "pareto_figure", "perplexity_vs_params", "run_color",
           "save_figure"]
