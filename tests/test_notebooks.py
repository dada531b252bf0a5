"""The notebooks' shape: title, one commented parameters cell, the Colab setup cell, outputs stripped, one repo URL."""

import re
import tomllib
from pathlib import Path

import nbformat
import pytest

from helpers.colab import SETUP_CELL

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPO_URL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
EXPECTED = ["00_baseline", "01_full_finetune", "02_lora_ranks", "03_qlora", "04_lora_variants", "05_compare",
            "06_use_your_model"]


def test_the_sequence_is_complete_and_numbered():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_shape(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "starts with a title"
    assert "learn" in first.source, "says what the student will learn"
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one parameters cell"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0] is tagged[0] and code[1].source == SETUP_CELL, "parameters first, then the one Colab setup cell"
    assert "USE_DRIVE" in tagged[0].source, "the setup cell reads USE_DRIVE from the parameters"
    for line in tagged[0].source.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            assert "#" in line.split("=", 1)[1], f"setting without a comment: {line!r}"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "outputs are stripped in the repo"


def test_one_repository_url_everywhere():
    readme = (ROOT / "README.md").read_text()
    found = set(re.findall(r"github\.com/([\w.-]+/[\w.-]+)", readme))
    for path in NOTEBOOKS:
        found |= set(re.findall(r"https://github\.com/([\w.-]+/[\w.-]+)", path.read_text()))
    assert found == {REPO_URL.removeprefix("https://github.com/")}
    for path in NOTEBOOKS:
        assert f"colab.research.google.com/github/{REPO_URL.removeprefix('https://github.com/')}/blob/main/notebooks/" \
               f"{path.name}" in readme, f"README has an Open-in-Colab badge for {path.name}"


def test_readme_reference_table_is_the_committed_results():
    from helpers.results import RUN_ORDER, load_all
    from helpers.tables import markdown_table
    records, rejected = load_all(ROOT / "notebooks" / "reference_results")
    assert not rejected, rejected
    runs = list(RUN_ORDER)  # the five core runs and notebook 04's four variants
    assert [r["run_id"] for r in records] == [run for run in runs for _ in range(3)]
    assert all(sorted(r["seed"] for r in records if r["run_id"] == run) == [1, 2, 42] for run in runs), \
        "the reference set is LAB_SEEDS=3 make lab: three training seeds per run"
    assert markdown_table(records) in (ROOT / "README.md").read_text()
    assert {r["environment"]["profile"] for r in records} == {"cpu"}
    assert len({r["data"]["fingerprint"] for r in records}) == 1
    assert all(r["eval"]["perplexity_after"] < r["eval"]["perplexity_before"] for r in records)
    assert (ROOT / "notebooks" / "reference_results" / "comparison.png").stat().st_size > 10_000
