"""helpers: the logic behind the lab's notebooks, so the notebooks hold narrative and calls."""

import logging

# bitsandbytes looks for an optional Hub-hosted CPU kernel at import and warns when it is absent; its own
# built-in kernel is used instead, so the warning only confuses students (and there is no Hub offline).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from . import adapters, data, environment, evaluation, models, plots, profiles, results, tables, training, widgets  # noqa: E402
from .runs import Lab
from .training import STANDARD_RUNS, RunSpec, full, lora, qlora

__all__ = ["Lab", "RunSpec", "STANDARD_RUNS", "full", "lora", "qlora", "adapters", "data", "environment",
           "evaluation", "models", "plots", "profiles", "results", "tables", "training", "widgets"]
