"""The Hub path (the `gpu` profile: HuggingFaceTB/SmolLM2-135M-Instruct, yahma/alpaca-cleaned, Salesforce/wikitext),
offline: what the lab reads from the local Hugging Face caches, as transformers and datasets do themselves.

No Hub here: the test builds the caches an earlier online run would have left behind. The model goes into the hub
cache (models--org--name/{refs/main, snapshots/<commit>/...}, here links to the bundled weights). The datasets go into
datasets' own cache of prepared Arrow files ($HF_DATASETS_CACHE/org___name/<config>/0.0.0/<commit>/): offline,
datasets 5.2 never looks at dataset repos in the hub cache (load.dataset_module_factory raises before it reads one)
and falls back to CachedDatasetModuleFactory, which reads exactly that folder.
"""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from helpers import models, results
from helpers.profiles import PROFILES

ROOT = Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a snapshot's commit: any 40 hex digits
GPU = PROFILES["gpu"]


def cache_model(hub: Path, repo_id: str, files: Path) -> Path:
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for f in files.iterdir():
        (snapshot / f.name).symlink_to(f)
    return snapshot


def cache_dataset(datasets_cache: Path, repo_id: str, config: str, splits: dict[str, list[dict]], staging: Path) -> Path:
    """What load_dataset(repo_id, config) prepares online: one Arrow file per split and dataset_info.json, written
    here by datasets' own JSON builder and moved to the folder the online load would have used."""
    from datasets.packaged_modules.json.json import Json

    name = repo_id.split("/")[-1]
    staging.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in splits.items():
        files[split] = str(staging / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    builder = Json(cache_dir=str(staging / "cache"), dataset_name=name, config_name=config, config_id=config,
                   hash=COMMIT, data_files=files)
    builder.download_and_prepare()
    target = datasets_cache / repo_id.replace("/", "___") / config / "0.0.0" / COMMIT
    target.parent.mkdir(parents=True)
    shutil.move(builder.cache_dir, target)
    return target


def alpaca_rows(n: int = 80) -> list[dict]:
    topics = ["rivers", "bread", "prime numbers", "the moon", "bicycles", "tea", "volcanoes", "chess"]
    return [{"instruction": f"Write one sentence about {topics[i % len(topics)]} (number {i}).",
             "input": "" if i % 3 else f"Keep it under {10 + i} words.",
             "output": f"Sentence {i}: {topics[i % len(topics)]} are worth learning about."} for i in range(n)]


def wikitext_rows(n: int) -> list[dict]:
    lines = []
    for i in range(n):  # wikitext's shape: blank lines, " = Heading = " lines and paragraphs
        lines += [{"text": ""}, {"text": f" = Section {i} = \n"},
                  {"text": f" The town of Example {i} lies on a river . It was founded in the year {1200 + i} and "
                           "grew around a market , a bridge and a church .\n"}]
    return lines


@pytest.fixture(scope="module")
def offline_hf(tmp_path_factory) -> dict[str, str]:
    """An environment whose Hugging Face caches hold the gpu profile's model and datasets, and nothing else."""
    home = tmp_path_factory.mktemp("hf")
    cache_model(home / "hub", models.PRESETS[GPU.model].hub_id, models.bundled_weights_dir())
    staging = tmp_path_factory.mktemp("staging")
    cache_dataset(home / "datasets", "yahma/alpaca-cleaned", "default", {"train": alpaca_rows()}, staging / "a")
    cache_dataset(home / "datasets", "Salesforce/wikitext", "wikitext-2-raw-v1",
                  {"train": wikitext_rows(6), "validation": wikitext_rows(12)}, staging / "w")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAB_", "HF_")) or k == "LAB_CACHE_DIR"}
    env.update({"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_DATASETS_CACHE": str(home / "datasets"),
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                # one thread: on shared CI cores two spinning torch threads made each forward ~10x slower
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return env


GPU_PATH = r"""
import json, sys
import helpers
from helpers import models, sources
from helpers.manifests import load_manifest

out = {}
lab = helpers.Lab("gpu", results=sys.argv[1], seeds=1, max_steps=2, warmup_steps=0, batch_size=2, logging_steps=1,
                  train_examples=8, eval_examples=4, max_length=128, eval_batch_tokens=512, generation_tokens=4,
                  generation_prompts=1, forgetting_tokens=100, checkpoint_steps=0)
out["template"] = lab.tokenizer.chat_template is not None
out["records"] = [str(lab.result_path(r["run_id"], r["seed"])) for r in lab.run(helpers.lora(8))]
try:
    models.load_config("gpt2")
except models.HubUnavailableError as err:
    out["model_error"] = str(err)
try:
    sources.load_rows(load_manifest("oasst1"))
except models.HubUnavailableError as err:
    out["dataset_error"] = str(err)
try:  # cached, but no such split: the data's own error, not "offline"
    sources._read_source(load_manifest("alpaca_cleaned"), "validation")
except Exception as err:
    out["wrong_split"] = [type(err).__name__, str(err)]
print("RESULT " + json.dumps(out))
"""


def test_gpu_profile_runs_offline_from_the_local_cache(offline_hf, tmp_path):
    """One LoRA run of the gpu profile (smoke budget, CPU) on the cached Hub model and data; then a preset and a
    dataset that are not cached fail with the error naming the offline way out."""
    done = subprocess.run([sys.executable, "-c", GPU_PATH, str(tmp_path / "results")], env=offline_hf, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert out["template"], "the cached tokenizer brought its chat template"
    [path] = out["records"]
    record = results.read(Path(path))  # schema-valid, or ResultsError
    assert record["model"] == {**record["model"], "preset": "smollm2-135m", "source": "hub"}
    assert record["data"]["manifest"] == "alpaca_cleaned" and record["data"]["template"] == "chat"
    assert record["forgetting"]["manifest"] == "wikitext2" and record["forgetting"]["tokens"] > 0
    assert record["environment"]["profile"] == "gpu" and record["training"]["steps"] == 2
    assert record["eval"]["perplexity_before"] > 1 and record["lora"]["target_modules"] == list(models.LLAMA_TARGETS)

    model_error = out["model_error"]
    for words in ("openai-community/gpt2", "offline", "not in the local Hugging Face cache", "Fix:",
                  repr(models.OFFLINE_PRESET)):
        assert words in model_error, (words, model_error)
    assert "OpenAssistant/oasst1" in out["dataset_error"] and 'DATASET = "python_docs"' in out["dataset_error"]
    assert out["wrong_split"][0] == "ValueError" and "Unknown split" in out["wrong_split"][1]


def test_uncached_preset_offline_names_the_offline_preset(monkeypatch):
    """In this process too (HF_HUB_OFFLINE=1 from conftest): a Hub preset absent from the cache is a
    HubUnavailableError, not transformers' OSError."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.HubUnavailableError) as err:
        models.load_tokenizer("tinyllama-1.1b")
    assert "smollm2-135m-bundled" in str(err.value) and "Fix:" in str(err.value)
    assert isinstance(err.value.__cause__, OSError)


def test_bundled_preset_errors_are_not_called_hub_errors(monkeypatch):
    def missing(*args, **kwargs):
        raise OSError("no such file")
    monkeypatch.setattr(models, "source_path", lambda name: "/nowhere")
    with pytest.raises(OSError) as err:
        models._load(missing, models.OFFLINE_PRESET)
    assert not isinstance(err.value, models.HubUnavailableError)


# ---------------------------------------------------------------- bigger Hub presets on a T4, predicted (no download)

T4_FREE = int(15e9)
T4_TOKENS = 16 * 128  # 16 examples of ~128 tokens, one packed row per step


def tinyllama_config():
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                       num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False)


def gpt_neo_config():
    from transformers import GPTNeoConfig
    return GPTNeoConfig(hidden_size=2048, num_layers=24, num_heads=16, attention_types=[[["global", "local"], 12]],
                        vocab_size=50257)


# (Hub id, config, trainable parameters between, the longest packed row whose QLoRA still fits a T4). GPT-Neo's eager
# attention keeps heads x T^2 probabilities per layer (~0.4 GB a layer at 2,048 tokens in fp16): its QLoRA fits a
# T4 only with rows well under the 2,048 tokens its attention takes.
BIG = {"tinyllama-1.1b": ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", tinyllama_config, 1.0e9, 1.2e9, T4_TOKENS),
       "gpt-neo-1.3b": ("EleutherAI/gpt-neo-1.3B", gpt_neo_config, 1.2e9, 1.45e9, 1024)}


@pytest.mark.parametrize("preset", BIG)
def test_big_preset_full_fine_tuning_is_refused_on_a_t4_and_qlora_fits(preset):
    import torch
    from transformers import AutoModelForCausalLM

    from helpers import memory
    from helpers.specs import full, qlora
    from helpers.training import linear_layer_names

    hub_id, make_config, low, high, qlora_tokens = BIG[preset]
    config, targets = make_config(), models.PRESETS[preset].lora_targets
    assert models.PRESETS[preset].hub_id == hub_id
    with torch.device("meta"):  # the preset's LoRA targets are layers of this architecture
        assert set(targets) <= linear_layer_names(AutoModelForCausalLM.from_config(config))
    p = memory.predict(config, full(), "fp16", "cuda", T4_TOKENS, targets=targets)
    assert low < p["trainable_params"] < high
    with pytest.raises(memory.MemoryFitError) as err:
        memory.check_fits(p, T4_FREE, f"full fine-tuning of {hub_id}",
                          memory.cheaper_choices(config, targets, "fp16", "cuda", T4_TOKENS))
    message = str(err.value)
    assert f"full fine-tuning of {hub_id}" in message and "15.0 GB free" in message
    assert "QLoRA (helpers.qlora(16)) needs about" in message and "Fix:" in message
    fits = memory.predict(config, qlora(16), "fp16", "cuda", qlora_tokens, targets=targets)
    memory.check_fits(fits, T4_FREE, f"QLoRA r16 of {hub_id}", {})  # no error: it fits
    assert fits["peak"] < 0.9 * T4_FREE < p["peak"]


def test_gpt_neo_eager_attention_probabilities_are_predicted():
    """GPT-Neo-1.3B has eager attention only: in fp16 autocast each layer keeps its heads x T x T softmax output in
    fp32 and the fp16 copy the value matmul saves, ~0.4 GB a layer at 2,048 tokens; SDPA keeps none of them."""
    from helpers import memory
    from helpers.specs import qlora

    config, targets = gpt_neo_config(), models.PRESETS["gpt-neo-1.3b"].lora_targets
    assert models.meta_model(config).config._attn_implementation == "eager"
    at = {t: memory.predict(config, qlora(16), "fp16", "cuda", t, targets=targets) for t in (1024, 2048)}
    probabilities = 24 * 16 * 2048 * 2048 * (4 + 2)
    assert probabilities / 24 == pytest.approx(0.4e9, rel=0.01)
    assert at[2048]["activations"] > probabilities
    assert (memory.gb(at[2048]["peak"]), memory.gb(at[1024]["peak"])) == ("20.1 GB", "8.3 GB")  # README, 9.
    # doubling the row doubles the rest of the activations and quadruples the probabilities
    assert at[2048]["activations"] - 2 * at[1024]["activations"] == pytest.approx(probabilities / 2, rel=0.01)
    with pytest.raises(memory.MemoryFitError, match=r"does not fit either.*fewer tokens per step"):
        memory.check_fits(at[2048], T4_FREE, "QLoRA r16 of EleutherAI/gpt-neo-1.3B",
                          memory.cheaper_choices(config, targets, "fp16", "cuda", 2048))


def test_a_packed_row_limit_comes_from_the_architecture():
    """Only an attention with a fixed context x context mask buffer limits a packed row (positions restart per
    example); the preset's context is that limit, which Lab relies on to skip the config for shorter rows."""
    from transformers import GPT2Config

    neo = models.meta_model(gpt_neo_config())
    assert models.packed_row_limit(neo) == neo.config.max_position_embeddings == models.PRESETS["gpt-neo-1.3b"].context
    for config in (tinyllama_config(), GPT2Config()):  # SDPA; GPT-2's 1,024 positions bound an example, not a row
        model = models.meta_model(config)
        assert model.config._attn_implementation == "sdpa" and models.packed_row_limit(model) is None


def test_gpt_neo_trains_each_step_in_rows_its_attention_takes(monkeypatch, tmp_path):
    """The gpu profile packs 16 examples of up to 512 tokens into a row of up to 8,192; GPT-Neo takes 2,048: Lab
    splits each step into 4 accumulated micro-batches of 4 examples, the same 16 examples and token budget."""
    import helpers
    from helpers import runs
    from helpers.training import sft_settings

    monkeypatch.setattr(runs, "load_config", lambda name: gpt_neo_config())
    lab = helpers.Lab("gpu", model="gpt-neo-1.3b")
    assert (lab.parallel.accumulation, lab.parallel.per_device_batch(16), lab.row_limit) == (4, 4, 2048)
    assert "4 accumulated micro-batches per step (packed rows of at most 2048 tokens" in lab.describe()
    settings = sft_settings(helpers.qlora(), lab.profile, lab.env, 42, tmp_path, parallel=lab.parallel)
    assert (settings["per_device_train_batch_size"], settings["gradient_accumulation_steps"]) == (4, 4)

    def no_config(name):
        raise AssertionError("a row within the preset's context needs no config")
    monkeypatch.setattr(runs, "load_config", no_config)
    default = helpers.Lab("gpu")  # SmolLM2: 16 x 512 = 8,192 tokens, its context
    assert (default.parallel.accumulation, default.row_limit) == (1, None)
    shorter = helpers.Lab("gpu", model="gpt-neo-1.3b", batch_size=4, max_length=256)  # README's T4 QLoRA settings
    assert (shorter.parallel.accumulation, shorter.row_limit) == (1, None)  # rows of at most 1,024 tokens


def test_a_notebook_on_a_t4_refuses_gpt_neo_full_fine_tuning_before_loading(monkeypatch):
    """Lab.check_fits as a notebook calls it: MODEL_PRESET = "gpt-neo-1.3b" on a (mocked) T4."""
    import dataclasses

    import torch

    import helpers
    from helpers import memory, runs
    from helpers.environment import choose_precision

    monkeypatch.setattr(runs, "load_config", lambda name: gpt_neo_config())
    lab = helpers.Lab("gpu", model="gpt-neo-1.3b")
    lab.env = dataclasses.replace(lab.env, device="cuda", device_name="Tesla T4 (sm_75)", capability=(7, 5),
                                  precision=choose_precision("cuda", (7, 5)))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (T4_FREE, int(15.8e9)))
    monkeypatch.setattr(runs.Lab, "largest_batch_tokens", lambda self, processes=None: 1024)
    with pytest.raises(memory.MemoryFitError, match=r"EleutherAI/gpt-neo-1\.3B.*QLoRA \(helpers\.qlora\(16\)\)"):
        lab.check_fits(helpers.full())
    lab.check_fits(helpers.qlora(16))
    # the gpu profile's longest micro-batch can reach the 2,048 tokens GPT-Neo takes: too long for QLoRA on a T4
    monkeypatch.setattr(runs.Lab, "largest_batch_tokens", lambda self, processes=None: 2048)
    with pytest.raises(memory.MemoryFitError, match="fewer tokens per step"):
        lab.check_fits(helpers.qlora(16))


# ---------------------------------------------------------------- make gpu-check, planned on a mocked T4

TRAINED = {"steps": 2, "skipped": 0, "tensors changed": 7, "tensors checked": 7}  # a run whose updates all applied


def test_gpu_check_on_a_t4_runs_the_fp16_path_only(monkeypatch, capsys):
    import peft  # noqa: F401 (before CUDA is mocked: bitsandbytes, which peft imports, picks its backend on import)
    import torch

    from helpers.tools import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    ran = []

    def fake_run(results, precision_name, spec):
        precision = gpu_check.precision_for(precision_name)
        ran.append((precision.name, precision.fp16, precision.bf16, spec.run_id))
        return {"run": spec.run_id, "precision": precision.name, "trainable dtype": "float32", "tokens/s": 1,
                **TRAINED}

    monkeypatch.setattr(gpu_check, "run_one", fake_run)
    from helpers import environment  # its torch_build is tested on a mocked torch in test_environment.py
    monkeypatch.setattr(environment, "torch_build", lambda: "torch 2.8.0+cu126, CUDA 12.6")
    assert gpu_check.main() == 0
    assert ran == [("fp16", True, False, "full"), ("fp16", True, False, "lora-r8"), ("fp16", True, False, "qlora")]
    out = capsys.readouterr().out
    assert "Tesla T4 (sm_75), torch 2.8.0+cu126, CUDA 12.6" in out and "no bf16" in out and "OK:" in out


def test_gpu_check_adds_bf16_from_sm80_and_fails_on_non_fp32_trainable_weights(monkeypatch, capsys):
    import peft  # noqa: F401 (see above)
    import torch

    from helpers.tools import gpu_check

    assert [p for p, _ in gpu_check.plan((8, 0))] == ["fp16"] * 3 + ["bf16"] * 3
    assert [p for p, _ in gpu_check.plan((9, 0))].count("bf16") == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100")
    monkeypatch.setattr(gpu_check, "run_one", lambda results, p, spec: {
        "run": f"{spec.run_id}-{p}", "precision": p, "tokens/s": 1, **TRAINED,
        "trainable dtype": "bfloat16" if (p, spec.run_id) == ("bf16", "qlora") else "float32"})
    assert gpu_check.main() == 1
    assert "qlora-bf16 (bf16): bfloat16" in capsys.readouterr().err


def test_gpu_check_fails_when_every_update_was_skipped_or_training_changed_nothing():
    from helpers.tools import gpu_check

    row = {"run": "lora-r8", "precision": "fp16", "trainable dtype": "float32", **TRAINED}
    assert gpu_check.failures([row]) == []
    assert gpu_check.failures([{**row, "skipped": 1}]) == [], "a skip while the scaler finds its scale is no failure"
    skipped_all = gpu_check.failures([{**row, "skipped": 2, "tensors changed": 0}])
    assert len(skipped_all) == 2 and "skipped every update" in skipped_all[0] and "lora-r8 (fp16): 2 of 2" in \
        skipped_all[0] and "lora-r8 (fp16): 0 of 7 changed" in skipped_all[1]
    assert "5 of 7 changed" in gpu_check.failures([{**row, "tensors changed": 5}])[0]
    assert "0 of 0 changed" in gpu_check.failures([{**row, "tensors changed": 0, "tensors checked": 0}])[0]


def test_gpu_check_reads_what_training_changed_from_the_saved_artifact(tmp_path):
    """An adapter: every lora_B starts at zero (PEFT), so each non-zero one was updated. A full model: each tensor
    that differs from the base it started from."""
    import torch
    from conftest import make_tiny_llama
    from peft import LoraConfig, get_peft_model

    from helpers.tools.gpu_check import training_changes

    adapter = get_peft_model(make_tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    adapter.save_pretrained(tmp_path / "untrained")
    assert training_changes(tmp_path / "untrained") == (0, 4), "2 layers x (q, v): nothing trained yet"
    with torch.no_grad():
        adapter.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight[0, 0] = 1e-3
    adapter.save_pretrained(tmp_path / "one")
    assert training_changes(tmp_path / "one") == (1, 4)

    model = make_tiny_llama()
    base = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.save_pretrained(tmp_path / "full")
    changed, checked = training_changes(tmp_path / "full", base)
    assert changed == 0 and checked == len(base)
    with torch.no_grad():
        model.model.norm.weight += 1e-3
    model.save_pretrained(tmp_path / "full")
    assert training_changes(tmp_path / "full", base) == (1, checked)


def test_gpu_check_on_a_colab_gpu_runtime_trains_the_hub_model_the_setup_cell_leaves_it(monkeypatch, capsys, tmp_path):
    """A Colab GPU runtime has what its setup cell installs there, not the offline packages (the bundled model, the
    offline general text): gpu-check then trains the smoke budget on the gpu profile's Hub model and general text. Where
    they are installed (`make gpu-check`, this machine) it runs the smoke profile as is."""
    import importlib.metadata

    import torch

    import helpers
    from helpers import colab, runs
    from helpers.tools import gpu_check

    class Built(Exception):
        pass

    def lab_then_stop(*args, **kwargs):  # the Lab that run_one builds, then no training (no GPU here)
        raise Built(real_lab(*args, **kwargs))

    real_lab, real_version = runs.Lab, importlib.metadata.version
    monkeypatch.setattr(runs, "Lab", lab_then_stop)

    def profile_run_one_builds():
        with pytest.raises(Built) as built:
            gpu_check.run_one(tmp_path, "fp16", helpers.full())
        return built.value.args[0].profile

    smoke = PROFILES["smoke"]
    assert profile_run_one_builds() == replace(smoke, seeds=(42,)), "offline packages installed: smoke as is"
    offline = {pin.split("==")[0] for mark in (colab.OFFLINE_MARK, colab.NO_DEPS) for pin in colab.requirements(ROOT, mark)}

    def version(name):  # as in a Colab GPU runtime: never installed
        if name in offline:
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    colab_gpu = profile_run_one_builds()
    assert (colab_gpu.model, colab_gpu.forgetting) == (GPU.model, GPU.forgetting) == ("smollm2-135m", "wikitext2")
    assert models.get_preset(colab_gpu.model).source == "hub"
    assert replace(colab_gpu, model=smoke.model, forgetting=smoke.forgetting) == replace(smoke, seeds=(42,)), "same budget"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(gpu_check, "run_one", lambda results, p, spec: {"run": spec.run_id, "precision": p,
                                                                          "trainable dtype": "float32", "tokens/s": 1,
                                                                          **TRAINED})
    assert gpu_check.main() == 0
    assert "the smoke profile's budget on the Hub model smollm2-135m, general text wikitext2" in capsys.readouterr().out


def test_gpu_check_without_cuda_exits_with_a_clear_message(monkeypatch, capsys):
    import torch

    from helpers.tools import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main() == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err and "T4 GPU" in gpu_check.NO_CUDA
