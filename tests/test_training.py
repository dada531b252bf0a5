"""helpers.training: packing without cross-talk, run specs as data, LoRA parameter counts, memory meter."""

import dataclasses
import time

import pytest
import torch
from peft import LoraConfig, get_peft_model

from helpers import training
from helpers.models import LLAMA_TARGETS
from helpers.training import (STANDARD_RUNS, CountingCollator, LoraSpec, MemoryMeter, QuantSpec,
                              expected_lora_parameters, full, lora, qlora)

# Three examples of different lengths; prompts masked with -100, the last token (2) is EOS.
EXAMPLES = [
    {"input_ids": [5, 6, 7, 8, 9, 2], "labels": [-100, -100, 7, 8, 9, 2]},
    {"input_ids": [10, 11, 12, 13, 14, 15, 16, 17, 18, 2], "labels": [-100, -100, -100, -100, 14, 15, 16, 17, 18, 2]},
    {"input_ids": [20, 21, 22, 2], "labels": [-100, 21, 22, 2]},
]


def one_by_one_loss(model) -> float:
    """Token-weighted mean of each example's own loss (each run alone, no packing)."""
    total, count = 0.0, 0
    for e in EXAMPLES:
        loss = model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]])).loss
        n = sum(1 for label in e["labels"][1:] if label != -100)
        total += loss.item() * n
        count += n
    return total / count


def test_collator_packs_into_one_unpadded_row():
    collator = CountingCollator()
    batch = collator(EXAMPLES)
    lengths = [len(e["input_ids"]) for e in EXAMPLES]
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["input_ids"][0].tolist() == [t for e in EXAMPLES for t in e["input_ids"]]
    assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]  # restart per example
    assert "attention_mask" not in batch  # no padding to mask
    assert collator.real_tokens == sum(lengths) == 20
    assert collator.slots == 20
    assert collator.pad_fraction == 0.0
    collator(EXAMPLES[:2])
    assert collator.real_tokens == 20 + 16
    assert collator.pad_fraction == 0.0


def test_fresh_collator_has_no_pad_fraction():
    assert CountingCollator().pad_fraction == 0.0


def test_packed_loss_equals_token_weighted_per_example_loss(tiny_llama):
    assert tiny_llama.config.use_cache is False
    tiny_llama.train()
    assert tiny_llama.config.attention_dropout == 0.0
    collator = CountingCollator()
    batch = collator(EXAMPLES)
    packed = tiny_llama(**batch).loss.item()
    assert packed == pytest.approx(one_by_one_loss(tiny_llama), abs=1e-5)
    assert collator.pad_fraction == 0.0
    assert collator.real_tokens == sum(len(e["input_ids"]) for e in EXAMPLES)


def test_packing_with_use_cache_on_lets_examples_attend_to_each_other(tiny_llama):
    """The trap load_model avoids: a KV cache in train mode drops the packed-sequence masking."""
    tiny_llama.train()
    tiny_llama.config.use_cache = True
    packed = tiny_llama(**CountingCollator()(EXAMPLES)).loss.item()
    separate = one_by_one_loss(tiny_llama)
    assert abs(packed - separate) > 1e-4


def test_packing_without_position_restarts_differs(tiny_llama):
    """Control: the equality above depends on the restarts, so it is not a coincidence of a random model."""
    tiny_llama.train()
    batch = CountingCollator()(EXAMPLES)
    del batch["position_ids"]
    assert abs(tiny_llama(**batch).loss.item() - one_by_one_loss(tiny_llama)) > 1e-4


# ---------- run specs ----------


def test_qlora_is_lora16_plus_quantization():
    q, l16 = dataclasses.asdict(qlora()), dataclasses.asdict(lora(16))
    differing = {key for key in q if q[key] != l16[key]}
    assert differing == {"run_id", "method", "quantization", "paged_optimizer_on_cuda"}
    assert (q["run_id"], q["method"], q["paged_optimizer_on_cuda"]) == ("qlora", "qlora", True)
    assert q["quantization"] == dataclasses.asdict(QuantSpec(bits=4, quant_type="nf4", double_quant=True))
    assert l16["quantization"] is None and l16["paged_optimizer_on_cuda"] is False
    assert q["lora"] == l16["lora"] == dataclasses.asdict(LoraSpec(16, 32))


@pytest.mark.parametrize("r", [1, 4, 8, 16, 32, 64])
def test_lora_alpha_is_twice_the_rank(r):
    spec = lora(r)
    assert spec.lora.r == r
    assert spec.lora.alpha == 2 * r
    assert spec.run_id == f"lora-r{r}" and spec.method == "lora"
    assert spec.learning_rate == training.LORA_LR


def test_lora_explicit_alpha():
    assert lora(8, alpha=8).lora.alpha == 8
    assert lora(8, alpha=0).lora.alpha == 0  # 0 is a value, not "use the default"


def test_standard_runs():
    assert tuple(s.run_id for s in STANDARD_RUNS) == ("full", "lora-r8", "lora-r16", "lora-r32", "qlora")
    assert [s.method for s in STANDARD_RUNS] == ["full", "lora", "lora", "lora", "qlora"]
    assert full().lora is None and full().quantization is None
    assert full().learning_rate == training.FULL_LR < training.LORA_LR


def test_target_modules_default_to_the_preset():
    assert training.target_modules(lora(8), "smollm2-135m-bundled") == list(LLAMA_TARGETS)
    assert training.target_modules(lora(8), "gpt2") == ["c_attn", "c_proj", "c_fc"]
    custom = dataclasses.replace(lora(8), lora=LoraSpec(8, 16, target_modules=("q_proj", "v_proj")))
    assert training.target_modules(custom, "smollm2-135m-bundled") == ["q_proj", "v_proj"]


# ---------- LoRA parameter count ----------


def test_expected_lora_parameters_matches_peft_and_hand_formula(tiny_llama):
    targets = list(LLAMA_TARGETS)
    r = 4
    expected = expected_lora_parameters(tiny_llama, targets, r)
    # hidden 32, 4 heads of 8 -> q, o: 32x32; 2 KV heads -> k, v: 32 -> 16; MLP 32 <-> 64. Per layer, r*(in+out):
    per_layer = r * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32) + (32 + 64) + (32 + 64) + (64 + 32))
    assert per_layer == 2048
    assert expected == 2 * per_layer
    config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=targets, bias="none",
                        task_type="CAUSAL_LM")
    trainable, _ = get_peft_model(tiny_llama, config).get_nb_trainable_parameters()
    assert trainable == expected


def test_expected_lora_parameters_counts_only_the_targets(tiny_llama):
    assert expected_lora_parameters(tiny_llama, ["q_proj", "v_proj"], 8) == 2 * 8 * ((32 + 32) + (32 + 16))
    assert expected_lora_parameters(tiny_llama, ["no_such_layer"], 8) == 0


# ---------- memory meter ----------


def test_memory_meter_sees_a_200_mb_tensor():
    meter = MemoryMeter("cpu")
    assert meter.kind == "cpu_rss_sampled"
    with meter.measure():
        big = torch.ones(50_000_000, dtype=torch.float32)  # 200 MB, every page touched
        time.sleep(0.1)  # let the sampler see it
        del big
    assert meter.peak_bytes >= 150_000_000


def test_memory_meter_idle_block_is_small():
    meter = MemoryMeter("cpu")
    with meter.measure():
        time.sleep(0.1)
    assert 0 <= meter.peak_bytes < 50_000_000


def _tiny_qlora(path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from helpers.models import bnb_config
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb_config("nf4", True, torch.float32),
                                                 device_map={"": "cpu"})
    model.config.use_cache = False
    torch.manual_seed(1)
    return model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], lora_dropout=0.0,
                             init_lora_weights=False)  # non-zero B: gradients reach A in every layer


def _first_layer_grad(model, config, evaluate_first):
    from peft import get_peft_model
    torch.manual_seed(2)
    peft_model = get_peft_model(model, config)
    ids = torch.tensor([[5, 9, 17, 33, 60, 61, 70, 90]])
    if evaluate_first:  # what every run does: measure "before", then train
        peft_model.eval()
        with torch.no_grad():
            peft_model(input_ids=ids)
    peft_model.train()
    peft_model(input_ids=ids, labels=ids).loss.backward()
    layer0 = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    grad = layer0.lora_A["default"].weight.grad
    return torch.zeros_like(layer0.lora_A["default"].weight) if grad is None else grad.clone()  # None: cut off


def test_qlora_gradients_survive_the_before_evaluation(tmp_path):
    """bitsandbytes repacks 4-bit weights for CPU inference on an eval forward, through a kernel with no
    autograd; load_model's keep_4bit_layers_trainable must stop that or layer 0 gets a wrong gradient."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers.models import keep_4bit_layers_trainable
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path)
    model, config = _tiny_qlora(tmp_path)
    reference = _first_layer_grad(keep_4bit_layers_trainable(model), config, evaluate_first=False)
    model, config = _tiny_qlora(tmp_path)
    fixed = _first_layer_grad(keep_4bit_layers_trainable(model), config, evaluate_first=True)
    assert reference.abs().sum() > 0
    assert torch.allclose(fixed, reference, atol=1e-6)
    from bitsandbytes.functional import has_avx512bf16
    if has_avx512bf16():  # the trap is real on this CPU: without the fix the gradient differs
        model, config = _tiny_qlora(tmp_path)
        broken = _first_layer_grad(model, config, evaluate_first=True)
        assert not torch.allclose(broken, reference, atol=1e-4)
