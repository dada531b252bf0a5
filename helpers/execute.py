"""Run notebooks headless, in order, saving executed copies: `python -m helpers.execute notebooks/*.ipynb`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from .environment import results_dir


def execute(paths: list[Path], out_dir: Path, timeout: int = 3600) -> list[tuple[str, float]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = []
    for path in sorted(paths):
        start = time.perf_counter()
        print(f"=== {path.name} ...", flush=True)
        notebook = nbformat.read(path, as_version=4)
        client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()
        finally:  # the executed copy is kept even on failure: it shows the cell that broke
            nbformat.write(notebook, out_dir / path.name)
        timings.append((path.name, time.perf_counter() - start))
        print(f"    done in {timings[-1][1]:.0f} s -> {out_dir / path.name}", flush=True)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: <results>/notebooks")
    args = parser.parse_args()
    out = args.out or results_dir() / "notebooks"
    start = time.perf_counter()
    try:
        execute(args.notebooks, out)
    except CellExecutionError as err:
        print(f"\nA notebook failed; its executed copy in {out} shows the cell.\n{err}", file=sys.stderr)
        return 1
    print(f"\nAll notebooks ran in {time.perf_counter() - start:.0f} s.")
    print(f"Executed notebooks: {out}")
    print(f"Results JSON:       {results_dir()}")
    figure = results_dir() / "comparison.png"
    if figure.exists():
        print(f"Comparison figure:  {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
