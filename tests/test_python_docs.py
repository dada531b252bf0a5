"""The bundled python_docs dataset: size, shape, determinism across processes, and a leak-free split."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.python_docs import build_examples, split_by_group

MODULE_FILE = Path(__file__).resolve().parents[1] / "helpers" / "python_docs.py"
FIELDS = ("instruction", "input", "output", "group")


def _norm(text: str) -> str:
    return " ".join(text.split())


def _digest(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    return build_examples()


@pytest.fixture(scope="module")
def split(examples) -> tuple[list[dict], list[dict]]:
    return split_by_group(examples, eval_fraction=0.1, seed=0)


def test_size_fields_and_lengths(examples):
    assert len(examples) >= 1000
    for row in examples:
        assert set(row) == set(FIELDS)
        assert all(isinstance(row[k], str) for k in FIELDS)
        assert row["instruction"].strip() and row["group"].split(":", 1)[0] in {"topic", "module"}
        assert 80 <= len(row["output"]) <= 600, row
    outputs = [_norm(r["output"]) for r in examples]
    assert len(set(outputs)) == len(outputs)


def test_both_sources_and_expected_examples(examples):
    groups = {r["group"] for r in examples}
    assert sum(g.startswith("topic:") for g in groups) >= 40
    assert sum(g.startswith("module:") for g in groups) >= 60
    by_instruction = {r["instruction"]: r for r in examples}
    for_loop = [r for r in examples if r["group"] == "topic:for"]
    assert len(for_loop) == 1 and '"for" statement' in for_loop[0]["instruction"]
    assert "iterate over the elements of a sequence" in for_loop[0]["output"]
    dumps = [r for r in examples if r["group"] == "module:json" and "json.dumps " in r["instruction"] + " "]
    assert len(dumps) == 1 and dumps[0]["input"].startswith("json.dumps(obj, *, skipkeys=False")
    assert any(name in by_instruction for name in (
        'What is the Python module "json" for?', 'What does the Python module "json" do?',
        'Describe the Python standard library module "json".'))


def test_outputs_are_cut_at_boundaries_never_mid_word():
    short = build_examples(max_output_chars=300, min_output_chars=150)
    assert short and all(150 <= len(r["output"]) <= 300 for r in short)
    full = {(r["group"], r["instruction"]): r["output"] for r in build_examples(10**6, 150)}
    cut = at_sentence_or_paragraph = 0
    for r in short:
        whole = full.get((r["group"], r["instruction"]))
        if whole is None:  # deduplication kept another source for this text in one of the two builds
            continue
        assert whole.startswith(r["output"]), r["instruction"]
        rest = whole[len(r["output"]):]
        if rest:
            cut += 1
            assert rest[0].isspace(), (r["output"][-30:], rest[:30])  # never inside a word
            at_sentence_or_paragraph += rest.startswith("\n\n") or r["output"][-1] in ".!?"
    assert cut >= 300
    assert at_sentence_or_paragraph >= 0.9 * cut


def test_deterministic_in_process_and_across_processes(examples):
    assert build_examples() == examples
    # A fresh interpreter has a different str hash seed; load the file directly to skip the package's
    # heavy imports (torch).
    code = (
        "import hashlib, importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('python_docs_copy', {str(MODULE_FILE)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "rows = m.build_examples()\n"
        "print(hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == _digest(examples)


def test_split_holds_out_whole_groups_without_leaks(examples, split):
    train, evals = split
    assert train and evals
    assert 0.05 <= len(evals) / len(examples) <= 0.20
    assert len(train) + len(evals) <= len(examples)
    assert {r["group"] for r in train}.isdisjoint({r["group"] for r in evals})
    train_text = "\x00".join(_norm(r["instruction"]) + "\x00" + _norm(r["input"]) + "\x00" + _norm(r["output"])
                             for r in train)
    eval_text = "\x00".join(_norm(r["instruction"]) + "\x00" + _norm(r["input"]) + "\x00" + _norm(r["output"])
                            for r in evals)
    assert not [r["instruction"] for r in evals if _norm(r["output"]) in train_text]
    assert not [r["instruction"] for r in train if _norm(r["output"]) in eval_text]


def test_split_is_deterministic_and_seeded(examples, split):
    train, evals = split
    again_train, again_evals = split_by_group(list(reversed(examples)), eval_fraction=0.1, seed=0)
    assert {r["group"] for r in again_evals} == {r["group"] for r in evals}
    assert len(again_train) == len(train)
    other = {r["group"] for r in split_by_group(examples, eval_fraction=0.1, seed=1)[1]}
    assert other and other != {r["group"] for r in evals}


def test_split_removes_train_rows_that_contain_or_are_contained_in_eval_text():
    rows = [{"instruction": f"q{i}", "input": "", "output": f"answer {i:02d} ends here", "group": f"g{i}"}
            for i in range(40)]
    # Which groups go to eval depends on group names and sizes only, so the texts can be planted afterwards.
    first_train, first_evals = split_by_group(rows, eval_fraction=0.1, seed=0)
    assert len(first_evals) == 4 and len(first_train) == 36
    shared = "The quick brown fox jumps over the lazy dog near the river bank."
    first_evals[0]["output"] = shared
    first_evals[1]["output"] = "The quick brown fox"
    planted = {
        "contains": "Prefix.   " + shared.replace(" ", "\n ") + " Suffix.",  # equal once whitespace is normalised
        "inside": "quick brown fox jumps over the lazy dog",
        "short copy": "  The quick\tbrown fox ",
        "unrelated": "a different answer",
        "short inside": "fox",  # a few words inside a long text are no leak
    }
    for row, (name, text) in zip(first_train, planted.items()):
        row["instruction"], row["output"] = name, text
    train, evals = split_by_group(rows, eval_fraction=0.1, seed=0)
    assert [r["group"] for r in evals] == [r["group"] for r in first_evals]
    kept = {r["instruction"] for r in train}
    assert kept.isdisjoint({"contains", "inside", "short copy"}) and {"unrelated", "short inside"} <= kept
    assert len(train) == 36 - 3


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError):
        split_by_group([{"output": "x", "group": "g"}], eval_fraction=1.0, seed=0)


def test_no_example_depends_on_where_the_lab_was_cloned(examples, monkeypatch):
    """platform.architecture's default is sys.executable: printed, each clone (each .venv path) trained on other data."""
    import json
    import sys

    from helpers import python_docs
    text = json.dumps(examples)
    assert sys.prefix not in text and sys.executable not in text
    assert "platform.architecture(executable=sys.executable," in text
    monkeypatch.setattr(sys, "executable", "/somewhere/else/.venv/bin/python")
    monkeypatch.setattr(sys, "prefix", "/somewhere/else/.venv")
    assert python_docs._stable_repr(sys.executable) == "sys.executable"
    assert python_docs._stable_repr("/somewhere/else/.venv/lib") == "sys.prefix + '/lib'"
    assert python_docs._stable_repr("/tmp") == "'/tmp'"


def test_the_same_examples_inside_a_jupyter_kernel(examples, monkeypatch):
    """A kernel replaces builtins.input: the notebooks (kernels) and make sweep / the tests (plain processes) must still
    train on the same sample, so the example set may not depend on it."""
    import builtins
    import json

    from helpers import python_docs
    monkeypatch.setattr(builtins, "input", lambda prompt="": "")  # what ipykernel does, in spirit
    assert json.dumps(python_docs.build_examples()) == json.dumps(examples)
