"""Shared fixtures: a tiny random Llama (fast, CPU) and the real bundled SmolLM2 tokenizer (pad == EOS)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the unit tests never touch the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

TINY_VOCAB = 128


def tiny_llama_config() -> LlamaConfig:
    return LlamaConfig(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def make_tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """Randomly initialised, fp32, CPU; use_cache off exactly as helpers.models.load_model leaves it."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config())
    model.config.use_cache = False
    return model


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    """A fresh model per test (PEFT wrapping and config edits mutate it)."""
    return make_tiny_llama()


@pytest.fixture(scope="session")
def real_tokenizer():
    """The bundled SmolLM2 tokenizer: pad_token == eos_token == "<|im_end|>" (id 2), the case that matters."""
    from helpers.models import load_tokenizer

    return load_tokenizer("smollm2-135m-bundled")

