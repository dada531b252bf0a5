"""make lab trains each (spec, seed) in a fresh process of its own ($LAB_ISOLATE_RUNS=1): in one process, each run
trains on a heap fragmented by the runs before it (README, "Speed")."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from helpers import runs
from helpers.environment import ISOLATE_ENV
from helpers.runs import Lab
from helpers.specs import lora


def test_an_isolated_run_trains_in_its_own_process_and_returns_its_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ISOLATE_ENV, "1")
    lab = Lab("smoke", results=tmp_path, seeds=1)
    record = lab.run_seed(lora(8), 42)
    assert record["training"]["own_process"] is True  # written by the child, which knew it was one
    assert record == json.loads(lab.result_path("lora-r8", 42).read_text())
    assert "lora-r8-seed42: perplexity" in capsys.readouterr().out  # the child's lines print here
    monkeypatch.setenv(ISOLATE_ENV, "0")
    assert "already done" in (lab.run_seed(lora(8), 42) and capsys.readouterr().out)  # found, not redone


def test_a_failed_isolated_run_says_what_failed_and_how_to_see_it(tmp_path, monkeypatch):
    failing = tmp_path / "python"
    failing.write_text("#!/bin/sh\necho 'loading the model'\necho 'Traceback: boom' >&2\nexit 3\n")
    failing.chmod(0o755)
    monkeypatch.setenv(ISOLATE_ENV, "1")
    monkeypatch.setattr(sys, "executable", str(failing))
    lab = Lab("smoke", results=tmp_path / "results", seeds=1)
    with pytest.raises(RuntimeError) as error:
        lab.run_seed(lora(8), 42)
    message = str(error.value)
    assert "lora-r8-seed42: its own training process failed (exit code 3)" in message
    assert "loading the model" in message and "Traceback: boom" in message and f"{ISOLATE_ENV}=0" in message
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*.json"))
    assert runs.os.environ[ISOLATE_ENV] == "1"


def test_a_lab_whose_env_or_parallel_was_set_by_hand_trains_in_this_process(tmp_path, monkeypatch):
    """A fresh process would detect its own env and parallel, not the ones set here: such a Lab is not isolated."""
    monkeypatch.setenv(ISOLATE_ENV, "1")
    assert Lab("smoke", results=tmp_path, seeds=1)._isolated()
    changed = Lab("smoke", results=tmp_path, seeds=1)
    changed.env = dataclasses.replace(changed.env)  # equal, but not the one it detected
    assert not changed._isolated()
    assert not Lab("smoke", results=tmp_path, seeds=1, parallel=runs.Parallel())._isolated()
    monkeypatch.setenv(ISOLATE_ENV, "0")
    assert not Lab("smoke", results=tmp_path, seeds=1)._isolated()
