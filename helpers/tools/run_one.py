"""One (spec, seed) of a Lab in a fresh process: what Lab.run_seed starts when $LAB_ISOLATE_RUNS is 1 (make lab).

`python -m helpers.tools.run_one JOB`: JOB is a pickle of the Lab's settings, the spec, the seed and force, written by
Lab._run_in_own_process, which prints this process's output and reads the result back from its file.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from ..runs import Lab


def main(argv: list[str] | None = None) -> None:
    job = pickle.loads(Path((argv or sys.argv[1:])[0]).read_bytes())
    Lab(**job["lab"]).run_seed(job["spec"], job["seed"], force=job["force"])


if __name__ == "__main__":
    main()
