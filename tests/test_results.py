"""helpers.results: schema validation, atomic writes, and loading a folder of results files."""

import json
import os

import pytest

from helpers import results
from helpers.results import RUN_ORDER, ResultsError, load_all, problems, read, validate, write_atomic
from records import make_record


def valid_record(run_id: str = "lora-r16", method: str = "lora") -> dict:
    """Every field results_schema.json requires, with plausible values (the shared factory in tests/records.py)."""
    return make_record(run_id)


# ---------- validation ----------


@pytest.mark.parametrize("run_id, method", [("full", "full"), ("lora-r8", "lora"), ("qlora", "qlora")])
def test_valid_record_passes(run_id, method):
    record = valid_record(run_id, method)
    assert problems(record) == []
    assert validate(record) is record


def test_valid_record_fills_every_required_field():
    record = valid_record()
    assert set(results.SCHEMA["required"]) <= set(record)
    for key, spec in results.SCHEMA["properties"].items():
        if spec.get("type") == "object" and key in results.SCHEMA["required"]:  # "export" is added later, by 05
            assert set(spec["required"]) <= set(record[key]), key


def _without(path):
    def edit(record):
        *parents, last = path
        target = record
        for key in parents:
            target = target[key]
        del target[last]
    return edit


def _setting(path, value):
    def edit(record):
        *parents, last = path
        target = record
        for key in parents:
            target = target[key]
        target[last] = value
    return edit


BROKEN = {
    "no run_id": (_without(["run_id"]), "run_id"),
    "no eval": (_without(["eval"]), "eval"),
    "no memory categories": (_without(["memory", "categories"]), "categories"),
    "no activations": (_without(["memory", "categories", "activations"]), "activations"),
    "no training.loss_head": (_without(["training", "loss_head"]), "loss_head"),
    "no per-example losses": (_without(["eval", "per_example_after"]), "per_example_after"),
    "no environment.peft": (_without(["environment", "peft"]), "peft"),
    "seed is a string": (_setting(["seed"], "42"), "seed"),
    "steps is a float": (_setting(["training", "steps"], 30.5), "training.steps"),
    "lora is a list": (_setting(["lora"], [16, 32]), "lora"),
    "schema_version 1": (_setting(["schema_version"], 1), "schema_version"),
    "unknown method": (_setting(["method"], "prefix-tuning"), "method"),
    "run_id with capitals": (_setting(["run_id"], "LoRA_16"), "run_id"),
    "precision unknown": (_setting(["training", "precision"], "int8"), "precision"),
    "perplexity below 1": (_setting(["eval", "perplexity_after"], 0.5), "perplexity_after"),
    "unknown memory kind": (_setting(["memory", "device_peak_kind"], "rss"), "device_peak_kind"),
    "memory without its batch": (_without(["memory", "measured_batch"]), "memory"),
    "measured batch without tokens": (_without(["memory", "measured_batch", "tokens"]), "memory"),
    "evaluated under autocast": (_setting(["eval", "precision"], "bf16"), "eval.precision"),
    "status without the flag": (_without(["status", "worse_than_before"]), "worse_than_before"),
    "negative skipped steps": (_setting(["training", "skipped_steps"], -1), "skipped_steps"),
    "a skipped step 0": (_setting(["training", "skipped_at"], [0]), "skipped_at"),
    "trained tokens as text": (_setting(["training", "trained_tokens"], "3000"), "trained_tokens"),
    "budget flag not a boolean": (_setting(["status", "budget_changed"], "yes"), "budget_changed"),
    "negative paged bytes": (_setting(["memory", "paged_optimizer_bytes"], -1), "paged_optimizer_bytes"),
    "4-bit with 3 bits": (_setting(["quantization"], {"bits": 3, "quant_type": "nf4", "double_quant": True,
                                                      "compute_dtype": "float32"}), "quantization"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_record_fails(case):
    edit, where = BROKEN[case]
    record = valid_record()
    edit(record)
    found = problems(record)
    assert found, case
    assert any(where in line for line in found), found
    with pytest.raises(ResultsError, match=where.split(".")[-1]):
        validate(record)


def _outcome(steps: int, skipped_at: list[int], tokens_per_step: int = 100):
    from helpers.training import TrainingOutcome

    return TrainingOutcome(steps=steps, tokens=steps * tokens_per_step, target_tokens=steps * 50, seconds=1.0,
                           tokens_per_second=100.0, tokens_per_second_median=100.0, seconds_total=2.0,
                           optimizer="adamw_torch", learning_rate=1e-4, gradient_checkpointing=False,
                           loss_head="fused", trainable_dtypes=["float32"], resumed_from_step=None,
                           step_seconds={"forward_backward": 0.5, "data": 0.0, "optimizer_and_rest": 0.5},
                           skipped_at=skipped_at, trained_tokens=(steps - len(skipped_at)) * tokens_per_step)


@pytest.mark.parametrize("skipped_at, changed", [([], False), ([1], False), ([1, 2, 3], False), ([4], True),
                                                 ([1, 5], True), ([1, 2, 3, 4, 5], True)])
def test_skips_after_the_first_update_or_of_every_update_flag_the_run(skipped_at, changed):
    """README's rule: skips while the scaler finds its scale (before any update) are noted; a skip after an applied
    update, or no applied update at all, changes the token budget and flags the run."""
    status = results.run_status(7.0, 5.0, _outcome(5, skipped_at))
    assert status["budget_changed"] is changed and status["worse_than_before"] is False
    assert len(status["notes"]) == bool(skipped_at)
    if changed:
        assert f"skipped {len(skipped_at)} of its 5 updates" in status["notes"][0]
        assert f"it trained {100 * (5 - len(skipped_at))} of its 500 tokens" in status["notes"][0]
    elif skipped_at:
        assert "while finding its scale" in status["notes"][0] and "tolerated" in status["notes"][0]


def test_records_with_skip_counts_validate_and_older_ones_without_them_still_load(tmp_path):
    from helpers import measures

    outcome = _outcome(3, [2])
    new = make_record("lora-r8", training={"skipped_steps": 1, "skipped_at": [2], "trained_tokens": 200},
                      status=results.run_status(7.0, 4.5, outcome), memory={"paged_optimizer_bytes": 0})
    assert problems(new) == [] and new["status"]["budget_changed"] is True
    assert measures.flagged([new]) == [new] and measures.trained_tokens(new) == 200
    older = make_record("lora-r8")  # written before skips were counted: no skip fields, no budget flag
    assert "skipped_steps" not in older["training"] and "budget_changed" not in older["status"]
    write_atomic(older, tmp_path / "lora-r8-seed42.json")
    assert read(tmp_path / "lora-r8-seed42.json") == older
    assert measures.usable([older]) == [older] and measures.trained_tokens(older) == older["training"]["tokens"]


def test_extra_fields_are_allowed():
    record = valid_record()
    record["notes"] = "student comment"
    record["training"]["note"] = "resumed on Colab"
    assert problems(record) == []


# ---------- atomic writes ----------


def test_write_atomic_round_trips(tmp_path):
    record = valid_record()
    target = tmp_path / "runs" / "lora-r16.json"
    assert write_atomic(record, target) == target
    assert read(target) == record
    assert json.loads(target.read_text()) == record
    assert os.listdir(target.parent) == ["lora-r16.json"]


def _crashing_dump(obj, handle, **kwargs):
    text = json.dumps(obj, **kwargs)
    handle.write(text[: len(text) // 2])
    handle.flush()
    raise OSError("disk full (simulated)")


def _leftovers(directory):
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


def test_crash_mid_write_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "qlora.json"
    monkeypatch.setattr(results.json, "dump", _crashing_dump)
    with pytest.raises(OSError, match="simulated"):
        write_atomic(valid_record("qlora", "qlora"), target)
    assert not target.exists()
    assert _leftovers(tmp_path) == []
    assert os.listdir(tmp_path) == []


def test_crash_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "full.json"
    old = valid_record("full", "full")
    write_atomic(old, target)
    before = target.read_bytes()
    new = valid_record("full", "full")
    new["seed"] = 7
    monkeypatch.setattr(results.json, "dump", _crashing_dump)
    with pytest.raises(OSError, match="simulated"):
        write_atomic(new, target)
    assert target.read_bytes() == before
    assert read(target) == old
    assert _leftovers(tmp_path) == []
    assert os.listdir(tmp_path) == ["full.json"]


def test_invalid_record_is_refused_before_writing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(results.json, "dump", lambda *a, **k: calls.append(a))
    record = valid_record()
    del record["params"]
    target = tmp_path / "out" / "lora-r16.json"
    with pytest.raises(ResultsError, match="params"):
        write_atomic(record, target)
    assert calls == []
    assert not target.parent.exists()
    assert os.listdir(tmp_path) == []


# ---------- reading a folder ----------


def test_read_explains_each_rejection(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ResultsError, match="JSON"):
        read(tmp_path / "a.json")
    (tmp_path / "b.json").write_text("[1, 2]")
    with pytest.raises(ResultsError, match="object"):
        read(tmp_path / "b.json")
    old = valid_record()
    old["schema_version"] = 1  # written by an earlier version of the lab
    (tmp_path / "c.json").write_text(json.dumps(old))
    with pytest.raises(results.OlderSchema, match="older schema"):
        read(tmp_path / "c.json")
    old["schema_version"] = 99
    (tmp_path / "e.json").write_text(json.dumps(old))
    with pytest.raises(ResultsError, match="schema_version is 99"):
        read(tmp_path / "e.json")
    bad = valid_record()
    bad["eval"]["tokens"] = 0
    (tmp_path / "d.json").write_text(json.dumps(bad))
    with pytest.raises(ResultsError, match="eval.tokens"):
        read(tmp_path / "d.json")


def test_load_all_keeps_valid_and_explains_rejections(tmp_path):
    write_atomic(valid_record("lora-r8", "lora"), tmp_path / "lora-r8.json")
    (tmp_path / "broken.json").write_text('{"schema_version": 1, "run_id": "full"')  # cut off mid-write
    old = valid_record("full", "full")
    old["schema_version"] = 1
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "notes.txt").write_text("not a results file")

    records, rejected = load_all(tmp_path)
    assert [r["run_id"] for r in records] == ["lora-r8"]
    assert records[0] == valid_record("lora-r8", "lora")
    assert sorted(name for name, _ in rejected) == ["broken.json", "old.json"]
    reasons = dict(rejected)
    assert all(isinstance(reason, str) and reason for reason in reasons.values())
    assert "JSON" in reasons["broken.json"]
    assert reasons["old.json"].startswith("older schema")


def test_load_all_returns_run_order(tmp_path):
    specs = [("qlora", "qlora"), ("lora-r32", "lora"), ("full", "full"), ("lora-r8", "lora"), ("lora-r16", "lora")]
    # file names sort in yet another order, so neither file order nor write order can pass by accident
    for i, (run_id, method) in enumerate(specs):
        write_atomic(valid_record(run_id, method), tmp_path / f"{9 - i}-{run_id}.json")
    records, rejected = load_all(tmp_path)
    assert rejected == []
    assert tuple(r["run_id"] for r in records) == RUN_ORDER[:5] == ("full", "lora-r8", "lora-r16", "lora-r32", "qlora")
    assert RUN_ORDER[5:] == ("dora-r16", "rslora-r16", "pissa-r16", "loraplus-r16")  # notebook 04, after the five


def test_load_all_puts_unknown_runs_last_and_skips_hidden_and_human_eval(tmp_path):
    write_atomic(valid_record("lora-r64", "lora"), tmp_path / "a.json")
    write_atomic(valid_record("qlora", "qlora"), tmp_path / "b.json")
    write_atomic(valid_record("full", "full"), tmp_path / "c.json")
    (tmp_path / ".partial.json").write_text("{")
    (tmp_path / "human_eval.json").write_text(json.dumps({"ratings": []}))
    records, rejected = load_all(tmp_path)
    assert [r["run_id"] for r in records] == ["full", "qlora", "lora-r64"]
    assert rejected == []

