"""Run notebooks headless, in order, saving executed copies: `python -m helpers.tools.execute notebooks/*.ipynb`.

The terminal shows which notebook, which cell of how many, and during training the step, tokens/s and time left
(written by helpers.training.StepClock to the file named by $LAB_PROGRESS, which this runner follows). The kernel's
own stderr (library warnings) goes to a log beside the executed notebooks instead of the terminal. Each notebook's
wall time goes to timings.json beside them: the durations stated at the top of the notebooks come from such a file
(the reference copy is notebooks/reference_results/timings.json; tests/test_timings.py keeps the two in agreement).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from ..environment import PROFILE_ENV, SEEDS_ENV, detect, results_dir
from ..results import TIMINGS_FILE
from ..training import PROGRESS_ENV


class ProgressClient(NotebookClient):
    """Prints `[notebook] cell k/n: first line` as each code cell starts."""

    def __init__(self, notebook, name: str, **kwargs):
        super().__init__(notebook, **kwargs)
        self.name = name
        self.code_cells = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code"]

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if cell.cell_type == "code":
            k = self.code_cells.index(cell_index) + 1
            first = next((line for line in cell.source.splitlines() if line.strip() and not line.startswith("#")), "")
            print(f"[{self.name}] cell {k}/{len(self.code_cells)}: {first[:70]}", flush=True)
        return await super().async_execute_cell(cell, cell_index, execution_count, store_history)


class Follow(threading.Thread):
    """Prints the lines appended to a file (the kernel's training progress) until stopped."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.stop = path, threading.Event()

    def run(self) -> None:
        with open(self.path, "a+") as handle:
            handle.seek(0, os.SEEK_END)
            while not self.stop.is_set():
                line = handle.readline()
                if line:
                    print("    " + line.rstrip(), flush=True)
                else:
                    self.stop.wait(0.5)


def duration_text(seconds: float) -> str:
    """How a notebook's first cell states a measured wall time: "under a minute", else whole minutes, rounded."""
    return "under a minute" if seconds < 60 else f"about {round(seconds / 60)} min"


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def write_timings(path: Path, timings: list[tuple[str, float]]) -> None:
    """notebook -> seconds, with what they depend on: the machine, the profile and seeds (from the environment the
    kernels inherit; unset means each notebook chose its own), the date and the commit. Rewritten after every notebook,
    so an interrupted run still leaves the finished ones' times."""
    env = detect()
    record = {"notebooks": {name: round(seconds, 1) for name, seconds in timings},
              "machine": env.device_name, "precision": env.precision.name,  # a bf16 CPU is much faster
              "profile": os.environ.get(PROFILE_ENV),
              "seeds": os.environ.get(SEEDS_ENV), "date": date.today().isoformat(), "commit": _commit(),
              "note": "seconds of wall time per notebook run headless by helpers.execute, kernel start included; a run "
                      "whose results already existed was skipped, so only a fresh results folder times a whole "
                      "notebook"}
    path.write_text(json.dumps(record, indent=1) + "\n")


def execute(paths: list[Path], out_dir: Path, timeout: int = 3600) -> list[tuple[str, float]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = out_dir / "progress.log"
    progress.write_text("")
    os.environ[PROGRESS_ENV] = str(progress)  # inherited by the kernels
    follower = Follow(progress)
    follower.start()
    timings = []
    try:
        with open(out_dir / "kernel.log", "w") as kernel_log:
            for path in sorted(paths):
                start = time.perf_counter()
                print(f"=== {path.name}", flush=True)
                notebook = nbformat.read(path, as_version=4)
                client = ProgressClient(notebook, path.stem, timeout=timeout, kernel_name="python3",
                                        resources={"metadata": {"path": str(path.parent)}})
                try:
                    client.execute(stdout=kernel_log, stderr=kernel_log)
                finally:  # the executed copy is kept even on failure: it shows the cell that broke
                    nbformat.write(notebook, out_dir / path.name)
                timings.append((path.name, time.perf_counter() - start))
                write_timings(out_dir / TIMINGS_FILE, timings)
                print(f"    done in {timings[-1][1]:.0f} s -> {out_dir / path.name}", flush=True)
    finally:
        follower.stop.set()
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: <results>/notebooks")
    args = parser.parse_args()
    out = args.out or results_dir() / "notebooks"
    start = time.perf_counter()
    try:
        timings = execute(args.notebooks, out)
    except CellExecutionError as err:
        print(f"\nA notebook failed; its executed copy in {out} shows the cell (kernel log: {out / 'kernel.log'}).\n"
              f"{err}", file=sys.stderr)
        return 1
    print(f"\nAll notebooks ran in {time.perf_counter() - start:.0f} s: "
          + ", ".join(f"{name.split('_')[0]} {seconds:.0f} s" for name, seconds in timings) + ".")
    print(f"Executed notebooks: {out} (wall times: {out / TIMINGS_FILE})")
    print(f"Results JSON:       {results_dir()}")
    figure = results_dir() / "comparison.png"
    if figure.exists():
        print(f"Comparison figure:  {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
