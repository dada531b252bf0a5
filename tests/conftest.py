"""Shared fixtures: a tiny random Llama (fast, CPU) and the real bundled SmolLM2 tokenizer (pad == EOS)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the unit tests never touch the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("LAB_ISOLATE_RUNS", None)  # a test that wants runs in their own process sets it itself

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPTNeoConfig, GPTNeoForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

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


def make_tiny_gpt_neo(context: int = 64, seed: int = 0) -> GPTNeoForCausalLM:
    """GPT-Neo as transformers 5.23 builds it: eager attention only, its causal mask sliced from a fixed context x
    context buffer (so a packed row longer than the context fails), one global and one local layer."""
    torch.manual_seed(seed)
    config = GPTNeoConfig(vocab_size=TINY_VOCAB, hidden_size=32, num_layers=2, num_heads=4, window_size=16,
                          attention_types=[[["global", "local"], 1]], max_position_embeddings=context,
                          bos_token_id=2, eos_token_id=2)
    model = GPTNeoForCausalLM(config)
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


@pytest.fixture
def sft_prepared(tmp_path):
    """The oracle for helpers.data.tokenize: what SFTTrainer's public constructor prepares from raw examples with the
    lab's data settings (completion-only loss, no truncation, no packing), as {"input_ids", "labels"} lists."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    def prepare(raw: list[dict], tokenizer, model) -> list[dict]:
        config = SFTConfig(output_dir=str(tmp_path), max_length=None, packing=False, padding_free=True,
                           completion_only_loss=True, activation_checkpointing=False, bf16=False, fp16=False,
                           use_cpu=True, report_to="none")
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(raw), processing_class=tokenizer)
        return trainer.train_dataset.select_columns(["input_ids", "labels"]).to_list()
    return prepare


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: only called under `pytest -n N` (make test)
def pytest_xdist_make_scheduler(config, log):
    """One test file per worker at a time, so a module's trained fixture is built once; and the notebooks as one
    unit, in order: 05 reads what 01-04 wrote, 03 and 04 compare with 02's LoRA r16, and 06 exports that run. (xdist's own `loadgroup` marks do
    not take effect under pytest 9.2, whose node ids xdist 3.8 can no longer rewrite.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "notebooks" if path.endswith(".ipynb") else path

    return ByFile(config, log)
