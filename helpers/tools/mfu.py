"""FLOP accounting for `make bench`'s MFU column: the useful training FLOPs per real token of this model and these
examples, and the machine's measured matmul peak they are divided by.

Useful work is the same in every pipeline: a real token attends only within its own example (padding and packed
neighbours add no useful key), and the weights' FLOPs count the matmuls a training step must do (6N full, 4N + 6 x
adapter parameters for LoRA). The peak is the best of a square GEMM and the model's own GEMM shapes, per precision.
"""

from __future__ import annotations

import time

import torch

from .. import specs
from ..models import load_config, load_model
from ..runs import Lab
from ..training import expected_lora_parameters, target_modules

GEMM_TOKENS = 512  # rows of the model-shaped GEMMs: about one packed step of the cpu profile (4 x ~123 tokens)


# ---------------------------------------------------------------- the machine's matmul peak

def gemm_gflops(m: int, k: int, n: int, dtype: torch.dtype, windows: int = 3, seconds: float = 0.1) -> float:
    """GFLOP/s of an (m x k) @ (k x n) matmul: the best of a few short windows (a peak, so the least disturbed one)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    torch.mm(a, b)  # the first call picks and caches the kernel
    best = 0.0
    for _ in range(windows):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            torch.mm(a, b)
            calls += 1
        best = max(best, 2 * m * k * n * calls / elapsed / 1e9)
    return best


def gemm_shapes(config) -> dict[str, tuple[int, int, int]]:
    """A square GEMM and the model's own: attention projection, MLP up and down, LM head, on one packed step."""
    h, i, v, t = config.hidden_size, config.intermediate_size, config.vocab_size, GEMM_TOKENS
    return {"2048x2048x2048": (2048, 2048, 2048), f"{t}x{h}x{h} (q/o proj)": (t, h, h),
            f"{t}x{h}x{i} (gate/up proj)": (t, h, i), f"{t}x{i}x{h} (down proj)": (t, i, h),
            f"{t}x{h}x{v} (LM head)": (t, h, v)}


def measure_peaks(config) -> dict[str, dict[str, float]]:
    """{precision: {shape: GFLOP/s}} for fp32 and bf16; a row's MFU uses the best shape of its precision."""
    return {name: {label: round(gemm_gflops(*shape, dtype), 1) for label, shape in gemm_shapes(config).items()}
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}


# ---------------------------------------------------------------- useful work per real token

def matmul_parameters(model: torch.nn.Module) -> int:
    """Weights that matmuls touch: every nn.Linear, the (tied) LM head once; the embedding lookup is no matmul."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def mean_context(lengths: list[int]) -> float:
    """Keys a real token attends to, on average: causal attention within its own example, so position + 1.
    Packing keeps examples apart and padding adds no useful key, so every pipeline does the same useful work."""
    return sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)


def flops_per_token(method: str, matmul_params: int, layers: int, width: int, context: float,
                    adapter_params: int = 0) -> float:
    """Training FLOPs per real token. Weights: 2N forward + 2N backward to the activations, + 2N for the weight
    gradients when they train (full: 6N); LoRA's frozen base has no weight gradients (4N) and its adapters train
    (6 x adapter params). Attention: QK^T and AV are 4*L*width*context forward, twice that backward (12*L*width*ctx)."""
    weights = (6 if method == "full" else 4) * matmul_params + 6 * adapter_params
    return weights + 12 * layers * width * context


def mfu_percent(tokens_per_second: float, flops: float, peak_gflops: float) -> float:
    return 100 * tokens_per_second * flops / (peak_gflops * 1e9)


def work_per_token(lab: Lab) -> tuple[dict[str, float], dict]:
    """({method: FLOPs per real token}, the numbers that went into them) for this model and these examples."""
    config = load_config(lab.profile.model)
    model = load_model(lab.profile.model, "cpu")
    n = matmul_parameters(model)
    adapters = expected_lora_parameters(model, target_modules(specs.lora(8), lab.profile.model), 8)
    del model
    width = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    context = mean_context([len(x) for x in lab.data.train["input_ids"]])
    flops = {"full": flops_per_token("full", n, config.num_hidden_layers, width, context),
             "lora-r8": flops_per_token("lora", n, config.num_hidden_layers, width, context, adapters)}
    return flops, {"matmul_params": n, "adapter_params": adapters, "layers": config.num_hidden_layers,
                   "attention_width": width, "mean_context": round(context, 1)}
