"""The comparison: tables with intervals, the four-panel figure, the reading notes, the blind rating, the metric
explorer and notebook 05, on records built by tests/records.py (schema-valid) plus a corrupt and an older-schema file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from helpers import formatting, measures, plots, results, statistics, tables, widgets  # noqa: E402
from helpers import notes as lab_notes  # noqa: E402
from records import CATEGORIES, LORA_TRAINABLE, MIB, NUMBERS, PROMPTS, TOTAL, make_record, per_example  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "05_compare.ipynb"


def _answers_without_run_ids(records: list[dict]) -> list[dict]:
    """The factory's answers name their run (handy elsewhere); for the blindness test they must not."""
    return [make_record(r["run_id"], generations=[{"prompt": p, "before": "b", "after": f"neutral text {i}"}
                                                  for i, p in enumerate(PROMPTS)]) for r in records]


@pytest.fixture
def results_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    # Written in reverse order: load_all and every view must restore RUN_ORDER themselves.
    for run_id in reversed(results.CORE_RUNS):
        results.write_atomic(make_record(run_id), folder / results.file_name(run_id, 42))
    (folder / "broken.json").write_text("{ this is not json")
    old = make_record("lora-r8")
    old["schema_version"] = 1  # what an earlier version of the lab wrote
    (folder / "old-run.json").write_text(json.dumps(old))
    return folder


@pytest.fixture
def loaded(results_folder):
    return results.load_all(results_folder)


def three_seeds(run_id: str, perplexities: list[float], speeds: list[float] | None = None) -> list[dict]:
    """One record per seed (42, 1, 2) with the given perplexity after (and tokens/s)."""
    speeds = speeds or [NUMBERS[run_id][1]] * 3
    return [make_record(run_id, seed, eval={"perplexity_after": p, "per_example_after": per_example(p)},
                        training={"tokens_per_second": v}) for seed, p, v in zip((42, 1, 2), perplexities, speeds)]


# ---------------------------------------------------------------- loading and tables

def test_factory_records_are_schema_valid():
    for run_id in results.CORE_RUNS:
        assert results.problems(make_record(run_id)) == []


def test_load_all_lists_bad_and_older_files_with_reasons(loaded):
    records, left_out = loaded
    assert [r["run_id"] for r in records] == list(results.CORE_RUNS)
    reasons = dict(left_out)
    assert set(reasons) == {"broken.json", "old-run.json"}
    assert "JSON" in reasons["broken.json"]
    assert reasons["old-run.json"].startswith("older schema")
    report = lab_notes.loading_report(records, left_out, "x")
    assert "broken.json" in report and "Older schema (1 file(s)" in report and "old-run.json" in report


def test_summary_frame_values(loaded):
    records, _ = loaded
    frame = tables.summary_frame(list(reversed(records)))
    assert list(frame.index) == list(results.CORE_RUNS)
    assert frame.index.name == "run"
    assert list(frame.columns) == ["method", "rank", "seeds", "trainable params", "trainable %", "artifact MiB",
                                   "peak memory MiB", "tokens/s", "perplexity before", "perplexity after",
                                   "general-text before", "general-text after", "repeated 3-grams % before",
                                   "repeated 3-grams % after"]
    assert frame.loc["full", "trainable params"] == TOTAL
    assert frame.loc["lora-r8", "trainable params"] == LORA_TRAINABLE[8]
    assert frame["rank"].isna().tolist() == [True, False, False, False, False]
    assert frame.loc["lora-r32", "rank"] == 32 and frame.loc["qlora", "rank"] == 16
    assert frame.loc["full", "peak memory MiB"].mean == pytest.approx(2400.0, abs=1e-3)
    assert frame.loc["qlora", "tokens/s"].mean == pytest.approx(80.0)
    after = frame.loc["lora-r16", "perplexity after"]
    assert after.mean == pytest.approx(4.2) and after.method == "bootstrap" and after.low < 4.2 < after.high
    assert frame.loc["full", "seeds"] == 1
    assert frame.loc["lora-r8", "artifact MiB"] == pytest.approx(9.5, abs=1e-3)
    assert frame.loc["full", "general-text after"].mean == pytest.approx(13.0)
    assert "human mean" not in frame.columns
    html = frame._repr_html_()
    assert "134.5M" in html and "2.44M" in html and "(n=1)" in html  # formatted for display, stored raw


def test_summary_frame_with_seeds_shows_t_intervals():
    records = three_seeds("lora-r8", [4.0, 4.2, 4.4]) + three_seeds("full", [3.0, 3.1, 2.9])
    frame = tables.summary_frame(records)
    r8 = frame.loc["lora-r8", "perplexity after"]
    assert (r8.method, r8.n) == ("t", 3)
    assert r8.mean == pytest.approx(4.2)
    assert r8.half_width == pytest.approx(statistics.t_quantile(0.975, 2) * 0.2 / 3 ** 0.5, rel=1e-6)
    assert frame.loc["full", "seeds"] == 3
    assert "4.20 ± 0.50" in frame.formatted().loc["lora-r8", "perplexity after"]


def test_worse_than_before_is_flagged_not_averaged():
    good = three_seeds("lora-r8", [4.0, 4.2, 4.4])
    bad = make_record("lora-r8", 3, eval={"perplexity_after": 90.0, "per_example_after": per_example(90.0)},
                      status={"worse_than_before": True, "notes": ["rose"]})
    frame = tables.summary_frame(good + [bad])
    assert frame.loc["lora-r8", "perplexity after"].mean == pytest.approx(4.2)
    assert frame.loc["lora-r8", "seeds"] == 3 and frame.loc["lora-r8", "excluded"] == "1 worse than before"
    notes = " ".join(lab_notes.reading_notes(good + [bad]))
    assert "lora-r8 (seed 3) ended worse than it started" in notes and "left out of every mean" in notes
    assert "Flagged: lora-r8 seed 3" in lab_notes.loading_report(good + [bad], [], "x")
    fig = plots.comparison_figure(good + [bad])
    assert [t.get_text() for t in fig.axes[3].get_xticklabels()] == ["lora-r8"]  # its usable seeds still plot


def test_a_run_whose_skipped_updates_changed_its_budget_is_flagged_not_averaged():
    """The fp16 loss scaler skipped an update after training had started: the record is flagged like a run that
    ended worse (listed, left out of every mean); skips before the first update are only noted."""
    good = three_seeds("lora-r8", [4.0, 4.2, 4.4])
    skipped = make_record("lora-r8", 3, eval={"perplexity_after": 3.0, "per_example_after": per_example(3.0)},
                          training={"skipped_steps": 1, "skipped_at": [2], "trained_tokens": 2000},
                          status={"worse_than_before": False, "budget_changed": True, "notes": ["skipped"]})
    frame = tables.summary_frame(good + [skipped])
    assert frame.loc["lora-r8", "perplexity after"].mean == pytest.approx(4.2), "the flagged seed is not averaged in"
    assert frame.loc["lora-r8", "excluded"] == "1 budget changed by skipped updates"
    assert measures.flagged(good + [skipped]) == [skipped] and measures.usable([skipped]) == []
    notes = " ".join(lab_notes.reading_notes(good + [skipped]))
    assert ("lora-r8 (seed 3): the fp16 loss scaler skipped 1 of its 3 updates (step 2) after training had started or "
            "in every step: it trained 2,000 of its 3,000 tokens") in notes and "left out of every mean" in notes
    assert "different numbers of tokens (2.00k, 3.00k)" in notes, "tokens trained, not tokens computed"
    report = lab_notes.loading_report(good + [skipped], [], "x")
    assert "Flagged: lora-r8 seed 3: the fp16 loss scaler skipped 1 of its 3 updates (step 2)" in report
    assert skipped["status"]["notes"] != [] and lab_notes.loading_report([skipped], [], "x").count("loss scaler") == 1

    first = make_record("lora-r8", 3, training={"skipped_steps": 1, "skipped_at": [1], "trained_tokens": 2000},
                        status={"worse_than_before": False, "budget_changed": False, "notes": []})
    assert measures.usable([first]) == [first]
    assert ("lora-r8 (seed 3): the fp16 loss scaler skipped its first 1 update while finding its scale, before any "
            "weight moved: it trained 2,000 of its 3,000 tokens (tolerated, README).") in \
        " ".join(lab_notes.reading_notes(good + [first]))


def test_reading_notes_say_within_noise_or_name_the_winner():
    # r32 vs r16 overlap (within noise); full vs r32 are far apart (full wins); paired by seed.
    records = (three_seeds("full", [3.0, 3.1, 2.9]) + three_seeds("lora-r32", [4.0, 4.3, 3.8])
               + three_seeds("lora-r16", [4.1, 4.2, 3.9]))
    notes = lab_notes.reading_notes(records)
    assert any(n.startswith("full beats lora-r32 on held-out perplexity after training by 1.03") for n in notes), notes
    assert any(n.startswith("lora-r32 and lora-r16 are within noise") for n in notes), notes
    assert not any("lora-r32 beats" in n or "lora-r16 beats" in n for n in notes)


def test_one_seed_uses_a_bootstrap_over_held_out_examples(loaded):
    records, _ = loaded
    notes = " ".join(lab_notes.reading_notes(records))
    assert "One training seed per run" in notes and "bootstrap over 20 held-out examples" in notes
    diff = measures.difference(records, "full", "lora-r8", measures.MEASURES["perplexity after"])
    assert diff.method == "bootstrap" and diff.mean == pytest.approx(3.0 - 4.5, abs=1e-9)


def test_memory_frame_and_notes(loaded):
    records, _ = loaded
    frame = tables.memory_frame(records)
    for run_id, cats in CATEGORIES.items():
        for name, mib in zip(tables.MEMORY_CATEGORIES, cats):
            assert frame.loc[run_id, f"{name} MiB"] == pytest.approx(mib, abs=1e-3)
        assert frame.loc[run_id, "total MiB"] == pytest.approx(sum(cats), abs=1e-2)
        assert frame.loc[run_id, "prediction error %"] == pytest.approx(2.0, abs=0.1)
    notes = " ".join(lab_notes.reading_notes(records))
    assert "Full fine-tuning pays 513.0 MiB for gradients and 1.00 GiB for AdamW state" in notes
    assert "lora-r8 pays 9.30 MiB and 18.6 MiB" in notes
    assert "The 4-bit base stores the weights in 170.0 MiB instead of 532.0 MiB" in notes


def test_memory_frame_compares_each_seeds_prediction_with_that_seed():
    """Seeds measure steps of different lengths: a prediction exact for each seed is 0% off, whatever the spread."""
    def seed(s: int, mib: float) -> dict:
        categories = {c: int(mib * MIB) if c == "activations" else 0 for c in tables.MEMORY_CATEGORIES}
        return make_record("lora-r8", seed=s, memory={"categories": categories, "step_peak_bytes": int(mib * MIB),
                                                      "predicted": {"total": int(mib * MIB), "peak": int(mib * MIB)}})
    frame = tables.memory_frame([seed(1, 800.0), seed(2, 1200.0), seed(42, 1600.0)])
    assert frame.loc["lora-r8", "prediction error %"] == pytest.approx(0.0, abs=1e-6)
    assert frame.loc["lora-r8", "predicted total MiB"] == pytest.approx(1200.0, abs=1e-3)


def test_generations_frame_base_comes_from_full_precision():
    records = [make_record("qlora", generations=[{"prompt": "p", "before": "4-bit base", "after": "q"}]),
               make_record("lora-r8", generations=[{"prompt": "p", "before": "fp base", "after": "l"}])]
    frame = tables.generations_frame(records)
    assert list(frame.columns) == ["base", "lora-r8", "qlora"]
    assert frame.loc["p"].tolist() == ["fp base", "l", "q"]
    only_q = tables.generations_frame(records[:1])
    assert only_q.loc["p", "base"] == "4-bit base"  # no full-precision run: fall back to what there is


@pytest.mark.parametrize("n, text", [(999, "999"), (811_000, "811k"), (2_442_240, "2.44M"), (134_515_008, "134.5M"),
                                     (999_999, "1.00M"), (None, "—")])
def test_format_count(n, text):
    assert formatting.format_count(n) == text


@pytest.mark.parametrize("n, text", [(512, "512 B"), (1536, "1.50 KiB"), (int(18.7 * MIB), "18.7 MiB"),
                                     (538_091_442, "513.2 MiB"), (2_491_981_824, "2.32 GiB")])
def test_format_bytes(n, text):
    assert formatting.format_bytes(n) == text


def test_reading_notes_with_all_some_and_no_runs(loaded):
    records, _ = loaded
    notes = " ".join(lab_notes.reading_notes(records))
    assert "Lowest mean held-out perplexity after training: full (3.00" in notes
    assert "lora-r8 trains 55.1× fewer parameters" in notes  # 134515008 / 2442240 = 55.08
    assert "QLoRA vs LoRA r16" in notes and "(0.75×)" in notes and "(0.67×)" in notes
    partial = [r for r in records if r["run_id"] in ("lora-r8", "qlora")]
    notes = " ".join(lab_notes.reading_notes(partial))
    assert "Missing from this comparison: full, lora-r16, lora-r32" in notes
    assert "lora-r16 missing" in notes
    empty = " ".join(lab_notes.reading_notes([]))
    assert "no valid results" in empty and "01_full_finetune" in empty
    assert "Cannot compare" in lab_notes.compare_sentence(partial, "qlora", "lora-r16")


# ---------------------------------------------------------------- plots

def _bar_heights(ax) -> list[float]:
    return [p.get_height() for p in ax.patches]


def test_comparison_figure_four_panels_in_run_order(loaded, tmp_path):
    records, _ = loaded
    png = tmp_path / "out" / "comparison.png"
    fig = plots.comparison_figure(list(reversed(records)), save_to=png)
    axes = fig.axes
    assert len(axes) == 4
    for ax in axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == list(results.CORE_RUNS)
    assert axes[0].get_yscale() == "log"
    assert _bar_heights(axes[0]) == [TOTAL, *LORA_TRAINABLE.values(), LORA_TRAINABLE[16]]
    # memory: five stacked categories per run, in category order, summing to each run's total
    heights = _bar_heights(axes[1])
    assert len(heights) == 5 * 5
    for k, run_id in enumerate(results.CORE_RUNS):
        assert [heights[c * 5 + k] for c in range(5)] == pytest.approx(CATEGORIES[run_id], abs=1e-3)
    assert [t.get_text() for t in axes[1].get_legend().get_texts()][:5] == list(tables.MEMORY_CATEGORIES)
    assert _bar_heights(axes[2]) == pytest.approx([NUMBERS[r][1] for r in results.CORE_RUNS])
    befores, afters = _bar_heights(axes[3])[:5], _bar_heights(axes[3])[5:]
    assert befores == pytest.approx([7.0, 7.0, 7.0, 7.0, 7.5])
    assert afters == pytest.approx([NUMBERS[r][2] for r in results.CORE_RUNS])
    assert [p.get_facecolor()[:3] for p in axes[2].patches] == \
        [matplotlib.colors.to_rgb(plots.RUN_COLORS[r]) for r in results.CORE_RUNS]
    assert "profile cpu" in fig.get_supxlabel() and "2026-11-20" in fig.get_supxlabel()
    assert png.stat().st_size > 1000 and png.with_suffix(".svg").stat().st_size > 1000
    assert not [p for p in png.parent.iterdir() if p.name.startswith(".")], "no temp files left behind"


def test_error_bars_follow_the_intervals():
    records = three_seeds("lora-r8", [4.0, 4.2, 4.4]) + three_seeds("full", [3.0, 3.1, 2.9])
    fig = plots.comparison_figure(records)
    ax = fig.axes[3]
    whiskers = [seg for coll in ax.collections for seg in coll.get_segments()]
    spans = sorted(round(float(seg[1][1] - seg[0][1]), 6) for seg in whiskers)
    expected = sorted(round(2 * measures.interval(r, measures.MEASURES["perplexity after"]).half_width, 6)
                      for r in measures.by_run(records).values())
    assert spans == pytest.approx(expected, abs=1e-6)


def test_figures_survive_missing_and_no_runs(loaded, tmp_path):
    records, _ = loaded
    fig = plots.comparison_figure([r for r in records if r["run_id"] in ("full", "qlora")])
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["full", "qlora"]
    assert "not run: lora-r8, lora-r16, lora-r32" in fig.get_supxlabel()
    assert len(plots.comparison_figure([]).axes) == 4
    import matplotlib.pyplot as plt

    try:
        for draw in (plots.loss_curves, plots.perplexity_vs_params, plots.learning_vs_forgetting):
            assert draw([]) is not None
        ax = plots.loss_curves(records)
        assert [line.get_label() for line in ax.get_lines()] == list(results.CORE_RUNS)
        assert [line.get_color() for line in ax.get_lines()] == [plots.RUN_COLORS[r] for r in results.CORE_RUNS]
        ax = plots.perplexity_vs_params(records)
        assert ax.get_xscale() == "log"
        assert [t.get_text() for t in ax.texts] == list(results.CORE_RUNS)
        ax = plots.learning_vs_forgetting(records)
        from matplotlib.collections import PathCollection
        offsets = [tuple(map(float, c.get_offsets()[0])) for c in ax.collections if isinstance(c, PathCollection)]
        assert (pytest.approx(3.0), pytest.approx(13.0)) in offsets  # full: learned most, forgot most
        assert (pytest.approx(7.5), pytest.approx(12.0)) in offsets  # qlora's own 4-bit base, where its arrow starts
        assert "qlora's own 4-bit base before training" in ax.get_legend_handles_labels()[1]
    finally:
        plt.close("all")


# ---------------------------------------------------------------- blind rating

def test_rating_session_is_blind_and_deterministic(loaded):
    records = _answers_without_run_ids(loaded[0])
    a, b = widgets.RatingSession(records, seed=3), widgets.RatingSession(list(reversed(records)), seed=3)
    assert len(a) == len(records) * len(PROMPTS)
    assert [i.id for i in a.items] == [i.id for i in b.items]
    assert [i.answer for i in a.items] == [i.answer for i in b.items]
    other = widgets.RatingSession(records, seed=4)
    assert [i.answer for i in other.items] != [i.answer for i in a.items]
    for item in a.items:
        assert not any(run_id in item.id for run_id in results.CORE_RUNS)
        assert not hasattr(item, "run_id")
    widget = widgets.rating_widget(a, Path("unused.json"))
    for _ in range(len(a)):
        text = widget.displayed_text()
        assert not re.search(r"\b(full|lora|qlora|lora-r\d+)\b", text, re.IGNORECASE), text
        widget.on_next()


def test_rate_rejects_out_of_range_scores(loaded):
    session = widgets.RatingSession(loaded[0], seed=0)
    item = session.items[0].id
    for bad in (6, -1, 2.5, True, "3"):
        with pytest.raises(ValueError):
            session.rate(item, bad)
    with pytest.raises(ValueError):
        session.rate("no-such-item", 3)
    session.rate(item, 0)
    session.rate(item, 5)
    assert session.ratings == {item: 5}


def test_submit_load_aggregate_and_table(loaded, tmp_path):
    records = loaded[0]
    session = widgets.RatingSession(records, seed=1)
    # The factory's answers end with their run id, so the test knows which run each shuffled item belongs to.
    wanted = {"full": [5, 3], "lora-r8": [2, 2], "qlora": [4, 1]}
    given: dict[str, int] = {run: 0 for run in wanted}
    for item in session.items:
        run = item.answer.rsplit(" ", 1)[1]
        if run in wanted:
            session.rate(item.id, wanted[run][given[run]])
            given[run] += 1
    path = tmp_path / "ratings" / "human_eval.json"
    written = session.submit(path)
    assert written["seed"] == 1 and len(written["ratings"]) == 6
    back = widgets.load_human_eval(path)
    assert back == written
    means = widgets.aggregate(back)
    assert list(means) == ["full", "lora-r8", "qlora"]
    assert means == {"full": {"mean": 4.0, "n": 2}, "lora-r8": {"mean": 2.0, "n": 2}, "qlora": {"mean": 2.5, "n": 2}}
    frame = tables.summary_frame(records, back)
    assert frame.loc["full", "human mean"] == pytest.approx(4.0)
    assert frame.loc["qlora", "human mean"] == pytest.approx(2.5)
    assert frame.loc["qlora", "human n"] == 2 and frame.loc["lora-r16", "human n"] == 0
    assert results.load_all(path.parent) == ([], []), "human_eval.json is not mistaken for a run"


def test_load_human_eval_missing_and_corrupt(tmp_path):
    assert widgets.load_human_eval(tmp_path / "human_eval.json") is None
    broken = tmp_path / "human_eval.json"
    broken.write_text("[1, 2")
    with pytest.raises(ValueError, match="human_eval.json"):
        widgets.load_human_eval(broken)
    broken.write_text(json.dumps({"schema_version": 1, "rated_at": "now", "seed": 0,
                                  "ratings": [{"run_id": "full", "prompt": "p", "score": 9}]}))
    with pytest.raises(ValueError, match=r"human_eval.json.*(rated_at|score)"):
        widgets.load_human_eval(broken)


def test_rating_widget_callbacks_change_state_and_write(loaded, tmp_path):
    session = widgets.RatingSession(loaded[0], seed=0)
    path = tmp_path / "human_eval.json"
    widget = widgets.rating_widget(session, path)
    first = widget.current.id
    assert widget.on_submit() is None and not path.exists(), "nothing rated: nothing written"
    widget.score.value = 4
    widget.on_next()
    assert widget.position == 1 and session.ratings == {first: 4}
    assert widget.score.value is None, "the next answer starts unrated"
    widget.on_previous()
    assert widget.score.value == 4, "going back shows the earlier score"
    widget.on_next()
    widget.score.value = 1
    widget.next_button.click()  # the real button fires the same callback
    assert widget.position == 2 and len(session.ratings) == 2
    data = widget.on_submit()
    assert path.exists() and widgets.load_human_eval(path) == data
    assert sorted(r["score"] for r in data["ratings"]) == [1, 4]
    assert "Saved 2 rating(s)" in widget.status.value


def test_rating_widget_with_nothing_to_rate(tmp_path):
    widget = widgets.rating_widget(widgets.RatingSession([], seed=0), tmp_path / "h.json")
    assert widget.next_button.disabled and widget.submit_button.disabled
    widget.on_next()
    assert "Nothing to rate" in widget.displayed_text()


# ---------------------------------------------------------------- metric explorer

def test_metric_explorer_redraws_on_change(loaded):
    records = loaded[0]
    explorer = widgets.metric_explorer(records)
    assert _bar_heights(explorer.ax) == pytest.approx([NUMBERS[r][2] for r in results.CORE_RUNS])
    explorer.metric.value = "peak memory"
    assert _bar_heights(explorer.ax) == pytest.approx([NUMBERS[r][0] for r in results.CORE_RUNS], abs=1e-3)
    explorer.metric.value = "trainable params"
    assert explorer.ax.get_yscale() == "log"
    explorer.runs.value = ("qlora", "full")
    assert _bar_heights(explorer.ax) == [TOTAL, LORA_TRAINABLE[16]]
    assert [t.get_text() for t in explorer.ax.get_xticklabels()] == ["full", "qlora"]
    explorer.metric.value = "tokens/s"
    assert explorer.ax.get_yscale() == "linear"
    assert _bar_heights(explorer.ax) == pytest.approx([40.0, 80.0])
    explorer.runs.value = ()
    assert _bar_heights(explorer.ax) == []


# ---------------------------------------------------------------- the notebook, headless

def _execute_notebook(folder: Path, monkeypatch) -> tuple[str, list[dict]]:
    """Run notebook 05 headless on `folder`; return its printed text and its outputs."""
    import os

    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("LAB_RESULTS_DIR", str(folder))
    # The kernel starts in notebooks/; make `helpers` importable even where the package is not pip-installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    return "".join(o.get("text", "") for o in outputs), outputs


def test_notebook_runs_headless(results_folder, monkeypatch):
    printed, outputs = _execute_notebook(results_folder, monkeypatch)
    png = results_folder / "comparison.png"
    assert png.stat().st_size > 1000 and png.with_suffix(".svg").stat().st_size > 1000
    assert "broken.json" in printed and "old-run.json" in printed, "left-out files are reported"
    assert "Lowest mean held-out perplexity after training: full" in printed
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3, "the comparison figure, loss curves and perplexity plot are displayed"
    widgets_shown = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widgets_shown) >= 2, "the rating widget and the metric explorer render"


def test_notebook_runs_with_no_valid_results(tmp_path, monkeypatch):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "broken.json").write_text("not json")
    printed, _ = _execute_notebook(folder, monkeypatch)
    assert "broken.json" in printed and "01_full_finetune" in printed, "says how to produce results"
    assert not (folder / "comparison.png").exists(), "no empty figure is saved as if it were the comparison"
