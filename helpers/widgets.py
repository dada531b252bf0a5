"""Notebook widgets: a blind human rating of the runs' answers, and an explorer of one metric at a time.

The logic lives in plain classes and methods (helpers.ratings.RatingSession, the widgets' on_* callbacks) so tests drive
it without a browser; nothing here waits for input, so a headless run just renders the widgets and moves on.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import ipywidgets as w
from IPython.display import display
from matplotlib.figure import Figure

from .plots import METRICS, metric_bars
from .ratings import HUMAN_EVAL_FILE, SCALE, SCORES, RatingItem, RatingSession, aggregate, load_human_eval  # noqa: F401
from .results import run_sort_key


# ---------------------------------------------------------------- the rating widget

def _plain(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", markup))


class RatingWidget(w.VBox):
    """One answer at a time, a 0–5 score, Previous / Next / Submit. The on_* methods are the button callbacks."""

    def __init__(self, session: RatingSession, path: Path):
        self.session, self.path, self.position = session, Path(path), 0
        self.header = w.HTML()
        self.prompt = w.HTML()
        self.answer = w.HTML()
        self.score = w.ToggleButtons(options=[(str(s), s) for s in SCORES], value=None, description="score",
                                     style={"button_width": "3em"})
        self.previous_button = w.Button(description="Previous", icon="arrow-left")
        self.next_button = w.Button(description="Next", icon="arrow-right")
        self.submit_button = w.Button(description="Submit", button_style="success", icon="check")
        self.status = w.HTML()
        self.previous_button.on_click(self.on_previous)
        self.next_button.on_click(self.on_next)
        self.submit_button.on_click(self.on_submit)
        super().__init__([self.header, self.prompt, self.answer, self.score, w.HTML(f"<small>{SCALE}</small>"),
                          w.HBox([self.previous_button, self.next_button, self.submit_button]), self.status])
        self._show()

    @property
    def current(self) -> RatingItem | None:
        return self.session.items[self.position] if self.session.items else None

    def _keep_score(self) -> None:
        if self.current is not None and self.score.value is not None:
            self.session.rate(self.current.id, self.score.value)

    def _show(self) -> None:
        item = self.current
        if item is None:
            self.header.value = "<b>Nothing to rate yet</b>: run notebooks 01–04, then this notebook again."
            self.prompt.value = self.answer.value = ""
            for control in (self.score, self.previous_button, self.next_button, self.submit_button):
                control.disabled = True
            return
        n = len(self.session)
        self.header.value = (f"<b>Answer {self.position + 1} of {n}</b> · {len(self.session.ratings)} rated · "
                             "which method wrote it is hidden")
        self.prompt.value = f"<b>Prompt</b><pre style='white-space:pre-wrap'>{html.escape(item.prompt)}</pre>"
        self.answer.value = f"<b>Answer</b><pre style='white-space:pre-wrap'>{html.escape(item.answer)}</pre>"
        self.score.value = self.session.ratings.get(item.id)
        self.previous_button.disabled = self.position == 0
        self.next_button.disabled = self.position == n - 1

    def on_previous(self, _button: object = None) -> None:
        self._keep_score()
        self.position = max(0, self.position - 1)
        self._show()

    def on_next(self, _button: object = None) -> None:
        self._keep_score()
        self.position = min(len(self.session) - 1, self.position + 1) if len(self.session) else 0
        self._show()

    def on_submit(self, _button: object = None) -> dict | None:
        self._keep_score()
        if not self.session.ratings:
            self.status.value = "Rate at least one answer first."
            return None
        data = self.session.submit(self.path)
        self._show()
        unrated = len(self.session) - len(self.session.ratings)
        self.status.value = (f"Saved {len(data['ratings'])} rating(s) to <code>{html.escape(str(self.path))}</code>"
                             + (f" ({unrated} answer(s) not rated)" if unrated else "")
                             + ". Run the next cell to see the means next to the table.")
        return data

    def displayed_text(self) -> str:
        """Everything the rater can read, as plain text (tests check that no run name leaks)."""
        parts = [self.header.value, self.prompt.value, self.answer.value, self.status.value, self.score.description,
                 *[label for label, _ in self.score.options]]
        return " ".join(_plain(p) for p in parts)


def rating_widget(session: RatingSession, path: Path) -> w.Widget:
    return RatingWidget(session, path)


# ---------------------------------------------------------------- the metric explorer

class MetricExplorer(w.VBox):
    """A metric Dropdown and a run SelectMultiple; the bar chart below redraws on every change."""

    def __init__(self, records: list[dict]):
        self.records = sorted(records, key=lambda r: run_sort_key(r["run_id"]))
        run_ids = [r["run_id"] for r in self.records]
        self.metric = w.Dropdown(options=list(METRICS), value="perplexity after", description="metric")
        self.runs = w.SelectMultiple(options=run_ids, value=tuple(run_ids), rows=max(2, len(run_ids)),
                                     description="runs")
        self.output = w.Output()
        self.figure = Figure(figsize=(6.5, 3.6), layout="constrained")
        self.ax = self.figure.subplots()
        self.metric.observe(self.refresh, names="value")
        self.runs.observe(self.refresh, names="value")
        super().__init__([w.HBox([self.metric, self.runs]), self.output])
        self.refresh()

    def refresh(self, _change: object = None) -> None:
        self.ax.clear()  # also resets a log scale left by the previous metric
        metric_bars(self.records, self.metric.value, list(self.runs.value), ax=self.ax)
        self.output.clear_output(wait=True)
        with self.output:
            display(self.figure)


def metric_explorer(records: list[dict]) -> w.Widget:
    return MetricExplorer(records)
