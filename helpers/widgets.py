"""Notebook widgets: a blind human rating of the runs' answers, and an explorer of one metric at a time.

The logic lives in plain classes and methods (RatingSession, the widgets' on_* callbacks) so tests drive it without a
browser; nothing here waits for input, so a headless run just renders the widgets and moves on.
"""

from __future__ import annotations

import hashlib
import html
import json
import numbers
import random
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import ipywidgets as w
from IPython.display import display
from matplotlib.figure import Figure

from .plots import METRICS, metric_bars
from .results import run_sort_key, write_json_atomic

HUMAN_EVAL_FILE = "human_eval.json"  # results.load_all skips this name, so it never counts as a left-out run
HUMAN_EVAL_VERSION = 1
SCORES = range(0, 6)
SCALE = "0 = wrong or empty · 1 = mostly wrong · 2 = partly right · 3 = right but clumsy · 4 = good · 5 = excellent"


# ---------------------------------------------------------------- the rating file

def _is_int(value: object) -> bool:
    # bool is an int in Python; True must not pass for a score of 1
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_human_eval(data: object) -> list[str]:
    """Every way `data` breaks the human_eval.json format, as 'where: what' lines (empty when valid)."""
    if not isinstance(data, dict):
        return ["(top): is not a JSON object"]
    found = []
    if data.get("schema_version") != HUMAN_EVAL_VERSION:
        found.append(f"schema_version: is {data.get('schema_version')!r}, expected {HUMAN_EVAL_VERSION}")
    try:
        datetime.fromisoformat(str(data["rated_at"]))
    except (KeyError, ValueError):
        found.append("rated_at: missing or not an ISO date-time")
    if not _is_int(data.get("seed")):
        found.append("seed: missing or not an integer")
    ratings = data.get("ratings")
    if not isinstance(ratings, list):
        return found + ["ratings: missing or not a list"]
    for i, rating in enumerate(ratings):
        if not isinstance(rating, dict):
            found.append(f"ratings.{i}: is not an object")
            continue
        if not isinstance(rating.get("run_id"), str) or not rating.get("run_id"):
            found.append(f"ratings.{i}.run_id: missing or not a string")
        if not isinstance(rating.get("prompt"), str):
            found.append(f"ratings.{i}.prompt: missing or not a string")
        score = rating.get("score")
        if not _is_int(score) or score not in SCORES:
            found.append(f"ratings.{i}.score: {score!r} is not an integer from 0 to 5")
    return found


def write_human_eval(data: dict, path: Path) -> Path:
    """Check, write a temp file beside the target, fsync, rename: a reader never sees half a file."""
    found = check_human_eval(data)
    if found:
        raise ValueError("human rating data is not valid:\n  " + "\n  ".join(found[:10]))
    return write_json_atomic(data, path)


def load_human_eval(path: Path) -> dict | None:
    """The saved ratings; None when there are none yet; ValueError naming the file when it is corrupt."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} cannot be read as JSON ({err}); delete it and rate again.") from err
    found = check_human_eval(data)
    if found:
        raise ValueError(f"{path} is not a valid human rating file: {'; '.join(found[:3])}. "
                         "Delete it and rate again.")
    return data


def aggregate(human_eval: dict) -> dict[str, dict]:
    """{run_id: {"mean": mean score, "n": number of ratings}}, runs in RUN_ORDER."""
    found = check_human_eval(human_eval)
    if found:
        raise ValueError("human rating data is not valid: " + "; ".join(found[:3]))
    scores: dict[str, list[int]] = {}
    for rating in human_eval["ratings"]:
        scores.setdefault(rating["run_id"], []).append(rating["score"])
    return {run: {"mean": sum(s) / len(s), "n": len(s)} for run, s in sorted(scores.items(),
                                                                            key=lambda kv: run_sort_key(kv[0]))}


# ---------------------------------------------------------------- the blind session

@dataclass(frozen=True)
class RatingItem:
    """What the rater sees: no run name, only an opaque id."""

    id: str
    prompt: str
    answer: str


class RatingSession:
    """Every (prompt, run) answer after training, shuffled by `seed`, with the run hidden behind an opaque id."""

    def __init__(self, records: list[dict], seed: int = 0):
        if not _is_int(seed):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed = int(seed)
        # Sorting first makes the order depend on the seed only, not on the order the records came in.
        answers = [(r["run_id"], g["prompt"], g["after"])
                   for r in sorted(records, key=lambda r: run_sort_key(r["run_id"]))
                   for g in r.get("generations", [])]
        random.Random(self.seed).shuffle(answers)
        self.items: list[RatingItem] = []
        self._source: dict[str, tuple[str, str]] = {}  # item id -> (run_id, prompt); never shown
        for k, (run_id, prompt, answer) in enumerate(answers):
            item_id = hashlib.sha256(f"{self.seed}|{k}|{run_id}|{prompt}".encode()).hexdigest()[:10]
            self.items.append(RatingItem(item_id, prompt, answer))
            self._source[item_id] = (run_id, prompt)
        self.ratings: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def rate(self, item_id: str, score: int) -> None:
        if item_id not in self._source:
            raise ValueError(f"unknown item id {item_id!r}")
        if not _is_int(score) or score not in SCORES:
            raise ValueError(f"a score is an integer from 0 to 5, got {score!r}")
        self.ratings[item_id] = int(score)

    def to_dict(self) -> dict:
        ratings = [{"run_id": self._source[i][0], "prompt": self._source[i][1], "score": s}
                   for i, s in self.ratings.items()]
        ratings.sort(key=lambda x: (run_sort_key(x["run_id"]), x["prompt"]))
        return {"schema_version": HUMAN_EVAL_VERSION, "rated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seed": self.seed, "ratings": ratings}

    def submit(self, path: Path) -> dict:
        """Write the ratings so far to `path` (replacing an earlier file) and return what was written."""
        if not self.ratings:
            raise ValueError("nothing rated yet: rate at least one answer before submitting")
        data = self.to_dict()
        write_human_eval(data, path)
        return data


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
            self.header.value = "<b>Nothing to rate yet</b>: run notebooks 01–03, then this notebook again."
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
