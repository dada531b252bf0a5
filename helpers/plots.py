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
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from .results import RUN_ORDER, run_sort_key
from .tables import MIB, format_count, format_number, missing_runs

RUN_COLORS: dict[str, str] = {
    # Full fine-tuning stands apart (vermillion); LoRA ranks are one blue family, darker = larger rank, so the
    # rank reads as an ordered quantity; QLoRA (LoRA r16 on a 4-bit base) is a separate green. Colour-blind safe.
    "full": "#D55E00",
    "lora-r8": "#9ECAE1",
    "lora-r16": "#4292C6",
    "lora-r32": "#08519C",
    "qlora": "#009E73",
}
FALLBACK_COLOR = "#999999"

MEMORY_KINDS = {"cuda_max_allocated": "CUDA max allocated", "cpu_rss_sampled": "CPU RSS, sampled"}


def run_color(run_id: str) -> str:
    return RUN_COLORS.get(run_id, FALLBACK_COLOR)


def _ordered(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda r: run_sort_key(r["run_id"]))


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
    value: Callable[[dict], float]
    label: Callable[[float], str]
    log: bool = False
    lower_is_better: bool = False


METRICS: dict[str, Metric] = {
    "trainable params": Metric("Trainable parameters (count, log scale)", lambda r: r["params"]["trainable"],
                               format_count, log=True),
    "peak memory": Metric("Peak training memory (MiB)", lambda r: r["training"]["peak_memory_bytes"] / MIB,
                          format_number, lower_is_better=True),
    "tokens/s": Metric("Training speed (real tokens/s)", lambda r: r["training"]["tokens_per_second"],
                       format_number),
    "perplexity after": Metric("Held-out perplexity after training (lower is better)",
                               lambda r: r["eval"]["perplexity_after"], lambda v: f"{v:.2f}", lower_is_better=True),
    "artifact size": Metric("Saved artifact (MiB)", lambda r: r["artifact"]["bytes"] / MIB, format_number,
                            log=True),
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


def _bars(ax: Axes, records: list[dict], metric: Metric) -> Axes:
    """One bar per run in RUN_ORDER, coloured by run, its value written on top."""
    records = _ordered(records)
    names = [r["run_id"] for r in records]
    values = [metric.value(r) for r in records]
    bars = ax.bar(range(len(records)), values, color=[run_color(n) for n in names], edgecolor="#333333",
                  linewidth=0.6, width=0.7)
    ax.bar_label(bars, labels=[metric.label(v) for v in values], padding=2, fontsize=8)
    ax.set_xticks(range(len(records)), names, rotation=25, ha="right", rotation_mode="anchor")
    _headroom(ax, values, metric.log)
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
        return _empty(ax, "select at least one run" if records else "no results yet: run notebooks 01–03")
    return _bars(ax, chosen, METRICS[metric])


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
    """Before (light, hatched) and after (solid) side by side: the drop is what training bought."""
    records = _ordered(records)
    width = 0.38
    xs = range(len(records))
    for offset, key, style in ((-width / 2, "perplexity_before", dict(alpha=0.35, hatch="///")),
                               (width / 2, "perplexity_after", dict(alpha=1.0))):
        values = [r["eval"][key] for r in records]
        bars = ax.bar([x + offset for x in xs], values, width=width, color=[run_color(r["run_id"]) for r in records],
                      edgecolor="#333333", linewidth=0.6, **style)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=2, fontsize=7)
    ax.set_xticks(list(xs), [r["run_id"] for r in records], rotation=25, ha="right", rotation_mode="anchor")
    # Extra headroom: the legend sits in a strip above the tallest bar, never on a bar.
    _headroom(ax, [max(r["eval"]["perplexity_before"], r["eval"]["perplexity_after"]) for r in records], False, 1.35)
    # Neutral legend swatches (Patch handles, not extra bars): the colour means the run, the fill means when.
    ax.legend(handles=[Patch(facecolor="#bbbbbb", hatch="///", alpha=0.5, edgecolor="#333333", label="before training"),
                       Patch(facecolor="#555555", edgecolor="#333333", label="after training")],
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
        titles = [METRICS["trainable params"].title, METRICS["peak memory"].title, METRICS["tokens/s"].title,
                  "Held-out perplexity (lower is better)"]
        for ax, title in zip(axes, titles):
            _empty(ax, "no results")
            ax.set_title(title, fontsize=10)
        fig.suptitle("No valid results yet: run notebooks 01–03, then this one again", fontsize=12)
    else:
        _bars(axes[0], records, METRICS["trainable params"])
        _bars(axes[1], records, METRICS["peak memory"])
        kinds = sorted({MEMORY_KINDS.get(r["training"]["memory_kind"], r["training"]["memory_kind"]) for r in records})
        axes[1].set_title(f"Peak training memory (MiB)\n{' / '.join(kinds)}, above baseline", fontsize=10)
        _bars(axes[2], records, METRICS["tokens/s"])
        _perplexity_panel(axes[3], records)
        fig.suptitle("Full fine-tuning vs LoRA vs QLoRA", fontsize=13, fontweight="bold")
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
    """Training loss vs step, all runs on one axis."""
    ax = _new_axes(ax)
    drawn = 0
    for r in _ordered(records):
        log = r["training"]["log"]
        if not log:
            continue
        steps = [entry["step"] for entry in log]
        ax.plot(steps, [entry["loss"] for entry in log], label=r["run_id"], color=run_color(r["run_id"]),
                marker="o" if len(log) <= 30 else None, markersize=3, linewidth=1.5)
        drawn += 1
    if not drawn:
        return _empty(ax, "no training logs yet: run notebooks 01–03")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("Training loss", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return ax


def perplexity_vs_params(records: list[dict], ax: Axes | None = None) -> Axes:
    """What each run bought (perplexity after) for what it trained (trainable parameters, log x)."""
    ax = _new_axes(ax)
    records = _ordered(records)
    if not records:
        return _empty(ax, "no results yet: run notebooks 01–03")
    placed: list[float] = []
    for r in records:
        x, y = r["params"]["trainable"], r["eval"]["perplexity_after"]
        ax.scatter([x], [y], s=60, color=run_color(r["run_id"]), edgecolor="#333333", zorder=3)
        # QLoRA has exactly LoRA r16's trainable parameters: runs sharing an x get their labels on alternate sides.
        twins = sum(1 for other in placed if abs(math.log10(x) - math.log10(other)) < 0.06)
        placed.append(x)
        left = twins % 2 == 1
        ax.annotate(r["run_id"], (x, y), textcoords="offset points", xytext=(-8 if left else 8, 0),
                    ha="right" if left else "left", va="center", fontsize=8)
    base = next((r for r in records if r["method"] != "qlora"), None)
    if base is not None:  # the untrained full-precision model: the line every run should get below
        ax.axhline(base["eval"]["perplexity_before"], color="#888888", linestyle="--", linewidth=1,
                   label=f"base model before training ({base['eval']['perplexity_before']:.2f})")
        ax.legend(fontsize=8, frameon=False, loc="best")
    ax.set_xscale("log")
    xs = [r["params"]["trainable"] for r in records]
    ax.set_xlim(min(xs) / 4, max(xs) * 6)  # room on both sides for the labels
    ax.xaxis.set_major_formatter(FuncFormatter(_count_tick))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("held-out perplexity after training")
    ax.set_title("Perplexity vs trainable parameters", fontsize=10)
    ax.grid(alpha=0.3, which="major")
    return ax


__all__ = ["RUN_COLORS", "RUN_ORDER", "METRICS", "run_color", "comparison_figure", "save_figure", "loss_curves",
           "perplexity_vs_params", "metric_bars"]
