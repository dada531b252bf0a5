"""Shared fixtures: a tiny random Llama (fast, CPU), the real bundled SmolLM2 tokenizer (pad == EOS) and the folder of
the notebooks' smoke runs; the order and grouping of the tests among `make test`'s workers."""

import os
import time
from pathlib import Path

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


# The notebooks' smoke runs: under `make test` they write to $LAB_RESULTS_DIR (read here, before any test can point it
# elsewhere), and the modules that only need trained runs read them there instead of training their own.
NOTEBOOK_RESULTS = os.environ.get("LAB_RESULTS_DIR")
SESSION_START = time.time()  # a file in that folder older than this was written by an earlier session's code
AFTER_THE_NOTEBOOKS = ("tests/test_adapters.py", "tests/test_export.py")
# The other heavy files, longest first (their wall times in `make test` at fe7e3b8: 161, 53, 41, 37, 34, 32, 20, 17,
# 17, 15 s): handed out first, so the two workers end together instead of one starting a long file near the end.
LONGEST_FIRST = ("tests/test_runs.py", "tests/test_distributed.py", "tests/test_settings_sets.py",
                 "tests/test_colab.py", "tests/test_sweep.py", "tests/test_isolation.py", "tests/test_training.py",
                 "tests/test_hub.py", "tests/test_compare.py", "tests/test_own_data.py")


@pytest.fixture(scope="session")
def notebook_results(tmp_path_factory) -> Path:
    """Where the notebooks wrote their smoke runs; without $LAB_RESULTS_DIR (a test file run alone) a folder of this
    session's, where the first module that asks for a run trains it and the next reads it."""
    return Path(NOTEBOOK_RESULTS) if NOTEBOOK_RESULTS else tmp_path_factory.mktemp("notebook-results")


def scope(nodeid: str) -> str:
    """The unit one worker runs whole, in order: a test file; the notebooks and the modules that read their runs."""
    path = nodeid.split("::", 1)[0]
    return "notebooks" if path.endswith(".ipynb") or path in AFTER_THE_NOTEBOOKS else path


def pytest_collection_modifyitems(config, items):
    """The notebooks first (05 reads what 01-04 wrote, 03 and 04 compare with 02's LoRA r16, 06 exports that run),
    then the modules that read their runs, then the heaviest files; the rest in collection order."""
    rank = {"notebooks": 0, **{path: k + 1 for k, path in enumerate(LONGEST_FIRST)}}
    def key(item) -> tuple[int, bool]:
        return rank.get(scope(item.nodeid), len(rank)), not item.nodeid.split("::", 1)[0].endswith(".ipynb")
    items.sort(key=key)  # stable: collection order within each


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: only called under `pytest -n N` (make test)
def pytest_xdist_make_scheduler(config, log):
    """One scope (above) per worker at a time, so a module's trained fixture is built once and the notebooks run in
    order, handed out in the order pytest_collection_modifyitems leaves (xdist would reorder them by test count).
    (xdist's own `loadgroup` marks do not take effect under pytest 9.2, whose node ids xdist 3.8 can no longer
    rewrite.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByScope(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope(nodeid)

    config.option.loadscopereorder = False
    return ByScope(config, log)
