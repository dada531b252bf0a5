"""Experiment trackers (REPORT_TO in a notebook's parameters cell): "none" (default), "tensorboard" or "wandb".

During training the Trainer itself streams the loss to the tracker (SFTConfig's report_to). After a run,
log_record() adds what only the lab measures: perplexity before and after (held-out and general text), tokens/s,
memory by category and trainable parameters, from the results record, so the tracker shows the same numbers as the
tables. Neither tracker is installed by the lab: `pip install tensorboard` or `pip install wandb` first (wandb also
needs `wandb login`, or WANDB_MODE=offline).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Iterator

from .profiles import ProfileError

REPORT_TO_CHOICES = ("none", "tensorboard", "wandb")
INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}
PROJECT = "finetune-lab"  # the wandb project, unless $WANDB_PROJECT names another
LOG_DIR = "tracking"  # under the results folder: tensorboard event files, wandb's local files


class TrackingError(ProfileError):
    pass


def check_report_to(value: object) -> str:
    """The tracker named by REPORT_TO, checked before anything trains: a known name, and installed (transformers would
    only find out when the trainer is built, after the baseline has been measured). None means "none"."""
    if value is None:
        return "none"
    if isinstance(value, str) and value.strip().lower() in REPORT_TO_CHOICES:
        chosen = value.strip().lower()
    else:
        from .manifests import did_you_mean

        raise TrackingError(f"REPORT_TO = {value!r}: is not a tracker{did_you_mean(value, REPORT_TO_CHOICES)}. "
                            f"Fix: use one of: {', '.join(map(repr, REPORT_TO_CHOICES))}.")
    if chosen != "none" and importlib.util.find_spec(chosen) is None:
        raise TrackingError(f"REPORT_TO = {chosen!r}: {chosen} is not installed. Fix: run `{INSTALL[chosen]}` "
                            "(in a notebook: `%pip install " + chosen + "`), or set REPORT_TO = \"none\".")
    return chosen


def run_dir(log_dir: Path, label: str) -> Path:
    return Path(log_dir) / label


@contextlib.contextmanager
def tracking_environment(report_to: str, log_dir: Path, label: str) -> Iterator[None]:
    """Around building and training the Trainer: tensorboard's loss curves go to log_dir/label (the Trainer's default,
    inside the checkpoint folder, is deleted with it after the run); wandb's files go to log_dir, project PROJECT."""
    settings = {}
    if report_to == "tensorboard":
        settings["TENSORBOARD_LOGGING_DIR"] = str(run_dir(log_dir, label))
    elif report_to == "wandb":
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        settings = {"WANDB_DIR": str(log_dir), "WANDB_PROJECT": os.environ.get("WANDB_PROJECT", PROJECT)}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def metrics(record: dict) -> dict[str, float]:
    """The record's summary numbers, named as the tracker shows them."""
    out = {f"eval/{k}": record["eval"][k] for k in ("perplexity_before", "perplexity_after", "loss_before", "loss_after")}
    if record.get("forgetting"):
        out.update({f"general_text/{k}": record["forgetting"][k] for k in ("perplexity_before", "perplexity_after")})
    training = record["training"]
    out.update({"speed/tokens_per_second": training["tokens_per_second"], "speed/seconds": training["seconds"],
                "train/tokens": training["tokens"]})
    for category, value in (record["memory"].get("categories") or {}).items():
        out[f"memory/{category}_bytes"] = value
    out["memory/device_peak_bytes"] = record["memory"]["device_peak_bytes"]
    out.update({"params/trainable": record["params"]["trainable"], "params/total": record["params"]["total"],
                "params/trainable_pct": record["params"]["trainable_pct"]})
    return {k: float(v) for k, v in out.items() if v is not None}


def label(record: dict) -> str:
    return f"{record['run_id']}-seed{record['seed']}"


def log_record(record: dict, report_to: str, log_dir: Path) -> dict[str, float]:
    """Log a finished run's record to the tracker (nothing for "none"); returns what was logged."""
    if report_to == "none":
        return {}
    values = metrics(record)
    step = record["training"]["steps"]
    if report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir(log_dir, label(record))))
        try:
            for key, value in values.items():
                writer.add_scalar(f"lab/{key}", value, global_step=step)
        finally:
            writer.close()
    elif report_to == "wandb":
        import wandb

        # The Trainer's run is still open after training (it finishes it only between hyperparameter trials):
        # the numbers join the loss curve. Finished here, so the next (run, seed) gets a run of its own.
        run = wandb.run or wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), name=label(record),
                                      dir=str(log_dir))
        run.log({f"lab/{k}": v for k, v in values.items()})
        run.summary.update({f"lab/{k}": v for k, v in values.items()})
        run.finish()
    else:
        check_report_to(report_to)
    return values


__all__ = ["INSTALL", "LOG_DIR", "REPORT_TO_CHOICES", "TrackingError", "check_report_to", "log_record", "metrics",
           "tracking_environment"]
