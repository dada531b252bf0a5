"""helpers: the logic behind the lab's notebooks, so the notebooks hold narrative and calls.

Submodules load on first use (`helpers.plots`, `helpers.widgets`, ...): training does not pull in matplotlib or
ipywidgets, and `import helpers` stays quick.
"""

import importlib
import logging
import warnings

# bitsandbytes looks for an optional Hub-hosted CPU kernel at import and warns when it is absent; its own
# built-in kernel is used instead, so the warning only confuses students (and there is no Hub offline).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# transformers 5 renamed gradient checkpointing to activation checkpointing; peft and TRL still read the old names,
# and every read warns. The lab sets activation_checkpointing itself (helpers.training), so these say nothing new.
warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated", category=FutureWarning)

from .specs import RunSpec, full, lora, paged, qlora  # noqa: E402

# The notebook-facing modules. The command-line tools (bench, sweep, ...) are in helpers.tools.
SUBMODULES = ("adapters", "baseline", "colab", "data", "decoding", "environment", "evaluation", "export",
              "formatting", "manifests", "measures", "memory", "modelcard", "models", "notes", "plots", "profiles",
              "ratings", "results", "runs", "sources", "specs", "statistics", "tables", "tracking", "training", "widgets")


def __getattr__(name: str):
    from . import specs

    if name in SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name == "STANDARD_RUNS":
        return specs.standard_runs()
    if name == "Lab":
        from .runs import Lab
        return Lab
    raise AttributeError(f"module 'helpers' has no attribute {name!r}")


__all__ = ["Lab", "RunSpec", "STANDARD_RUNS", "full", "lora", "paged", "qlora", *SUBMODULES]
