"""The duration at the top of each notebook is the one measured by make lab's runner (the committed reference copy of
its timings.json), rounded as helpers.tools.execute.duration_text rounds it; the runner writes that file."""

import json
import re
from pathlib import Path

import nbformat
import pytest

from helpers.tools import execute
from helpers.results import TIMINGS_FILE

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REFERENCE = json.loads((ROOT / "notebooks" / "reference_results" / TIMINGS_FILE).read_text())
STATED = re.compile(r"\*Takes (under a minute|about \d+ min) on a 2-core CPU in (\w+) \(`make lab`, one seed\); "
                    r"on a Colab T4: not yet measured\.\*")


def test_duration_text_rounds_to_whole_minutes():
    assert [execute.duration_text(s) for s in (8, 59.9, 60, 136, 225, 362, 449, 451)] == [
        "under a minute", "under a minute", "about 1 min", "about 2 min", "about 4 min", "about 6 min",
        "about 7 min", "about 8 min"]


def test_reference_timings_cover_every_notebook_on_the_stated_machine():
    assert set(REFERENCE["notebooks"]) == {p.name for p in NOTEBOOKS}
    assert all(seconds > 0 for seconds in REFERENCE["notebooks"].values())
    assert "2 cores" in REFERENCE["machine"], "the notebooks say '2-core CPU'"
    assert REFERENCE["profile"] == "cpu" and REFERENCE["seeds"] is None, "the notebooks say make lab, one seed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stated_duration_is_the_measured_one(path):
    first = nbformat.read(path, as_version=4).cells[0].source
    stated = STATED.findall(first)
    expected = execute.duration_text(REFERENCE["notebooks"][path.name])
    precision = REFERENCE["precision"]
    assert stated == [(expected, precision)], (
        f"{path.name}: its first cell should say, once, '*Takes {expected} on a 2-core CPU in {precision} "
        f"(`make lab`, one seed); on a Colab T4: not yet measured.*' (notebooks/reference_results/{TIMINGS_FILE}: "
        f"{REFERENCE['notebooks'][path.name]} s); it says {stated or 'nothing of the kind'}")
    assert "](GLOSSARY.md)" in first, "the first cell links the glossary"


def test_runner_writes_each_notebooks_seconds_with_the_machine_and_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_PROFILE", "smoke")
    monkeypatch.delenv("LAB_SEEDS", raising=False)
    target = tmp_path / TIMINGS_FILE
    execute.write_timings(target, [("00_baseline.ipynb", 12.345), ("01_full_finetune.ipynb", 136.04)])
    written = json.loads(target.read_text())
    assert written["notebooks"] == {"00_baseline.ipynb": 12.3, "01_full_finetune.ipynb": 136.0}
    assert written["profile"] == "smoke" and written["seeds"] is None
    assert written["machine"] == execute.detect().device_name
    assert written["precision"] == execute.detect().precision.name
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", written["date"])


def test_execute_leaves_timings_json_beside_the_executed_notebooks(tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time; time.sleep(1)")])
    path = tmp_path / "99_tiny.ipynb"
    nbformat.write(notebook, path)
    timings = execute.execute([path], tmp_path / "out")
    written = json.loads((tmp_path / "out" / TIMINGS_FILE).read_text())
    assert list(written["notebooks"]) == ["99_tiny.ipynb"]
    assert 1 <= written["notebooks"]["99_tiny.ipynb"] == round(timings[0][1], 1)
