"""Run notebooks headless, in order, saving executed copies: `python -m helpers.tools.execute notebooks/*.ipynb`.

The terminal shows which notebook, which cell of how many, and during training the step, tokens/s and time left
(written by helpers.training.StepClock to the file named by $LAB_PROGRESS, which this runner follows). The kernel's
own stderr (library warnings) goes to a log beside the executed notebooks instead of the terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from ..environment import results_dir
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
    print(f"Executed notebooks: {out}")
    print(f"Results JSON:       {results_dir()}")
    figure = results_dir() / "comparison.png"
    if figure.exists():
        print(f"Comparison figure:  {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
