"""The lab's training path under torchrun: two CPU processes (gloo, DDP) train the smoke run with the same global
batch and end where one process does; one results file, written by the main process, records the layout and each
process's memory. And the memory prediction knows about sharding."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from helpers import memory
from helpers.specs import full, qlora

ROOT = Path(__file__).resolve().parent.parent
# Measured on this path in fp32: 2 processes x 1 example vs 1 process x 2 examples differ by ~1e-6 in loss after
# training (the all-reduce sums in another order). A real layout bug (per-process loss means instead of the whole
# step's tokens, another data order) moves it by 1e-2 or more, so 1e-4 separates the two by two orders each way.
TOLERANCE = 1e-4


def launch(command: list[str], results: Path) -> subprocess.Popen:
    # One thread per process (torchrun sets the same for its workers): the 1-process reference runs beside the
    # 2-process one, three processes on two cores, without oversubscribing them.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "LAB_PROFILE": "smoke", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*command, "-m", "helpers.tools.distributed", "--runs", "lora-r8", "--results",
                             str(results), "--fp32"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def result_of(process: subprocess.Popen, results: Path) -> dict:
    out, _ = process.communicate(timeout=900)
    assert process.returncode == 0, out[-4000:]
    files = sorted(results.glob("lora-r8-seed*.json"))
    assert len(files) == 1, "one results file per run, written once"
    return json.loads(files[0].read_text())


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    processes = (launch([torchrun, "--standalone", "--nproc_per_node", "2"], tmp_path / "two"),
                 launch([sys.executable], tmp_path / "one"))
    two, one = (result_of(p, tmp_path / name) for p, name in zip(processes, ("two", "one")))
    t2, t1 = two["training"], one["training"]
    assert (t2["processes"], t2["per_device_batch"], t2["global_batch"]) == (2, 1, 2)
    assert (t1["processes"], t1["per_device_batch"], t1["global_batch"]) == (1, 2, 2)
    assert t2["tokens"] == t1["tokens"] and t2["steps"] == t1["steps"], "the same token budget"
    assert two["eval"]["loss_after"] == pytest.approx(one["eval"]["loss_after"], abs=TOLERANCE)
    assert [e["loss"] for e in t2["log"]] == pytest.approx([e["loss"] for e in t1["log"]], abs=TOLERANCE)
    ranks = two["memory"]["per_process"]
    assert [p["rank"] for p in ranks] == [0, 1] and all(p["categories"]["weights"] > 0 for p in ranks)
    assert two["config_fingerprint"] != one["config_fingerprint"], "a 2-process result is not reused for 1 process"


TINYLLAMA = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                        num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False)


def test_sharding_divides_weights_gradients_and_optimizer_state():
    one = memory.predict(TINYLLAMA, full(), "fp16", "cuda", 2048, targets=["q_proj"])
    four = memory.predict(TINYLLAMA, full(), "fp16", "cuda", 2048, processes=4, sharded=True, targets=["q_proj"])
    buffers = memory.weight_split(TINYLLAMA)["fp32_bytes"] - 4 * memory.weight_split(TINYLLAMA)["fp32_params"]
    assert 0 < buffers < 1000  # the rotary frequencies: FSDP shards parameters, not buffers
    assert four["weights"] == pytest.approx((one["weights"] - buffers) / 4 + buffers, abs=4)
    for part in ("gradients", "optimizer"):
        assert four[part] == pytest.approx(one[part] / 4, abs=4)
    assert four["activations"] == one["activations"], "activations are per device: each holds its own tokens"
    ddp = memory.predict(TINYLLAMA, full(), "fp16", "cuda", 2048, processes=4, sharded=False, targets=["q_proj"])
    assert ddp["weights"] == one["weights"], "DDP replicates the whole model on every device"
    # ~18 GB for weights, gradients and AdamW on one T4 becomes about a quarter of it per GPU on four
    assert (one["weights"] + one["gradients"] + one["optimizer"]) / 1e9 == pytest.approx(17.6, abs=0.3)
    memory.check_fits(four, int(15e9), "full (4 GPUs)", {})  # fits a T4 each once sharded
    with pytest.raises(memory.MemoryFitError, match="QLoRA"):
        memory.check_fits(one, int(15e9), "full (1 GPU)",
                          {"QLoRA (helpers.qlora(16))": memory.predict(TINYLLAMA, qlora(), "fp16", "cuda", 2048,
                                                                        targets=["q_proj"])})


def test_fsdp_leaves_qlora_4bit_weights_whole_on_every_gpu():
    """accelerate's FSDP leaves frozen uint8 Params4bit out of sharding (a uint8 weight would lose its quantization
    state), so each GPU holds all the 4-bit weights; the fp32 rest (embeddings, norms, adapters) is sharded."""
    one = memory.predict(TINYLLAMA, qlora(16), "fp16", "cuda", 2048, targets=["q_proj"])
    four = memory.predict(TINYLLAMA, qlora(16), "fp16", "cuda", 2048, processes=4, sharded=True, targets=["q_proj"])
    split = memory.weight_split(TINYLLAMA)
    assert split["nf4_bytes"] > 0.45e9
    fp32_and_adapters = one["weights"] - split["nf4_bytes"]
    assert four["weights"] == pytest.approx(split["nf4_bytes"] + fp32_and_adapters / 4, abs=1000)
    assert four["weights"] > one["weights"] / 2, "not a quarter: the 4-bit weights are most of them"


def test_a_4bit_base_loads_onto_this_processs_own_gpu(monkeypatch):
    """Under torchrun each process loads its 4-bit base onto the GPU of its LOCAL_RANK, where accelerate trains it:
    a model on another GPU (GPU 0 from rank 1) is refused by accelerate."""
    from conftest import make_tiny_llama

    from helpers import models

    calls = []

    class Stub:
        @staticmethod
        def from_pretrained(source, **kwargs):
            calls.append(kwargs["device_map"])
            return make_tiny_llama()

    monkeypatch.setattr(models, "AutoModelForCausalLM", Stub)
    quantization = models.bnb_config("nf4", True, torch.float16)
    monkeypatch.setenv("LOCAL_RANK", "1")
    models.load_model("smollm2-135m", "cuda", quantization)
    monkeypatch.delenv("LOCAL_RANK")
    models.load_model("smollm2-135m", "cuda", quantization)  # one process: GPU 0
    assert calls == [{"": 1}, {"": 0}]
