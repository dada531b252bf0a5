"""helpers.runs.Lab on the real bundled model (smoke budget): runs reproduce across processes, a killed run resumes
from its checkpoint and ends where an uninterrupted one does, stale or damaged results are not reused, and runs that
diverge or end worse than they started are never passed off as results."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import helpers
from helpers import adapters, results, training
from helpers.environment import choose_precision

ROOT = Path(__file__).resolve().parent.parent
RUN = """
import json, sys
import helpers
lab = helpers.Lab("smoke", results=sys.argv[1], max_steps=int(sys.argv[2]), checkpoint_steps=int(sys.argv[3]),
                  train_examples=16)
r = lab.run(helpers.lora(8))[0]
print("RESULT " + json.dumps({"loss_after": r["eval"]["loss_after"], "tokens": r["training"]["tokens"],
                              "log": [[e["loss"], e["grad_norm"]] for e in r["training"]["log"]],
                              "resumed": r["training"]["resumed_from_step"]}))
"""


def run_in_fresh_process(results_dir: Path, steps: int = 2, checkpoints: int = 0, **popen) -> subprocess.Popen:
    # One thread each, so two of these run side by side on a 2-core machine without oversubscribing it (most of a
    # smoke run is the process start-up, which then overlaps).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **popen.pop("env", {})}
    return subprocess.Popen([sys.executable, "-c", RUN, str(results_dir), str(steps), str(checkpoints)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, **popen)


def result_of(process: subprocess.Popen) -> dict:
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out[-3000:]
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_killed_run_resumes_from_its_checkpoint_and_matches(tmp_path):
    """Two fresh processes train the same spec and seed bit-identically (adapter init, data order and dropout are all
    seeded): the one killed by SIGKILL mid-training (no chance to clean up) logged exactly the uninterrupted one's
    losses and gradient norms up to its last checkpoint. Run again, it resumes from that checkpoint and ends with the
    uninterrupted run's numbers."""
    steps, every = 4, 2
    uninterrupted = run_in_fresh_process(tmp_path / "straight", steps, every)  # runs beside the victim
    folder = tmp_path / "killed"
    progress = tmp_path / "progress.log"
    progress.write_text("")
    victim = run_in_fresh_process(folder, steps, every, env={training.PROGRESS_ENV: str(progress)})
    deadline = time.time() + 600
    while "step 3/4" not in progress.read_text():  # checkpoint-2 is complete once step 3 has started
        assert victim.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    reference = result_of(uninterrupted)
    assert not list(folder.rglob("lora-r8-seed*.json")), "a killed run leaves no results file"
    [state] = folder.rglob("checkpoint-2/trainer_state.json")
    logged = [[e["loss"], e["grad_norm"]] for e in json.loads(state.read_text())["log_history"] if "loss" in e]
    assert len(logged) == 2 and logged == reference["log"][:2], "bit-identical, not approximately equal"
    resumed = result_of(run_in_fresh_process(folder, steps, every))
    assert resumed["resumed"] == 2
    assert resumed["loss_after"] == pytest.approx(reference["loss_after"], abs=1e-4)
    assert resumed["tokens"] == reference["tokens"]
    assert [loss for loss, _ in resumed["log"]] == pytest.approx([loss for loss, _ in reference["log"]], abs=1e-4)
    assert not any(folder.rglob("checkpoint-*")), "checkpoints are removed once the run is done"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return helpers.Lab("smoke", results=tmp_path_factory.mktemp("results"))


def test_stale_or_damaged_results_are_run_again(lab, monkeypatch, capsys):
    spec = helpers.lora(8)
    record = lab.run(spec)[0]
    assert lab.finished(spec, 42) == record
    monkeypatch.setattr(results, "code_version", lambda: "other code")
    assert lab.finished(spec, 42) is None and "other settings, data, packages or code" in capsys.readouterr().out
    monkeypatch.undo()
    monkeypatch.setattr(results, "package_versions", lambda: {"torch": "9.9"})
    assert lab.finished(spec, 42) is None, "another torch version is another run"
    monkeypatch.undo()
    weights = next(lab.artifact_path(record).glob("*.safetensors"))
    intact = weights.read_bytes()
    weights.write_bytes(intact[:-10])
    try:
        assert lab.finished(spec, 42) is None and "missing or damaged" in capsys.readouterr().out
    finally:
        weights.write_bytes(intact)  # the memory test below reads this run instead of training it again


def test_a_diverged_run_writes_nothing(lab, monkeypatch):
    real = training.LabTrainer.compute_loss
    monkeypatch.setattr(training.LabTrainer, "compute_loss", lambda self, *a, **k: real(self, *a, **k) * float("nan"))
    with pytest.raises(training.DivergedError, match="learning rate"):
        lab.run_seed(helpers.lora(16), 42)
    assert not lab.result_path("lora-r16", 42).exists()
    assert not (lab.results_dir / "artifacts" / "lora-r16-seed42").exists()


def test_a_run_that_ends_worse_is_flagged(lab):
    absurd = helpers.specs.RunSpec("lora-r8-hot", lora=helpers.specs.lora_config(8), learning_rate=0.5)
    record = lab.run_seed(absurd, 42)
    assert record["eval"]["perplexity_after"] > record["eval"]["perplexity_before"]
    assert record["status"]["worse_than_before"] is True and "made the model worse" in record["status"]["notes"][0]
    assert helpers.measures.flagged([record]) == [record] and helpers.measures.usable([record]) == []
    # no loss scaler outside fp16: every update applied, every token trained; torch's AdamW pages nothing
    assert record["training"]["skipped_steps"] == 0 and record["training"]["skipped_at"] == []
    assert record["training"]["trained_tokens"] == record["training"]["tokens"] > 0
    assert record["status"]["budget_changed"] is False and record["memory"]["paged_optimizer_bytes"] == 0


def test_a_seed_change_leaves_the_held_out_set_identical(lab, tmp_path):
    """Training seeds change adapter init, data order and dropout, never which examples are trained on or scored."""
    other = helpers.Lab("smoke", results=tmp_path, seeds=[7, 8])
    assert other.seeds == (7, 8) and lab.seeds != other.seeds
    assert other.data.eval["input_ids"] == lab.data.eval["input_ids"]
    assert other.data.eval["labels"] == lab.data.eval["labels"]
    assert sorted(map(tuple, other.data.train["input_ids"])) == sorted(map(tuple, lab.data.train["input_ids"]))
    assert other.data.fingerprint == lab.data.fingerprint
    assert other.fingerprint(helpers.lora(8), 7) != lab.fingerprint(helpers.lora(8), 42), "but the run is another run"


def test_a_students_own_lora_config_runs_through_the_same_path(lab):
    """An attention-only LoraConfig typed in a cell: trained, measured and recorded like the standard runs, with
    PEFT's trainable count, and the config the trained model carries is the one the spec shows."""
    from peft import LoraConfig

    spec = helpers.RunSpec("attn-r8", lora=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    shown = lab.resolve(spec)
    trainer = lab.trainer(spec)
    peft_count = trainer.model.get_nb_trainable_parameters()[0]
    carried = trainer.model.peft_config["default"]
    assert helpers.specs.config_fields(carried) == helpers.specs.config_fields(shown.lora)
    assert helpers.specs.show_config(carried) == helpers.specs.show_config(shown.lora)
    # q_proj: 576 -> 576, v_proj: 576 -> 192 (3 KV heads of 64) in each of SmolLM2's 30 layers
    assert peft_count == 30 * 8 * ((576 + 576) + (576 + 192))
    del trainer
    record = lab.run(spec)[0]
    assert results.problems(record) == []
    assert record["run_id"] == "attn-r8" and record["method"] == "lora"
    assert record["params"]["trainable"] == record["params"]["expected_trainable"] == peft_count
    assert record["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert record["lora"]["config"] == helpers.specs.config_fields(shown.lora)
    saved = json.loads((lab.artifact_path(record) / "adapter_config.json").read_text())
    assert sorted(saved["target_modules"]) == ["q_proj", "v_proj"] and saved["r"] == 8 and saved["lora_alpha"] == 16


# ---------------------------------------------------------------- the instruments: memory and perplexity

def test_memory_is_measured_on_the_largest_batch_the_same_for_every_seed(lab):
    """The categories, step peak and prediction are for the batch of the longest training examples, whatever order
    a seed draws them in: two seeds measure the same tokens and the same activations."""
    spec = helpers.lora(8)
    lengths = sorted((len(ids) for ids in lab.data.train["input_ids"]), reverse=True)
    largest = sum(lengths[:lab.profile.batch_size])
    first, second = lab.run_seed(spec, 42), lab.run_seed(spec, 7)
    for record in (first, second):
        memory = record["memory"]
        assert memory["measured_batch"]["tokens"] == largest == lab.largest_batch_tokens()
        assert memory["measured_batch"]["train_indices"] == lab.largest_batch()
        assert memory["predicted"] == lab.predict_memory(spec), "the prediction and the fit check use the same batch"
    a, b = first["memory"], second["memory"]
    assert a["categories"]["activations"] == b["categories"]["activations"] > 0
    assert all(a["categories"][k] == b["categories"][k] for k in ("weights", "gradients", "optimizer"))
    assert abs(a["step_peak_bytes"] / b["step_peak_bytes"] - 1) < 0.02


@torch.no_grad()
def fp32_perplexity(model: torch.nn.Module, dataset) -> float:
    """The independent recomputation: each example alone (no packing), fp32, log-softmax in float64."""
    model.eval()
    nll, count = 0.0, 0
    for example in dataset:
        ids, targets = torch.tensor([example["input_ids"]]), torch.tensor(example["labels"][1:])
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
        keep = targets != -100
        nll -= log_probs[keep].gather(1, targets[keep][:, None]).sum().item()
        count += int(keep.sum())
    return math.exp(nll / count)


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """A smoke LoRA run on the bf16 path (an AMX CPU's or an A100's precision; emulated on a CPU without bf16, where
    one step of one 123-token example took ~30 s: hence one step, one example, examples of at most 64 tokens, no
    answers). The evaluation still packs several examples (held-out) and text windows (general text) per row."""
    bf16_lab = helpers.Lab("smoke", results=tmp_path_factory.mktemp("bf16"), max_steps=1, batch_size=1,
                           generation_prompts=0, max_length=64)
    bf16_lab.env = dataclasses.replace(bf16_lab.env, precision=choose_precision("cpu", native_bf16=True))
    return bf16_lab, bf16_lab.run(helpers.lora(8))[0]


def test_perplexity_of_a_bf16_run_equals_an_fp32_recomputation_one_example_at_a_time(bf16_run):
    """Held-out and general-text perplexity, before and after, within 0.02% of the recomputation: the instrument is
    exact whatever the training precision (under bf16 autocast it was 0.06-0.15% off, either way)."""
    bf16_lab, record = bf16_run
    assert record["training"]["precision"] == "bf16" and record["eval"]["precision"] == "fp32"
    trained, base = adapters.reload(bf16_lab, record), bf16_lab.base_model()
    for key, dataset in (("eval", bf16_lab.data.eval), ("forgetting", bf16_lab.forgetting_set)):
        assert record[key]["perplexity_after"] == pytest.approx(fp32_perplexity(trained, dataset), rel=2e-4), key
        assert record[key]["perplexity_before"] == pytest.approx(fp32_perplexity(base, dataset), rel=2e-4), key
