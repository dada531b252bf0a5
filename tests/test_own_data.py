"""The "your own data" example (data_manifests/my_first_dataset.toml + .jsonl): it validates, loads through the same
code as the lab's own data, and a smoke-profile LoRA run on it ends in a valid results record. Notebook 01's section
trains on it only when TRAIN_OWN_DATA is set, so make lab's time budget stays as it is."""

import json
import math
from pathlib import Path

import nbformat

import helpers
from helpers import results
from helpers.data import load_rows
from helpers.manifests import load_manifest

ROOT = Path(__file__).resolve().parent.parent
NAME = "my_first_dataset"


def test_the_example_manifest_validates_and_names_its_jsonl():
    m = load_manifest(NAME)
    assert (m.name, m.format, m.source["kind"]) == (NAME, "instruction", "file")
    assert m.fields == {"instruction": "question", "output": "answer"}
    assert m.data_path() == ROOT / "data_manifests" / f"{NAME}.jsonl" and m.data_path().is_file()
    assert len(m.prompts) == 3


def test_the_example_rows_are_distinct_pairs_and_split_on_both_sides():
    lines = (ROOT / "data_manifests" / f"{NAME}.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert 30 <= len(rows) <= 60
    assert all(set(r) == {"question", "answer"} and r["question"].strip() and r["answer"].strip() for r in rows)
    questions = [r["question"] for r in rows]
    assert len(set(questions)) == len(questions), "no question twice"
    assert f"{len(rows)} hand-written question/answer pairs" in (ROOT / "README.md").read_text()
    m = load_manifest(NAME)
    assert not set(m.prompts) & set(questions), "the generation prompts are not training rows"
    train, evals = load_rows(m)
    assert len(train) + len(evals) == len(rows) and len(evals) >= 5 and len(train) >= 25
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in evals}


def test_a_smoke_lora_run_on_the_example_data_writes_a_valid_record(tmp_path):
    lab = helpers.Lab("smoke", results=tmp_path, dataset=NAME, validation_examples=0)
    assert lab.data.manifest.name == NAME and lab.data.dropped_too_long == 0
    records = lab.run(helpers.lora(8))
    assert len(records) == 1
    # other data than the profile's: another settings set, written beside the standard runs (set-<id>/)
    assert lab.settings["changed"]["dataset"] == NAME
    path = lab.result_path("lora-r8", 42)
    assert path == tmp_path / f"set-{lab.settings['id']}" / results.file_name("lora-r8", 42)
    record = results.read(path)  # schema-checked on reading
    assert record == records[0]
    assert record["data"]["manifest"] == NAME and record["data"]["fingerprint"] == lab.data.fingerprint
    assert record["data"]["train_examples"] == len(lab.data.train)
    assert record["training"]["steps"] == lab.profile.max_steps
    assert all(math.isfinite(record["eval"][k]) for k in ("perplexity_before", "perplexity_after"))
    assert [g["prompt"] for g in record["generations"]] == list(load_manifest(NAME).prompts[:1])
    assert lab.artifact_path(record).is_dir()


def test_notebook_01_trains_on_it_only_when_asked():
    nb = nbformat.read(ROOT / "notebooks" / "01_full_finetune.ipynb", as_version=4)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "TRAIN_OWN_DATA = False" in parameters.source
    own = [c for c in nb.cells if c.cell_type == "code" and f'"{NAME}"' in c.source]
    assert len(own) == 1 and "if TRAIN_OWN_DATA:" in own[0].source
    run_lines = [line for line in own[0].source.splitlines() if ".run(" in line]
    assert run_lines and all(line.startswith("    ") for line in run_lines), "every run is under the flag"
