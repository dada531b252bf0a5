"""Blind human rating of the runs' answers: the session (shuffled, run names hidden), the human_eval.json file and
its aggregation. No widgets here, so tables can read ratings without importing ipywidgets."""

from __future__ import annotations

import hashlib
import json
import numbers
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

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
    """Every (prompt, run) answer after training, shuffled by `seed`, with the run hidden behind an opaque id.

    With several training seeds per run, the answers of the run's first seed are rated (one rating per prompt and run).
    """

    def __init__(self, records: list[dict], seed: int = 0):
        if not _is_int(seed):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed = int(seed)
        # Sorting first makes the order depend on the seed only, not on the order the records came in.
        first: dict[str, dict] = {}
        for r in sorted(records, key=lambda r: (run_sort_key(r["run_id"]), r.get("seed", 0))):
            first.setdefault(r["run_id"], r)
        answers = [(run_id, g["prompt"], g["after"]) for run_id, r in first.items() for g in r.get("generations", [])]
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
