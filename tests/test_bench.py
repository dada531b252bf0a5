"""helpers.tools.bench and its parts: the FLOPs and MFU arithmetic (mfu), a row built from fake timings and the lever
chain (bench, pipelines), and the step timer on a tiny model (timing; seconds, no bundled model)."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from helpers.tools import bench, mfu, pipelines, timing
from helpers.tools.bench import COLUMNS
from helpers.tools.timing import PARTS, StepTime


def fake_step(seconds: float = 4.0, real: int = 100, slots: int = 400) -> StepTime:
    return StepTime(seconds=seconds, real_tokens=real, slots=slots, data=0.1, backbone=1.0, loss=1.5, train_step=3.0)


def test_flops_per_token():
    # full: 6N; LoRA: 4N (no weight gradients for the frozen base) + 6 x adapter params; attention 12 * L * h * ctx
    assert mfu.flops_per_token("full", 100, layers=2, width=8, context=3.0) == 600 + 12 * 2 * 8 * 3
    assert mfu.flops_per_token("lora", 100, 2, 8, 3.0, adapter_params=5) == 400 + 30 + 12 * 2 * 8 * 3


def test_mean_context_is_causal_within_each_example():
    assert mfu.mean_context([1, 3]) == pytest.approx((1 + (1 + 2 + 3)) / 4)


def test_mfu_percent():
    assert mfu.mfu_percent(50, 1e9, 100) == pytest.approx(50.0)  # 5e10 FLOP/s of a 1e11 peak


def test_matmul_parameters_counts_linear_layers_not_the_embedding(tiny_llama):
    c = tiny_llama.config
    kv = c.num_key_value_heads * c.hidden_size // c.num_attention_heads
    per_layer = 2 * c.hidden_size ** 2 + 2 * c.hidden_size * kv + 3 * c.hidden_size * c.intermediate_size
    expected = c.num_hidden_layers * per_layer + c.hidden_size * c.vocab_size  # LM head once
    assert mfu.matmul_parameters(tiny_llama) == expected


def test_row_from_fake_timings():
    steps = [fake_step(), fake_step()]
    row = bench.make_row("p", "full", "fp32", steps, naive_rate=12.5, flops=1e9, peak_gflops=100.0)
    assert list(row) == list(COLUMNS)
    assert row["tokens/s"] == 25.0 and row["× naive"] == 2.0 and row["padding %"] == 75.0
    assert row["MFU %"] == pytest.approx(25.0)
    assert (row["forward s"], row["LM head + loss s"], row["backward s"], row["data s"]) == (1.0, 0.5, 1.5, 0.1)
    assert sum(row[p] for p in PARTS) == pytest.approx(4.0)  # the parts add up to the step


def test_gains_multiply_to_the_total():
    p = pipelines
    rates = {p.NAIVE: 10.0, p.PADDED: 30.0, p.PACKED: 40.0, p.BF16: 60.0, p.LAB: 66.0, p.FUSED: 50.0}
    rows = [{"pipeline": name, "method": "lora-r8", "tokens/s": r} for name, r in rates.items()]
    found = bench.gains(rows, pipelines.LORA_CHAIN, "lora-r8")
    assert found["padding"] == 3.0 and found["LoRA dropout 0"] == pytest.approx(1.1)
    levers = [found[k] for k in ("padding", "packing", "bf16 autocast", "LoRA dropout 0")]
    assert math.prod(levers) == pytest.approx(found["total (lab / naive)"]) == pytest.approx(6.6)
    assert found["full logits instead of the fused LM head"] == pytest.approx(66 / 50)


def pad_right(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Pad to the longest with id 0, masked out of attention and loss."""
    width = max(len(e["input_ids"]) for e in examples)
    gap = [width - len(e["input_ids"]) for e in examples]
    return {"input_ids": torch.tensor([e["input_ids"] + [0] * g for e, g in zip(examples, gap)]),
            "labels": torch.tensor([e["input_ids"] + [-100] * g for e, g in zip(examples, gap)]),
            "attention_mask": torch.tensor([[1] * len(e["input_ids"]) + [0] * g for e, g in zip(examples, gap)])}


def test_step_timer_times_a_plain_trainer(tiny_llama, tmp_path):
    rows = [{"input_ids": list(range(3, 3 + n))} for n in (5, 9, 4, 7)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, use_cpu=True,
                             report_to="none", save_strategy="no", disable_tqdm=True, seed=0, data_seed=0)
    trainer = Trainer(model=tiny_llama, args=args, train_dataset=Dataset.from_list(rows), data_collator=pad_right)
    timer = timing.StepTimer().attach(trainer)
    trainer.train()
    assert len(timer.steps) == 2
    assert sum(s.real_tokens for s in timer.steps) == 5 + 9 + 4 + 7  # padding is not counted
    assert sum(s.slots for s in timer.steps) > 25
    for s in timer.steps:
        assert 0 < s.backbone < s.loss < s.train_step < s.seconds
    assert all(v >= 0 for v in timing.step_split(timer.steps).values())
