"""The GPT-2 path, offline: Conv1D layers (LoRA targets c_attn, c_proj, c_fc), no chat template (the seeds'
### Instruction / ### Response text), EOS as the only special token. On a tiny random GPT-2 and a tiny word-level
tokenizer built here, so nothing is downloaded."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from helpers import adapters, data
from helpers.models import get_preset
from helpers.specs import lora
from helpers.training import expected_lora_parameters, linear_layer_names, target_modules

EOS = "<|endoftext|>"
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]
ROWS = [{"instruction": "Name a prime number .", "input": "", "output": "Seven is a prime number ."},
        {"instruction": "What is a tuple ?", "input": "", "output": "A tuple is an immutable sequence ."},
        {"instruction": "Say hello to the class .", "input": "twenty students", "output": "Hello , everyone !"}]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level, whitespace and punctuation split; the template's words, the rows' words and EOS; no chat template."""
    split = pre_tokenizers.Whitespace().pre_tokenize_str
    texts = [text for r in ROWS for text in r.values()] + [data.render_instruction_prompt("x", "y")]
    words = sorted({word for text in texts for word, _ in split(text)})
    vocab = {token: i for i, token in enumerate([EOS, "[UNK]", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, unk_token="[UNK]")
    tokenizer.pad_token = tokenizer.eos_token  # as helpers.models.load_tokenizer does for GPT-2
    tokenizer.padding_side = "right"
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    tok = tiny_tokenizer()
    assert tok.chat_template is None and tok.eos_token_id == 0 and len(tok) < 200
    return tok


def tiny_gpt2(vocab_size: int = 200, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=vocab_size, n_positions=128, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, eos_token_id=0, bos_token_id=0)
    model = GPT2LMHeadModel(config)
    model.config.use_cache = False  # as helpers.models.load_model leaves it: packed rows need the masking
    return model


def examples(tokenizer) -> list[dict]:
    return data.tokenize([data.to_example(r, "instruction", conversational=False) for r in ROWS], tokenizer).to_list()


# ---------------------------------------------------------------- LoRA on Conv1D

def test_gpt2_preset_targets_are_its_conv1d_layers():
    model = tiny_gpt2()
    assert list(get_preset("gpt2").lora_targets) == GPT2_TARGETS == target_modules(lora(8), "gpt2")
    assert set(GPT2_TARGETS) <= linear_layer_names(model)
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"  # weight is (in, out), not (out, in)


@pytest.mark.parametrize("r", [4, 8])
def test_expected_lora_parameters_match_peft_on_gpt2(r):
    model = tiny_gpt2()
    expected = expected_lora_parameters(model, GPT2_TARGETS, r)
    # per block: c_attn 32 -> 96, attn.c_proj 32 -> 32, mlp.c_fc 32 -> 128, mlp.c_proj 128 -> 32
    assert expected == 2 * r * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=16, target_modules=GPT2_TARGETS, lora_dropout=0.0,
                                                  bias="none", task_type="CAUSAL_LM"))
    assert peft_model.get_nb_trainable_parameters()[0] == expected


def test_merge_keeps_the_logits_on_gpt2(tokenizer):
    torch.manual_seed(1)
    peft_model = get_peft_model(tiny_gpt2(), LoraConfig(r=8, lora_alpha=16, target_modules=GPT2_TARGETS,
                                                       lora_dropout=0.0, init_lora_weights=False))  # B != 0
    probe = examples(tokenizer)
    merged = adapters.merge(copy.deepcopy(peft_model))
    assert not isinstance(merged, adapters.PeftModel)
    assert adapters.max_logit_difference(peft_model, merged, probe, tokenizer.pad_token_id) < 1e-5
    base = adapters.max_logit_difference(peft_model, tiny_gpt2(), probe, tokenizer.pad_token_id)
    assert base > 1e-3, "control: the adapter changes the logits, so the equality above is not trivial"


# ---------------------------------------------------------------- the seeds' template, prompt masked, EOS learned

def test_plain_prompt_completion_uses_the_instruction_template_and_learns_eos(tokenizer):
    example = data.to_example(ROWS[2], "instruction", conversational=False)
    assert example == {"prompt": "### Instruction:\nSay hello to the class .\n\n### Input:\ntwenty students\n\n"
                                 "### Response:\n", "completion": "Hello , everyone !"}
    [tokenized] = data.tokenize([example], tokenizer).to_list()
    ids, labels = tokenized["input_ids"], tokenized["labels"]
    prompt_ids = tokenizer(example["prompt"]).input_ids
    assert ids[:len(prompt_ids)] == prompt_ids
    assert labels[:len(prompt_ids)] == [data.IGNORE_INDEX] * len(prompt_ids), "the prompt is context only"
    assert labels[len(prompt_ids):] == ids[len(prompt_ids):], "every completion token is a target"
    assert tokenizer.decode(ids[len(prompt_ids):-1]) == "Hello , everyone !"
    assert ids[-1] == labels[-1] == tokenizer.eos_token_id, "EOS ends the completion and is learned"
    assert tokenizer.unk_token_id not in ids


def test_tokenize_is_what_sfttrainer_trains_on_without_a_chat_template(tokenizer, sft_prepared):
    raw = [data.to_example(r, "instruction", conversational=False) for r in ROWS]
    assert data.tokenize(raw, tokenizer).to_list() == sft_prepared(raw, tokenizer, tiny_gpt2())
    text = [{"text": r["output"]} for r in ROWS]  # language modelling: EOS appended, every token a target
    assert data.tokenize(text, tokenizer).to_list() == sft_prepared(text, tokenizer, tiny_gpt2())


# ---------------------------------------------------------------- packing without cross-talk

def collate(batch: list[dict], pad_id: int):
    """TRL's padding-free collator, as SFTTrainer builds it for padding_free=True."""
    return DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=True)(batch)


def one_by_one_loss(model, batch: list[dict]) -> float:
    total, count = 0.0, 0
    for e in batch:
        loss = model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]])).loss
        n = sum(1 for label in e["labels"][1:] if label != data.IGNORE_INDEX)
        total, count = total + loss.item() * n, count + n
    return total / count


def test_packed_gpt2_loss_equals_the_token_weighted_loss_one_by_one(tokenizer):
    model = tiny_gpt2().train()
    batch = examples(tokenizer)
    packed = collate(batch, tokenizer.pad_token_id)
    lengths = [len(e["input_ids"]) for e in batch]
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed
    assert packed["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    assert model(**packed).loss.item() == pytest.approx(one_by_one_loss(model, batch), abs=1e-5)
    # control: without the position restarts the examples attend to each other and the loss changes
    for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"):
        packed.pop(key, None)
    packed["position_ids"] = torch.arange(sum(lengths))[None]
    assert abs(model(**packed).loss.item() - one_by_one_loss(model, batch)) > 1e-4
