"""Results are never silently replaced: a run with other settings than its profile's standard ones is written in
set-<id>/ beside the standard runs, and notebook 05 compares one settings set, names it and lists the others.
Records are copies of the committed reference set (30 steps, profile cpu), except one real 2-step demo run."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace

import pytest

import helpers
from helpers import notes, results
from helpers.profiles import PROFILES

REFERENCE = results.REFERENCE_DIR
STANDARD = "lora-r8-seed42.json"


def demo_copy(record: dict, steps: int = 2, legacy: bool = False) -> dict:
    """The record as a MAX_STEPS = `steps` demo would write it (legacy: without the settings block, as before
    settings sets existed), finished later than every reference run so no choice can rest on the date."""
    demo = copy.deepcopy(record)
    demo["training"]["steps"] = steps
    demo["finished_at"] = "2030-01-01T00:00:00+00:00"
    demo.pop("settings", None)
    if not legacy:
        demo["settings"] = results.settings_set(replace(PROFILES["cpu"], max_steps=steps), record["data"]["fingerprint"])
    return demo


def copy_reference(folder) -> None:
    for path in REFERENCE.glob("*-seed*.json"):
        shutil.copy(path, folder / path.name)


# ---------------------------------------------------------------- the settings set and where a run is written

def test_standard_settings_keep_the_plain_names_and_others_go_beside(tmp_path):
    standard = results.settings_set(PROFILES["cpu"], "data")
    assert standard["standard"] and standard["changed"] == {} and standard["profile"] == "cpu"
    assert results.run_folder(tmp_path, standard, STANDARD) == tmp_path
    demo = results.settings_set(replace(PROFILES["cpu"], max_steps=2), "data")
    assert not demo["standard"] and demo["changed"] == {"max_steps": 2} and demo["id"] != standard["id"]
    assert results.run_folder(tmp_path, demo, STANDARD) == tmp_path / f"set-{demo['id']}"
    assert results.describe_settings(demo) == "profile cpu with MAX_STEPS = 2"
    assert results.settings_set(replace(PROFILES["cpu"], seeds=(1, 2, 3)), "data") == standard, "seeds are repeats"
    assert results.settings_set(PROFILES["cpu"], "other data")["id"] != standard["id"], "other data, other set"


def test_the_reference_set_is_the_cpu_profiles_standard_set():
    records, _ = results.load_all(REFERENCE)
    found = [results.settings_of(r) for r in records]  # written before settings sets: derived from the record
    assert all(s == results.settings_set(PROFILES["cpu"], records[0]["data"]["fingerprint"]) for s in found)
    legacy_demo = results.settings_of(demo_copy(records[0], legacy=True))
    assert not legacy_demo["standard"] and legacy_demo["changed"] == {"max_steps": 2}


def test_a_top_level_file_of_other_settings_is_never_taken(tmp_path):
    shutil.copy(REFERENCE / STANDARD, tmp_path / STANDARD)  # a standard cpu run
    smoke = results.settings_set(PROFILES["smoke"], "data")
    assert smoke["standard"] and results.run_folder(tmp_path, smoke, STANDARD) == tmp_path / f"set-{smoke['id']}"
    assert results.run_folder(tmp_path, smoke, "full-seed42.json") == tmp_path, "a free name is taken"
    # the same profile's standard settings on changed data or code: the same slot, its stale file is redone in place
    assert results.run_folder(tmp_path, results.settings_set(PROFILES["cpu"], "changed data"), STANDARD) == tmp_path
    legacy = demo_copy(json.loads((REFERENCE / STANDARD).read_text()), legacy=True)  # a demo from before sets
    results.write_atomic(legacy, tmp_path / "full-seed42.json")
    cpu = results.settings_set(PROFILES["cpu"], legacy["data"]["fingerprint"])
    assert results.run_folder(tmp_path, cpu, "full-seed42.json") == tmp_path / f"set-{cpu['id']}"


# ---------------------------------------------------------------- what notebook 05 loads

def test_05_compares_one_set_and_lists_the_others(tmp_path):
    copy_reference(tmp_path)
    demo = demo_copy(json.loads((REFERENCE / STANDARD).read_text()))
    folder = results.run_folder(tmp_path, demo["settings"], STANDARD)
    results.write_atomic(demo, folder / STANDARD)
    loaded = results.load_or_reference(tmp_path)
    assert loaded.folder == tmp_path and loaded.reference is None and loaded.set_folder == tmp_path
    assert len(loaded.records) == 27 and {r["training"]["steps"] for r in loaded.records} == {30}
    assert [found.id for found in loaded.others] == [demo["settings"]["id"]] and loaded.others[0].records == (demo,)
    report = notes.settings_report(loaded)
    assert ("Comparing set " in report and "(profile cpu, standard settings): 9 runs (full, lora-r8, lora-r16, "
            "lora-r32, qlora, dora-r16, rslora-r16, pissa-r16, loraplus-r16), 27 results files" in report)
    assert (f"set {demo['settings']['id']} (profile cpu with MAX_STEPS = 2): 1 run (lora-r8), 1 results file, in "
            f"{folder}") in report
    assert f'SETTINGS_SET = "{demo["settings"]["id"]}"' in report
    chosen = results.load_or_reference(tmp_path, demo["settings"]["id"])
    assert chosen.records == [demo] and chosen.set_folder == folder and len(chosen.others) == 1
    with pytest.raises(results.ResultsError, match="no such settings set"):
        results.load_or_reference(tmp_path, "00000000")


def test_a_tie_goes_to_the_standard_set_and_legacy_demos_are_kept_apart(tmp_path):
    shutil.copy(REFERENCE / STANDARD, tmp_path / STANDARD)
    record = json.loads((REFERENCE / STANDARD).read_text())
    legacy = demo_copy(record, 5, legacy=True)  # a demo written at the top level before settings sets existed
    legacy["seed"] = 7
    results.write_atomic(legacy, tmp_path / results.file_name("lora-r8", 7))
    loaded = results.load_or_reference(tmp_path)
    assert loaded.records == [record], "one run each: the tie goes to the profile's standard settings"
    assert [dict(found.settings["changed"]) for found in loaded.others] == [{"max_steps": 5}]


def test_a_folder_of_demos_only_shows_its_largest_set(tmp_path):
    record = json.loads((REFERENCE / STANDARD).read_text())
    small = demo_copy(record, 2)
    results.write_atomic(small, results.run_folder(tmp_path, small["settings"], STANDARD) / STANDARD)
    for run in ("full", "qlora"):
        bigger = demo_copy(json.loads((REFERENCE / results.file_name(run, 42)).read_text()), 3)
        name = results.file_name(run, 42)
        results.write_atomic(bigger, results.run_folder(tmp_path, bigger["settings"], name) / name)
    loaded = results.load_or_reference(tmp_path)
    assert loaded.shown.runs == ["full", "qlora"] and loaded.shown.settings["changed"] == {"max_steps": 3}
    assert loaded.reference is None and loaded.folder == tmp_path


# ---------------------------------------------------------------- a real demo run beside a standard result

def test_a_2_step_demo_leaves_the_30_step_result_byte_identical(tmp_path, capsys):
    standard = tmp_path / STANDARD
    shutil.copy(REFERENCE / STANDARD, standard)  # an earlier standard run: 30 steps, profile cpu
    kept = standard.read_bytes()
    # The cpu profile with a 2-step budget (and a smoke-sized data set, so the test takes seconds)
    demo = helpers.Lab("cpu", results=tmp_path, max_steps=2, warmup_steps=0, train_examples=8, eval_examples=3,
                       max_length=128, batch_size=2, generation_tokens=8, generation_prompts=1, forgetting_tokens=200,
                       checkpoint_steps=0, validation_examples=0)
    record = demo.run(helpers.lora(8))[0]
    assert "beside the results" in capsys.readouterr().out
    assert standard.read_bytes() == kept
    beside = tmp_path / f"set-{demo.settings['id']}"
    assert demo.result_path("lora-r8", 42) == beside / STANDARD
    assert results.read(beside / STANDARD) == record and record["training"]["steps"] == 2
    assert record["settings"] == demo.settings and record["settings"]["changed"]["max_steps"] == 2
    assert demo.artifact_path(record).is_relative_to(beside) and demo.artifact_path(record).is_dir()
    assert demo.checkpoint_dir(helpers.lora(8), 42).is_relative_to(beside)
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "checkpoints").exists()
    assert demo.run(helpers.lora(8)) == [record], "the demo's own result is reused"
    again = demo.run(helpers.lora(8), force=True)[0]  # FORCE redoes the demo on purpose, and only the demo
    assert again["finished_at"] >= record["finished_at"] and standard.read_bytes() == kept
    loaded = results.load_or_reference(tmp_path)
    assert [r["training"]["steps"] for r in loaded.records] == [30], "04 does not mix the two"
    assert [found.records for found in loaded.others] == [(again,)]
