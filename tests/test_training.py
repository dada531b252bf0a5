"""helpers.training on TRL's SFTTrainer: each TRL default that matters set on purpose, packing without cross-talk,
completion-only masking as SFTTrainer does it, fp32 QLoRA adapters, exact token accounting, a stop on NaN."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import prepare_model_for_kbit_training
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from helpers import data, training
from helpers.environment import Environment, choose_precision
from helpers.profiles import get_profile
from helpers import specs
from helpers.specs import LORA_ALPHA, STANDARD_RUNS, full, lora, qlora
from helpers.training import StepRecord, _rate, expected_lora_parameters, make_trainer, sft_settings, train

# Three examples of different lengths; prompts masked with -100, the last token (2) is EOS.
EXAMPLES = [
    {"input_ids": [5, 6, 7, 8, 9, 2], "labels": [-100, -100, 7, 8, 9, 2]},
    {"input_ids": [10, 11, 12, 13, 14, 15, 16, 17, 18, 2], "labels": [-100, -100, -100, -100, 14, 15, 16, 17, 18, 2]},
    {"input_ids": [20, 21, 22, 2], "labels": [-100, 21, 22, 2]},
]


def env(precision: str = "fp32", device: str = "cpu") -> Environment:
    chosen = {"fp32": choose_precision("cpu"), "bf16": choose_precision("cpu", None, True),
              "fp16": choose_precision("cuda", (7, 5))}[precision]
    return Environment(False, device, "test", (7, 5) if device == "cuda" else None, chosen, True)


def collate(examples):
    """TRL's padding-free collator, exactly what SFTTrainer builds for padding_free=True."""
    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)


def one_by_one_loss(model) -> float:
    """Token-weighted mean of each example's own loss (each run alone, no packing)."""
    total, count = 0.0, 0
    for e in EXAMPLES:
        loss = model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]])).loss
        n = sum(1 for label in e["labels"][1:] if label != -100)
        total += loss.item() * n
        count += n
    return total / count


# ---------------------------------------------------------------- packing

def test_packed_batch_is_one_unpadded_row_with_restarting_positions():
    batch = collate(EXAMPLES)
    lengths = [len(e["input_ids"]) for e in EXAMPLES]
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    assert "attention_mask" not in batch  # nothing to mask: no padding


def test_packed_loss_equals_token_weighted_per_example_loss(tiny_llama):
    assert tiny_llama.config.use_cache is False
    tiny_llama.train()
    assert tiny_llama.config.attention_dropout == 0.0
    packed = tiny_llama(**collate(EXAMPLES)).loss.item()
    assert packed == pytest.approx(one_by_one_loss(tiny_llama), abs=1e-5)


def test_packing_with_use_cache_on_lets_examples_attend_to_each_other(tiny_llama):
    """The trap load_model avoids: a KV cache in train mode drops the packed-sequence masking."""
    tiny_llama.train()
    tiny_llama.config.use_cache = True
    assert abs(tiny_llama(**collate(EXAMPLES)).loss.item() - one_by_one_loss(tiny_llama)) > 1e-4


def test_packing_without_position_restarts_differs(tiny_llama):
    """Control: the equality above depends on the restarts, so it is not a coincidence of a random model."""
    tiny_llama.train()
    batch = collate(EXAMPLES)
    batch["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]
    for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"):
        batch.pop(key)
    assert abs(tiny_llama(**batch).loss.item() - one_by_one_loss(tiny_llama)) > 1e-4


# ---------------------------------------------------------------- completion-only masking, as SFTTrainer does it

ROWS = [{"instruction": "Say hello to the class.", "input": "twenty students", "output": "Hello, everyone!"},
        {"instruction": "What is a tuple?", "input": "", "output": "An immutable sequence."},
        {"instruction": "Name a prime.", "input": "", "output": "Seven."}]


def test_completion_only_masking_on_the_real_chat_template(real_tokenizer):
    tok = real_tokenizer
    example = data.to_example(ROWS[0], "instruction", conversational=True)
    tokenized = data.tokenize([example], tok)[0]
    prompt_ids = tok.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]
    n = len(prompt_ids)
    assert tokenized["input_ids"][:n] == list(prompt_ids)
    assert tokenized["labels"][:n] == [-100] * n, "every prompt token (system, user, assistant header) is context"
    learned = tokenized["labels"][n:]
    assert learned == tokenized["input_ids"][n:] and -100 not in learned
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id in learned, "the end of turn is a target"
    assert tok.decode(learned) == "Hello, everyone!<|im_end|>\n"
    assert "twenty students" in tok.decode(prompt_ids) and "<|im_start|>assistant" in tok.decode(prompt_ids)


def test_without_a_chat_template_the_seed_template_is_used(real_tokenizer):
    example = data.to_example(ROWS[0], "instruction", conversational=False)
    assert example["prompt"] == "### Instruction:\nSay hello to the class.\n\n### Input:\ntwenty students\n\n### Response:\n"
    tokenized = data.tokenize([example], real_tokenizer)[0]
    learned = [t for t in tokenized["labels"] if t != -100]
    assert real_tokenizer.decode(learned) == "Hello, everyone!<|im_end|>"  # TRL appends the EOS to the completion


# ---------------------------------------------------------------- TRL's defaults, set on purpose

def test_trl_defaults_are_the_traps_the_lab_avoids(tmp_path):
    """What SFTConfig does when nobody sets these: bf16 on, activation checkpointing on, truncation at 1024."""
    default = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert default.bf16 is True and default.activation_checkpointing is True and default.max_length == 1024


@pytest.mark.parametrize("precision, fp16, bf16", [("fp32", False, False), ("bf16", False, True), ("fp16", True, False)])
def test_sft_settings_are_explicit(precision, fp16, bf16, tmp_path):
    profile = get_profile("cpu")
    for spec in STANDARD_RUNS:
        s = sft_settings(spec, profile, env(precision, "cuda" if precision == "fp16" else "cpu"), 7, tmp_path)
        assert (s["fp16"], s["bf16"]) == (fp16, bf16), "a T4 gets fp16 AMP, never TRL's default bf16"
        assert s["activation_checkpointing"] is False, "off for every method alike"
        assert s["max_length"] is None and s["padding_free"] is True and s["packing"] is False
        assert s["logging_steps"] == profile.logging_steps and s["max_steps"] == profile.max_steps
        assert s["optim"] == "adamw_torch", "the same optimizer for every standard run"
        assert s["learning_rate"] == profile.learning_rate(spec.method)
        assert s["seed"] == s["data_seed"] == 7
        assert s["report_to"] == "none" and s["eval_strategy"] == "no"
    assert sft_settings(full(), profile, env(), 1, tmp_path, report_to="wandb")["report_to"] == "wandb"


def test_sft_config_built_on_cpu_keeps_the_settings(tmp_path):
    config = training.sft_config(lora(8), get_profile("smoke"), env("fp32"), 1, tmp_path)
    assert config.bf16 is False and config.fp16 is False
    assert config.activation_checkpointing is False and config.gradient_checkpointing is False


def _tiny_4bit(tmp_path: Path, compute_dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    from conftest import make_tiny_llama
    from helpers.models import bnb_config, keep_4bit_layers_trainable
    make_tiny_llama().save_pretrained(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny", quantization_config=bnb_config("nf4", True,
                                                 compute_dtype), device_map={"": "cpu"}, dtype=torch.float32)
    model.config.use_cache = False
    return prepare_model_for_kbit_training(keep_4bit_layers_trainable(model), use_gradient_checkpointing=False)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_qlora_trainable_weights_stay_fp32(precision, tmp_path, real_tokenizer, monkeypatch):
    """TRL casts a quantized model's adapters to bf16; the lab casts them back. fp16 is a T4's setting: the model
    gets its fp16 compute dtype, while the trainer itself runs on this CPU (a CPU cannot run fp16 AMP)."""
    lab_env = env(precision, "cpu")
    model = _tiny_4bit(tmp_path, lab_env.precision.dtype)
    cpu_flags = dataclasses.replace(lab_env, precision=choose_precision("cpu"))
    real_settings = training.sft_settings
    monkeypatch.setattr(training, "sft_settings", lambda spec, profile, env, *a, **k: real_settings(spec, profile,
                                                                                                   cpu_flags, *a, **k))
    profile = dataclasses.replace(get_profile("smoke"), checkpoint_steps=0)
    trainer = make_trainer(model, qlora(), profile, lab_env, Dataset.from_list(EXAMPLES), real_tokenizer, 1,
                           tmp_path / "out", "t")
    trainable = {n: p.dtype for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and set(trainable.values()) == {torch.float32}
    # The trap is real: SFTTrainer alone leaves them in bf16.
    bare = SFTTrainer(model=_tiny_4bit(tmp_path / "again", lab_env.precision.dtype),
                      args=training.sft_config(qlora(), profile, cpu_flags, 1, tmp_path / "bare"),
                      train_dataset=Dataset.from_list(EXAMPLES), processing_class=real_tokenizer,
                      peft_config=specs.resolve(qlora(), profile.model, cpu_flags.precision.dtype).lora)
    assert {p.dtype for p in bare.model.parameters() if p.requires_grad} == {torch.bfloat16}


# ---------------------------------------------------------------- tokens, time, divergence

def _small_trainer(tiny_llama, real_tokenizer, tmp_path, examples, steps=2, batch=2):
    profile = dataclasses.replace(get_profile("smoke"), max_steps=steps, batch_size=batch, checkpoint_steps=0,
                                  logging_steps=1)
    return make_trainer(tiny_llama, lora(4), profile, env("fp32"), Dataset.from_list(examples), real_tokenizer, 3,
                        tmp_path, "t")


def test_tokens_counted_are_the_ones_trained(tiny_llama, real_tokenizer, tmp_path):
    examples = [{"input_ids": [3 + (i + j) % 100 for j in range(5 + 3 * i)], "labels": [-100] * 2 +
                 [3 + (i + j) % 100 for j in range(2, 5 + 3 * i)]} for i in range(8)]
    trainer = _small_trainer(tiny_llama, real_tokenizer, tmp_path, examples, steps=2, batch=2)
    order = [b for _, b in zip(range(3), trainer.get_train_dataloader())]  # same seed: the order training uses
    outcome = train(trainer)
    expected = [int(b["input_ids"].numel()) for b in order]
    assert outcome.tokens == sum(expected[:2]), "two steps' tokens, not the batch the loader fetched ahead"
    assert outcome.target_tokens == sum(int((b["labels"][:, 1:] != -100).sum()) for b in order[:2])
    assert [s.tokens for s in trainer.steps] == expected[:2]
    # the record's step times: the timed steps (not step 1, the warm-up), from which its rates recompute
    assert [row[:2] for row in outcome.step_times] == [[2, expected[1]]]
    assert outcome.step_times[0][1] / outcome.step_times[0][2] == pytest.approx(outcome.tokens_per_second, rel=1e-3)


def test_throughput_leaves_out_the_warmup_step():
    steps = [StepRecord(1, 10.0, 100, 50, 9.0, 0.1, True), StepRecord(2, 1.0, 100, 50, 0.9, 0.0, False),
             StepRecord(3, 1.0, 300, 50, 0.9, 0.0, False)]
    assert _rate(steps) == (200.0, 2.0)
    resumed = steps + [StepRecord(4, 5.0, 100, 50, 4.0, 0.0, True), StepRecord(5, 2.0, 100, 50, 1.9, 0.0, False)]
    assert _rate(resumed) == (500 / 4.0, 4.0), "a resumed process's first step is warm-up too"


def test_checkpoint_saves_are_not_training_time(tiny_llama, real_tokenizer, tmp_path, monkeypatch):
    from transformers.trainer_utils import SaveStrategy
    trainer = _small_trainer(tiny_llama, real_tokenizer, tmp_path, EXAMPLES, steps=3)
    trainer.args.save_strategy, trainer.args.save_steps = SaveStrategy.STEPS, 1
    library_save = SFTTrainer._save_checkpoint  # what LabTrainer._save_checkpoint calls first: a slow disk, say
    monkeypatch.setattr(SFTTrainer, "_save_checkpoint", lambda self, *a: (time.sleep(1.0), library_save(self, *a)))
    trainer.train()
    assert all(s.seconds < 1.0 for s in trainer.steps), "a 1 s checkpoint save counted in no step's time"


def test_the_measured_step_runs_on_the_given_examples_and_leaves_the_run_as_it_was(tiny_llama, real_tokenizer,
                                                                                 tmp_path):
    """LabTrainer.measure_step after training: a whole optimizer step (AdamW's state exists, gradients are made and
    freed) on exactly the examples given, while the trained weights, the RNG, the step records and the schedule stay
    what training left."""
    from helpers import memory
    trainer = _small_trainer(tiny_llama, real_tokenizer, tmp_path, EXAMPLES, steps=2)
    outcome = train(trainer)
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    records, lr, rng = list(trainer.steps), trainer.lr_scheduler.get_last_lr(), torch.get_rng_state()
    for group in trainer.optimizer.param_groups:  # the schedule ends at 0: a rate that would move the weights
        group["lr"] = 1e-2
    largest = data.longest_examples(trainer.train_dataset, 2)
    assert largest == [1, 0]
    measured = trainer.measure_step(largest, memory.StepMemoryProbe())
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in trainable)
    assert measured["tokens"] == len(EXAMPLES[1]["input_ids"]) + len(EXAMPLES[0]["input_ids"])
    assert measured["gradients"] == 4 * n and measured["optimizer"] == 8 * n + 4 * len(trainable)
    assert measured["activations"] > 0 and measured["step_peak"] >= measured["weights"] + measured["optimizer"]
    assert all(torch.equal(p, weights[name]) for name, p in trainer.model.named_parameters()), "weights changed"
    assert all(p.grad is None for p in trainer.model.parameters()) and trainer.probe is None
    assert trainer.steps == records and trainer.lr_scheduler.get_last_lr() == lr
    assert torch.equal(torch.get_rng_state(), rng) and outcome.steps == trainer.state.global_step == 2


def _loss_scaler_skipping(monkeypatch, skip: set[int]) -> None:
    """What accelerate's fp16 path does when GradScaler finds inf gradients, on a CPU that has no scaler: at each
    optimizer step numbered in `skip` no update is applied, and the flag accelerator.optimizer_step_was_skipped reads
    is set (AcceleratedOptimizer.step sets it from scaler.step)."""
    from accelerate.optimizer import AcceleratedOptimizer

    real, calls = AcceleratedOptimizer.step, []

    def step(self, closure=None):
        calls.append(None)
        self._is_overflow = len(calls) in skip
        if not self._is_overflow:
            real(self, closure)

    monkeypatch.setattr(AcceleratedOptimizer, "step", step)


@pytest.mark.parametrize("skip, flagged", [(set(), False), ({1}, False), ({1, 2}, False), ({2}, True),
                                           ({1, 3}, True), ({1, 2, 3}, True)])
def test_skipped_updates_are_counted_and_their_tokens_not_trained(skip, flagged, tiny_llama, real_tokenizer, tmp_path,
                                                                   monkeypatch):
    """A step the loss scaler skipped still counts as a Trainer step; the lab records it, leaves its tokens out of
    the tokens trained, and flags the run when a skip comes after the first applied update (or none was applied)."""
    _loss_scaler_skipping(monkeypatch, skip)
    trainer = _small_trainer(tiny_llama, real_tokenizer, tmp_path, EXAMPLES * 2, steps=3, batch=2)
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    outcome = train(trainer)
    assert outcome.steps == 3 and [s.skipped for s in trainer.steps] == [k in skip for k in (1, 2, 3)]
    assert outcome.skipped_at == sorted(skip)
    assert outcome.tokens == sum(s.tokens for s in trainer.steps), "every step's compute, for the throughput"
    trained = sum(s.tokens for s in trainer.steps if s.step not in skip)
    assert outcome.trained_tokens == trained and (trained < outcome.tokens) is bool(skip)
    assert outcome.budget_changed is flagged
    assert any(p.count_nonzero() for p in lora_b) is (len(skip) < 3), "a skipped update leaves the weights alone"


def test_nan_loss_stops_the_run_with_a_clear_message(tiny_llama, real_tokenizer, tmp_path):
    trainer = _small_trainer(tiny_llama, real_tokenizer, tmp_path, EXAMPLES)
    real = trainer.compute_loss
    trainer.compute_loss = lambda *a, **k: real(*a, **k) * float("nan")
    with pytest.raises(training.DivergedError, match="lower the learning rate"):
        train(trainer)


# ---------------------------------------------------------------- run specs

def test_qlora_is_lora16_plus_quantization():
    q, l16 = qlora().as_dict(), lora(16).as_dict()
    assert {key for key in q if q[key] != l16[key]} == {"run_id", "method", "quantization"}
    assert (q["run_id"], q["method"]) == ("qlora", "qlora")
    assert q["quantization"] == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
    assert q["lora"] == l16["lora"] == {"r": 16, "lora_alpha": LORA_ALPHA, "lora_dropout": 0.0, "target_modules": None,
                                        "bias": "none", "task_type": "CAUSAL_LM"}
    assert q["optimizer"] == l16["optimizer"] == "adamw_torch", "the 4-bit base is the only difference"


def test_specs_hold_the_libraries_own_configs_and_print_as_their_constructors():
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    spec = qlora(16)
    assert isinstance(spec.lora, LoraConfig) and isinstance(spec.quantization, BitsAndBytesConfig)
    assert str(spec) == ("RunSpec('qlora',\n        lora=LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=None, "
                         "bias='none', task_type='CAUSAL_LM'),\n        quantization=BitsAndBytesConfig(load_in_4bit=True, "
                         "bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True))")
    resolved = specs.resolve(spec, "smollm2-135m-bundled", torch.bfloat16)
    assert "bnb_4bit_compute_dtype=torch.bfloat16" in str(resolved)
    assert "target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']" in str(resolved)
    # what is printed is what builds the same config: eval the shown constructor and compare
    shown = specs.show_config(resolved.lora)
    rebuilt = specs.config_fields(eval(shown, {"LoraConfig": LoraConfig}))
    rebuilt["target_modules"] = specs.ordered_targets(rebuilt["target_modules"], resolved.lora.target_modules)
    assert rebuilt == specs.config_fields(resolved.lora)
    assert spec.lora.target_modules is None and spec.quantization.bnb_4bit_compute_dtype == torch.float32, \
        "resolve works on a copy: the caller's configs are not changed"


def test_a_students_compute_dtype_that_breaks_the_profiles_precision_is_refused():
    from transformers import BitsAndBytesConfig

    spec = specs.RunSpec("q", lora=specs.lora_config(8), quantization=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16))
    with pytest.raises(specs.SpecError, match="bnb_4bit_compute_dtype=torch.float16 but this device computes in"):
        specs.resolve(spec, "smollm2-135m-bundled", torch.bfloat16)
    assert specs.resolve(spec, "smollm2-135m-bundled", torch.float16).quantization.bnb_4bit_compute_dtype == torch.float16


def test_target_order_does_not_depend_on_the_set_peft_keeps():
    from peft import LoraConfig

    a = specs.RunSpec("x", lora=LoraConfig(r=8, target_modules=["v_proj", "q_proj", "lm_head"]))
    resolved = specs.resolve(a, "smollm2-135m-bundled", torch.float32)
    assert resolved.lora.target_modules == ["q_proj", "v_proj", "lm_head"]
    assert resolved.lora.task_type == "CAUSAL_LM" and a.lora.task_type is None


@pytest.mark.parametrize("r", [1, 4, 8, 16, 32, 64])
def test_lora_alpha_is_fixed_across_ranks(r):
    spec = lora(r)
    assert (spec.lora.r, spec.lora.lora_alpha, spec.lora.lora_dropout) == (r, LORA_ALPHA, 0.0)


def test_standard_runs():
    assert [s.run_id for s in STANDARD_RUNS] == ["full", "lora-r8", "lora-r16", "lora-r32", "qlora"]
    assert full().lora is None and full().quantization is None


def test_target_modules_default_to_the_preset():
    from helpers.models import LLAMA_TARGETS
    assert training.target_modules(lora(8), "smollm2-135m-bundled") == list(LLAMA_TARGETS)
    assert training.target_modules(lora(8), "gpt2") == ["c_attn", "c_proj", "c_fc"]


def test_expected_lora_parameters_matches_peft_and_hand_formula(tiny_llama):
    from peft import LoraConfig, get_peft_model

    from helpers.models import LLAMA_TARGETS
    expected = expected_lora_parameters(tiny_llama, list(LLAMA_TARGETS), 4)
    # hand: per layer q,k,v,o,gate,up,down with hidden 32, kv 16 (2 heads x 8), intermediate 64; two layers
    per_layer = 4 * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32) + (32 + 64) + (32 + 64) + (64 + 32))
    assert expected == 2 * per_layer
    peft_model = get_peft_model(tiny_llama, LoraConfig(r=4, lora_alpha=8, target_modules=list(LLAMA_TARGETS)))
    assert peft_model.get_nb_trainable_parameters()[0] == expected


# ---------------------------------------------------------------- 4-bit layers after an eval forward

def _tiny_qlora(path):
    from peft import LoraConfig
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


def test_training_imports_no_plotting_or_widgets():
    """A headless run (make lab's kernels, torchrun workers) never pays for matplotlib or ipywidgets."""
    import subprocess
    import sys
    code = ("import sys, helpers, helpers.training, helpers.runs, helpers.results; "
            "print(sorted(m for m in ('matplotlib', 'ipywidgets', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    assert "matplotlib" not in out and "ipywidgets" not in out, out


def test_processes_starting_together_convert_the_bundled_model_once(tmp_path, monkeypatch):
    """A process that finds the conversion under way (make test's other worker) waits for it and reads its result."""
    import threading

    from filelock import FileLock

    from helpers import models

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    conversions = []

    def convert(target: Path) -> None:
        conversions.append(target)
        target.mkdir()
        (target / "model.safetensors").write_bytes(b"converted")

    monkeypatch.setattr(models, "_convert_bundled_gguf", convert)
    target = tmp_path / "smollm2-135m-instruct-q4_1-dequantized"
    other = FileLock(f"{target}.lock")  # the other process, converting
    other.acquire()
    found = []
    waiting = threading.Thread(target=lambda: found.append(models.bundled_weights_dir()))
    waiting.start()
    time.sleep(0.5)
    assert waiting.is_alive() and not found and not conversions, "it waits while the other process converts"
    convert(target)
    other.release()
    waiting.join(timeout=30)
    assert found == [target] and conversions == [target], "then reads the other's result instead of converting again"


def test_4bit_base_is_quantized_once_and_read_back_unchanged(tmp_path, monkeypatch):
    """On a CPU the bundled model's 4-bit weights are saved after the first quantization; the copy read back must
    hold the same bytes and give the same logits as quantizing again."""
    from helpers import models

    source = models.bundled_weights_dir()  # the converted fp32 weights, from the usual cache
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(models, "bundled_weights_dir", lambda: source)
    config = models.bnb_config("nf4", True, torch.bfloat16)
    fresh = models.load_model("smollm2-135m-bundled", "cpu", config)
    saved = models.quantized_copy_dir("smollm2-135m-bundled", config)
    assert (saved / "model.safetensors").is_file()
    calls = []
    monkeypatch.setattr(models, "_load", lambda *a, **k: calls.append(a) or pytest.fail("quantized again"))
    cached = models.load_model("smollm2-135m-bundled", "cpu", config)
    assert not calls
    a, b = fresh.state_dict(), cached.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert type(cached.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    assert cached.model.layers[0].mlp.down_proj.compute_dtype == torch.bfloat16
    assert cached.model.layers[0].mlp.down_proj.support_avx512bf16_for_cpu is False  # still trainable
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fresh.eval()(input_ids=ids).logits, cached.eval()(input_ids=ids).logits)
    other = models.quantized_copy_dir("smollm2-135m-bundled", models.bnb_config("fp4", True, torch.bfloat16))
    assert other != saved  # other settings, other bytes


def test_a_model_with_a_fixed_causal_mask_trains_in_rows_it_can_take(real_tokenizer, tmp_path):
    """GPT-Neo's attention takes packed rows of at most its context (here 64): a step of 4 examples of up to 32 tokens
    fails as one row, and trains as 2 accumulated micro-batches of 2 (the layout Lab picks), every token counted."""
    from conftest import make_tiny_gpt_neo

    from helpers.environment import Parallel
    from helpers.models import packed_row_limit

    examples = [{"input_ids": [3 + (i * 7 + j) % 100 for j in range(20 + 4 * i)],
                 "labels": [-100] * 5 + [3 + (i * 7 + j) % 100 for j in range(5, 20 + 4 * i)]} for i in range(4)]
    profile = dataclasses.replace(get_profile("smoke"), model="gpt-neo-1.3b", max_steps=1, batch_size=4,
                                  max_length=32, checkpoint_steps=0, logging_steps=1)
    model = make_tiny_gpt_neo(context=64)
    layout = Parallel().with_rows_within(profile.batch_size, profile.max_length, packed_row_limit(model))
    assert (layout.accumulation, layout.per_device_batch(profile.batch_size)) == (2, 2)
    one_row = make_trainer(model, full(), profile, env("fp32"), Dataset.from_list(examples), real_tokenizer, 3,
                           tmp_path / "one", "t")
    with pytest.raises(RuntimeError, match="size of tensor"):
        train(one_row)
    model = make_tiny_gpt_neo(context=64)
    trainer = make_trainer(model, full(), profile, env("fp32"), Dataset.from_list(examples), real_tokenizer, 3,
                           tmp_path / "split", "t", parallel=layout)
    outcome = train(trainer)
    assert outcome.steps == 1 and outcome.tokens == sum(len(e["input_ids"]) for e in examples)
    with pytest.raises(ValueError, match="max_length=64 or less"):
        Parallel().with_rows_within(4, 65, 64)
