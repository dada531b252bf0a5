"""Training memory: what a run holds, by category, measured the same way on CPU and CUDA, and predicted before
training from the spec and the architecture.

- MemoryMeter: the device's own peak over every training step (a check on the probe); on CUDA a probe's reset of
  the allocator's peak inside the meter's block does not lose the steps before it (reset_cuda_peak).
- StepMemoryProbe: one optimizer step split into weights, gradients, optimizer state, activations, other, and its
  peak; the lab measures it on the largest batch the training data can form (helpers.runs.Lab.largest_batch), so
  it answers "will it fit, whatever the order?" the same for every method and seed.
- predict / check_fits: the same categories from the config alone, and a refusal, before any weight is loaded,
  of a run that cannot fit, naming the cheaper choices.
"""

from __future__ import annotations

import gc
import math
import os
import sys
import threading
import weakref
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterable, Iterator, Sequence

import psutil
import torch

from .environment import return_freed_memory_to_os
from .models import meta_model
from .specs import RunSpec, lora, qlora

GB = 1e9  # decimal, as GPUs are sold ("15 GB T4")
FIT_FRACTION = 0.9  # the allocator's fragmentation and the CUDA context need the rest
CATEGORIES = ("weights", "gradients", "optimizer", "activations", "other")
StorageKey = tuple[str, int]  # (device, storage data_ptr): views and aliases of one storage share a key


def release() -> None:
    """After the caller drops its last reference to a model: give its memory back before the next run."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return_freed_memory_to_os()


_MEASURING: set[MemoryMeter] = set()  # CUDA meters inside their measure() block


def reset_cuda_peak(device: torch.device | None = None) -> None:
    """Reset CUDA's peak statistics, which are one counter per device for the whole process, without losing a peak:
    every MemoryMeter measuring now takes the peak so far first. Every reset in the lab goes through here."""
    torch.cuda.synchronize(device)
    for meter in list(_MEASURING):
        meter._take_cuda_peak()
    torch.cuda.reset_peak_memory_stats(device)


class MemoryMeter:
    """Whole-training device peak, above what the process held when the meter started.

    CUDA: the allocator's max_memory_allocated (tensors) and max_memory_reserved (what the allocator took from the
    GPU, the figure nvidia-smi is closer to), reset at each measured block; a reset inside the block (a
    StepMemoryProbe, another meter) first hands this meter the peak so far, so every step counts. Optimizer state
    in managed memory (a paged bitsandbytes optimizer) is invisible to both: the probe reports it on its own.
    CPU: RSS sampled every 20 ms by a thread (ru_maxrss would be the process's lifetime peak, i.e. an earlier
    run's); no reserved figure, but training runs inside heap_reuse, so RSS also holds freed blocks kept for reuse.
    Only blocks under `measure()` count, so loading transients and evaluation do not
    inflate a method's cost.
    """

    def __init__(self, device: str):
        self.device = device
        self.kind = "cuda_max_allocated" if device == "cuda" else "cpu_rss_sampled"
        gc.collect()
        return_freed_memory_to_os()
        if device == "cuda":
            torch.cuda.empty_cache()
            self.baseline = torch.cuda.memory_allocated()
            self._reserved_baseline = torch.cuda.memory_reserved()
        else:
            self._process = psutil.Process()
            self.baseline = self._process.memory_info().rss
        self.peak = self.baseline
        self._reserved_peak: int | None = self._reserved_baseline if device == "cuda" else None

    def _take_cuda_peak(self) -> None:
        self.peak = max(self.peak, torch.cuda.max_memory_allocated())
        self._reserved_peak = max(self._reserved_peak or 0, torch.cuda.max_memory_reserved())

    @contextmanager
    def measure(self) -> Iterator[None]:
        if self.device == "cuda":
            reset_cuda_peak()
            _MEASURING.add(self)
            try:
                yield
            finally:
                _MEASURING.discard(self)
                torch.cuda.synchronize()
                self._take_cuda_peak()
            return
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                self.peak = max(self.peak, self._process.memory_info().rss)
                stop.wait(0.02)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def peak_bytes(self) -> int:
        """Peak allocated (CUDA) or sampled RSS (CPU) above the baseline."""
        return int(self.peak - self.baseline)

    @property
    def reserved(self) -> int | None:
        """CUDA only: peak bytes the caching allocator reserved above the baseline; None on a CPU."""
        return None if self._reserved_peak is None else int(self._reserved_peak - self._reserved_baseline)


# ---- tensor accounting: storages deduplicated by data_ptr ---------------------------------------------------

def _key(t: torch.Tensor) -> StorageKey | None:
    try:  # tensors without real storage (meta, fake, some subclasses) are skipped, not guessed
        storage = t.untyped_storage()
        return (str(t.device), storage.data_ptr()) if storage.nbytes() else None
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def _storages(tensors: Iterable[Any]) -> dict[StorageKey, int]:
    """The whole storage of each tensor, once: a view keeps all of its storage alive, and tied weights are one."""
    found: dict[StorageKey, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and (key := _key(t)) is not None:
            found[key] = t.untyped_storage().nbytes()
    return found


def _quant_state_tensors(state: Any) -> Iterator[torch.Tensor]:
    """bitsandbytes QuantState: absmax (uint8 with double quant), code, offset, then the nested state2's."""
    while state is not None:
        for name in ("absmax", "code", "offset"):
            if isinstance(value := getattr(state, name, None), torch.Tensor):
                yield value
        state = getattr(state, "state2", None)


def _weight_storages(model: torch.nn.Module) -> dict[StorageKey, int]:
    tensors: list[torch.Tensor] = []
    for param in model.parameters():  # a Params4bit is its packed uint8 bytes (two values a byte)
        tensors.append(param)
        tensors.extend(_quant_state_tensors(getattr(param, "quant_state", None)))
    tensors.extend(model.buffers())
    return _storages(tensors)


def _optimizer_storages(optimizer: Any) -> dict[StorageKey, int]:
    # AcceleratedOptimizer exposes the wrapped optimizer's `state`; each entry holds e.g. exp_avg, exp_avg_sq, step.
    return _storages(value for state in optimizer.state.values() for value in state.values())


def weight_bytes(model: torch.nn.Module) -> int:
    """Parameters and buffers as stored; a 4-bit weight counts its packed bytes plus its quantization state."""
    return sum(_weight_storages(model).values())


def gradient_bytes(model: torch.nn.Module) -> int:
    return sum(_storages(p.grad for p in model.parameters()).values())


def optimizer_state_bytes(optimizer: Any) -> int:
    return sum(_optimizer_storages(optimizer).values())


def _paged_storages(optimizer: Any) -> dict[StorageKey, int]:
    """A paged bitsandbytes optimizer's state buffers (tensors over 1e5 values): CUDA managed memory, which the driver
    moves between GPU and CPU, wrapped as CPU tensors marked `is_paged`; the CUDA allocator never sees them."""
    return _storages(value for state in optimizer.state.values() for value in state.values()
                     if getattr(value, "is_paged", False))


# ---- one step measured by category -------------------------------------------------------------------------

class _Saved:
    """What autograd holds instead of a saved tensor: a detached alias keeps the same storage alive exactly as long
    as the graph holds this handle (without the output -> grad_fn -> tensor reference cycle), and a weakref to the
    handle tells whether the graph still holds it."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor.detach()


def _unpack(handle: _Saved) -> torch.Tensor:
    return handle.tensor


def _cpu_peak_above_start(profiler: torch.profiler.profile) -> int:
    """Peak of the running sum of CPU allocations and frees the profiler saw (0 = the start).

    Only blocks allocated while profiling are tracked, so the frees of older blocks go unseen: a small overestimate.
    `kineto_results.events()` is the list torch's own EventList is parsed from; reading the "[memory]" records
    directly skips building the full event list.
    """
    records = sorted((e.start_ns(), e.nbytes()) for e in profiler.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    running = peak = 0
    for _, nbytes in records:
        running += nbytes
        peak = max(peak, running)
    return peak


class _QuietStderr:
    """While the CPU profiler runs, its C++ side writes start/stop lines and an allocator warning straight to file
    descriptor 2; nothing a student needs, so fd 2 points at /dev/null for the one measured step."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved, self._null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(self._null, 2)
        return self

    def __exit__(self, *exc) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        os.close(self._null)


class StepMemoryProbe:
    """Measures one optimizer step by category: weights, gradients, optimizer state, activations, other, and the step's
    device peak, plus the tokens of its largest micro-batch, and the optimizer state a paged optimizer keeps in CUDA
    managed memory ("paged_optimizer", part of "optimizer"; the CUDA allocator's peak never contains it).

    The step's runner (helpers.training.LabTrainer.measure_step) calls start() before the step, enters forward()
    around each micro-batch's forward pass (the loss included), calls before_optimizer_step() and
    after_optimizer_step() around the optimizer step, and stop() at the end. Activations are the storages autograd
    saved for backward that are still held at the end of the forward (not weights, not the input batch; autocast's
    16-bit weight copies count, the step holds them). Device peak: CUDA's allocator statistics; a CPU has none, so
    the profiler's allocation events over the step (memory only: no shapes, no stacks) plus the bytes alive at the
    step's start that can be accounted for (weights, optimizer state, gradients, the batch).
    other = step_peak - (weights + optimizer + max(activations, gradients)): PyTorch frees activations while it
    creates gradients, so the step peak is those plus temporaries (logits and their gradients, allocator slack).
    """

    def __init__(self) -> None:
        self.active = False
        self._result: dict[str, int] | None = None

    def result(self) -> dict[str, int] | None:
        """{"weights", "gradients", "optimizer", "activations", "other", "step_peak", "tokens", "paged_optimizer"}
        (bytes; tokens of the largest micro-batch measured); None if not measured."""
        return dict(self._result) if self._result is not None else None

    def start(self, model: torch.nn.Module, optimizer: Any) -> None:
        """Before the step: what is resident now (weights, optimizer state, leftover gradients) and the peak's start."""
        self._model = model
        self._device = next(model.parameters()).device
        weights = _weight_storages(model)
        self._weights, self._weight_keys = sum(weights.values()), set(weights)
        # Alive before the step: what a CPU peak adds to the allocations the profiler sees during the step.
        self._resident = {**weights, **_optimizer_storages(optimizer), **_storages(p.grad for p in model.parameters())}
        self._activations = self._gradients = self._optimizer = self._paged = self._tokens = 0
        self.active = True
        if self._device.type == "cuda":
            reset_cuda_peak(self._device)
        else:
            self._quiet = _QuietStderr().__enter__()
            self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                    profile_memory=True)
            self._profiler.__enter__()

    @contextmanager
    def forward(self) -> Iterator[None]:
        """Around one micro-batch's forward pass (the loss included). A no-op when the probe is not active."""
        if not self.active:
            yield
            return
        inputs: dict[StorageKey, int] = {}

        def note_inputs(module, args, kwargs) -> None:
            inputs.update(_storages([*args, *kwargs.values()]))
            ids = kwargs.get("input_ids", args[0] if args else None)
            if isinstance(ids, torch.Tensor):
                self._tokens = max(self._tokens, int(ids.numel()))  # padding-free: one row, every token real

        handles: list[weakref.ref[_Saved]] = []

        def pack(tensor: torch.Tensor) -> _Saved:
            handle = _Saved(tensor)
            handles.append(weakref.ref(handle))
            return handle

        hook = self._model.register_forward_pre_hook(note_inputs, with_kwargs=True)
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
                yield
        finally:
            hook.remove()
        saved = _storages(h.tensor for ref in handles if (h := ref()) is not None)
        excluded = self._weight_keys | set(inputs)
        # max over forwards: with gradient accumulation each micro-batch's backward frees the previous activations
        self._activations = max(self._activations, sum(n for k, n in saved.items() if k not in excluded))
        self._resident.update(inputs)  # the batch was made before the step began

    def before_optimizer_step(self, model: torch.nn.Module) -> None:
        if self.active:
            self._gradients = gradient_bytes(model)

    def after_optimizer_step(self, optimizer: Any) -> None:
        if self.active:
            self._optimizer = sum(n for k, n in _optimizer_storages(optimizer).items() if k not in self._weight_keys)
            self._paged = sum(_paged_storages(optimizer).values())

    def close(self) -> None:
        """Stop measuring without a result: for a step that raised (the CPU profiler would stay on)."""
        if self.active and self._device.type != "cuda":
            self._profiler.__exit__(None, None, None)
            self._quiet.__exit__()
        self.active, self._profiler, self._model, self._resident = False, None, None, None

    def stop(self) -> dict[str, int]:
        """At the step's end: the result (see result())."""
        if not self.active:
            raise RuntimeError("StepMemoryProbe.stop() without start(): no step was measured.")
        self.active = False
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
            peak = torch.cuda.max_memory_allocated(self._device)
            outside_peak = self._paged  # managed memory: in the optimizer category, never in the allocator's peak
        else:
            self._profiler.__exit__(None, None, None)
            self._quiet.__exit__()
            peak = sum(self._resident.values()) + _cpu_peak_above_start(self._profiler)
            self._profiler = None
            outside_peak = 0  # bitsandbytes pages nothing on a CPU
        tracked = self._weights + self._optimizer - outside_peak + max(self._activations, self._gradients)
        self._result = {"weights": self._weights, "gradients": self._gradients, "optimizer": self._optimizer,
                        "activations": self._activations, "other": max(0, peak - tracked), "step_peak": int(peak),
                        "tokens": self._tokens, "paged_optimizer": self._paged}
        self._model = self._resident = None  # hold no reference to the model or the batch after the step
        return dict(self._result)


# ---- prediction from the config alone ----------------------------------------------------------------------

def _linear_shape(module: torch.nn.Module) -> tuple[int, int] | None:
    """(in, out) of a Linear or of GPT-2's Conv1D (weight stored as in x out), else None."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return module.nx, module.nf
    return None


def _architecture(config: Any) -> dict[str, Any]:
    return _shapes(meta_model(config))


@lru_cache(maxsize=8)
def _shapes(model: torch.nn.Module) -> dict[str, Any]:
    """Exact parameter shapes from a model built on the meta device: any architecture, no memory, no download."""
    head = model.get_output_embeddings()
    params = list(model.parameters())  # tied weights appear once
    linears = [(name.split(".")[-1], *shape, module is head) for name, module in model.named_modules()
               if (shape := _linear_shape(module)) is not None]
    return {"params": sum(p.numel() for p in params), "tensors": len(params),
            "buffer_bytes": sum(b.numel() * b.element_size() for b in model.buffers()), "linears": linears,
            "attention": model.config._attn_implementation}


def _nf4_bytes(values: int, double_quant: bool) -> int:
    """One NF4 weight: two values a byte, plus an absmax per 64-value block. Double quant stores those as uint8
    with an fp32 absmax per 256 blocks, a 256-entry fp32 code and an offset; plus the 16-entry NF4 code."""
    blocks = math.ceil(values / 64)
    scales = blocks + 4 * math.ceil(blocks / 256) + 4 * 256 + 4 if double_quant else 4 * blocks
    return math.ceil(values / 2) + scales + 4 * 16


def _weight_split(arch: dict[str, Any], double_quant: bool) -> dict[str, int]:
    """A 4-bit base's weights: the blocks' linear layers in NF4; the embeddings, the LM head (tied to them in
    SmolLM2), the norms and the buffers stay fp32 (bitsandbytes quantizes only nn.Linear, and the lab keeps the head)."""
    nf4 = [(i, o) for _, i, o, is_head in arch["linears"] if not is_head]
    nf4_params = sum(i * o for i, o in nf4)
    return {"nf4_params": nf4_params, "nf4_bytes": sum(_nf4_bytes(i * o, double_quant) for i, o in nf4),
            "fp32_params": arch["params"] - nf4_params, "fp32_bytes": 4 * (arch["params"] - nf4_params)
            + arch["buffer_bytes"]}


def weight_split(config: Any, double_quant: bool = True) -> dict[str, int]:
    """Where a 4-bit (QLoRA) base's weight bytes go, as predict counts them: {"nf4_params", "nf4_bytes",
    "fp32_params", "fp32_bytes"} (an adapter adds 4 bytes per trainable parameter on top)."""
    return _weight_split(_architecture(config), double_quant)


# Saved activations per token and layer, in bytes per hidden (a_h), intermediate (a_i) and attention (a_q) element,
# and s per element of the packed T x T mask: bytes per element x the tensors of that width autograd keeps,
# counted from SmolLM2's saved tensors (transformers 5.23, peft 0.21, torch 2.13; within 1% on all 8 runs).
# m = the dropout mask's bytes per element. Keys: (16-bit autocast, method, dropout) -> (a_h, a_i).
_ATTENTION = {False: (16, 4), True: (8, 2)}  # a_q: SDPA keeps q, k, v, out; s: the mask, both in the query dtype
# Eager attention keeps, instead of SDPA's mask, its heads x T_row probabilities per token: the fp32 softmax output,
# and under autocast also the 16-bit copy the value matmul saves (measured on Llama's and GPT-Neo's eager attention:
# 4.0 and 6.0 bytes per probability).
_EAGER_PROBABILITIES = {False: 4, True: 6}
# TRL's fused LM head on a CPU (its torch fallback, no Triton): bytes per element of its token x vocabulary tile at
# the step's peak, the tile and the fallback's fp32 temporaries folding it (measured: 44.9 fp32, 37.0 bf16). The
# Triton kernels a GPU runs fold the tile in place, so there the tile alone counts.
_CPU_FUSED_TILE = {False: 45, True: 37}
_COEFFICIENTS = {
    # fp32 full: two RMSNorm inputs and outputs, the norm outputs feed q/k/v and gate/up; SiLU in/out, up, product
    (False, "full", False): lambda m: (24, 16),
    # fp32 LoRA: norms' inputs and outputs shared by base and lora_A (frozen weights need no input for a gradient)
    (False, "lora", False): lambda m: (16, 16),
    # with dropout each of q, k, v, o, gate, up keeps its own dropped input and mask; down's replaces the product
    (False, "lora", True): lambda m: (8 + 6 * (4 + m), 12 + (4 + m)),
    # autocast full: fp32 norm inputs, a 16-bit input copy for each of q, k, v, gate, up; 16-bit MLP tensors
    (True, "full", False): lambda m: (26, 8),
    # autocast LoRA: each adapted projection casts its own input for lora_A (+ dropout mask)
    (True, "lora", False): lambda m: (20 + 6 * m, 8 + m),
    (True, "lora", True): lambda m: (20 + 6 * m, 8 + m),
    # autocast QLoRA, whatever the compute dtype: bitsandbytes' Linear4bit returns its input's dtype
    # (Linear4bit.forward: matmul_4bit(...).to(inp_dtype)), and gate/up read the RMSNorm's fp32 output, so their
    # outputs, SiLU's and the product stay fp32 (measured: 6 bytes per intermediate value more than LoRA's, to the byte)
    (True, "qlora", False): lambda m: (20 + 6 * m, 14 + m),
    (True, "qlora", True): lambda m: (20 + 6 * m, 14 + m),
}


def predict(config: Any, spec: RunSpec, precision: str, device: str, tokens_per_step: int, processes: int = 1,
            sharded: bool = False, targets: Sequence[str] | None = None, row_tokens: int | None = None,
            loss_head: str | None = None) -> dict[str, int]:
    """Bytes one device needs for one training step of `spec`, before any weight is loaded.

    tokens_per_step: tokens one device processes in one micro-batch (the lab passes its largest batch's,
    helpers.runs.Lab.largest_batch_tokens, the batch its runs measure); row_tokens: the packed row's length (the T x T
    attention mask), by default all of them (the lab packs a micro-batch's examples into one row). processes K with
    sharded=True (FSDP full shard): parameters, gradients and optimizer state divided by K, but not buffers nor
    QLoRA's uint8 4-bit weights (accelerate leaves those out of FSDP: whole on every GPU). targets: the LoRA layer
    names when spec.lora.target_modules is None (the preset's lora_targets). loss_head: "full logits" or "fused" (TRL's
    chunked LM head), by default the one the lab's trainer uses on `device` (helpers.training.loss_head_for). The
    attention is the one transformers picks for the config (SDPA, or eager where the architecture has nothing else).
    Trainable weights are fp32, the optimizer AdamW.
    Returns the five categories, "total" (their sum), "peak" (weights + optimizer + max(activations, gradients) +
    other: activations are freed while gradients are created) and "trainable_params".
    """
    arch = _architecture(config)
    method = spec.method
    names = set(spec.lora.target_modules or targets or ()) if spec.lora else set()
    if spec.lora and not names:
        raise ValueError(f"predict({spec.run_id!r}): which layers LoRA adapts is unknown. Fix: pass targets=the "
                         "preset's lora_targets (helpers.models.get_preset(name).lora_targets).")
    if loss_head is None:
        from .training import loss_head_for

        loss_head = loss_head_for(device)
    if loss_head not in ("full logits", "fused"):
        raise ValueError(f"predict(loss_head={loss_head!r}): there is no such loss head. Fix: 'full logits' or "
                         "'fused' (helpers.training.loss_head_for(device)).")
    adapted = [(i, o) for name, i, o, _ in arch["linears"] if name in names]
    r = spec.lora.r if spec.lora else 0
    lora_params = sum(r * (i + o) for i, o in adapted)
    # DoRA: a trained magnitude per output of each adapted layer, and per token two more saved outputs of that width
    # (PEFT's DoraLinearLayer multiplies the base's and the adapter's results by magnitude / norm, which keeps both
    # for the magnitude's gradient); its weight norm is detached (the paper's section 4.3), so it keeps nothing.
    magnitudes = sum(o for _, o in adapted) if spec.lora and spec.lora.use_dora else 0

    # Weights: fp32 everywhere (load_model, prepare_model_for_kbit_training) except NF4 linear layers (not the head).
    buffers = arch["buffer_bytes"]
    if spec.quantization:
        split = _weight_split(arch, spec.quantization.bnb_4bit_use_double_quant)
        nf4, parameters = split["nf4_bytes"], split["fp32_bytes"] - buffers + 4 * (lora_params + magnitudes)
    else:
        nf4, parameters = 0, 4 * (arch["params"] + lora_params + magnitudes)
    trainable = arch["params"] if method == "full" else lora_params + magnitudes
    trainable_tensors = arch["tensors"] if method == "full" else (3 if magnitudes else 2) * len(adapted)
    gradients = 4 * trainable
    optimizer = 8 * trainable + 4 * trainable_tensors  # AdamW: exp_avg, exp_avg_sq (fp32) and an fp32 step scalar
    if sharded and processes > 1:  # FSDP shards parameters; buffers and frozen uint8 4-bit weights stay whole
        parameters, gradients, optimizer = (math.ceil(x / processes) for x in (parameters, gradients, optimizer))
    weights = nf4 + parameters + buffers

    # Activations: A = T * [L * (a_h*h + a_i*i + a_q*q + s*T_row + 4*heads + n_adapted*r*s) + head + 12h] + C
    h, n_layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    inter = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * h  # GPT-2/Neo: 4h
    heads = config.num_attention_heads
    q = heads * (getattr(config, "head_dim", None) or h // heads)
    autocast = precision in ("bf16", "fp16")  # fp16 autocast (T4) keeps the same byte counts as bf16
    dropout = bool(spec.lora and spec.lora.lora_dropout > 0)  # full fine-tuning has no adapter dropout
    m = (4 if device == "cpu" else 1) if dropout else 0  # CPU dropout keeps an fp32 mask, CUDA's fused one a bool
    kind = "qlora" if method == "qlora" and autocast else "lora" if method != "full" else "full"
    a_h, a_i = _COEFFICIENTS[(autocast, kind, dropout)](m)
    a_q, s = _ATTENTION[autocast]
    row = row_tokens or tokens_per_step
    scores = _EAGER_PROBABILITIES[autocast] * heads * row if arch["attention"] == "eager" else s * row
    per_layer = a_h * h + a_i * inter + a_q * q + scores + 4 * heads + (len(adapted) // n_layers) * r * s
    if loss_head == "full logits":  # the fp32 log-softmax of the logits (transformers upcasts)
        head = 4 * vocab
    else:  # the fused head keeps the hidden states it scores and a few numbers per token, no logits
        head = 4 * h + 16
    activations = tokens_per_step * (n_layers * per_layer + head + 12 * h)  # + the final norm's input and output
    # DoRA's two saved outputs, in the compute dtype (measured: 4.05 bytes per adapted output under bf16 autocast)
    activations += tokens_per_step * (4 if autocast else 8) * magnitudes
    if autocast:  # autocast's 16-bit weight copies, saved by each matmul for its input gradient (frozen ones too);
        # a 4-bit layer ignores autocast (it dequantizes in its compute dtype), the LM head is never 4-bit, and the
        # fused head casts its weight chunk by chunk without keeping it
        copied = sum(i * o for _, i, o, is_head in arch["linears"]
                     if (loss_head == "full logits" if is_head else method != "qlora"))
        activations += 2 * (copied + lora_params)
    if loss_head == "full logits":
        other = 2 * 4 * tokens_per_step * vocab  # two fp32 logits-sized tensors: the logits' gradient and its input's
    else:
        other = _fused_head_peak(tokens_per_step, vocab, h, autocast, device, head_trainable=method == "full")
    if arch["attention"] == "eager":  # one layer's fp32 probability gradient in its backward
        other += 4 * heads * row * row
    prediction = {"weights": weights, "gradients": gradients, "optimizer": optimizer, "activations": activations,
                  "other": other}
    prediction["total"] = sum(prediction.values())
    prediction["peak"] = weights + optimizer + max(activations, gradients) + other
    prediction["trainable_params"] = trainable
    return {k: int(v) for k, v in prediction.items()}


def _fused_head_peak(tokens: int, vocab: int, hidden: int, autocast: bool, device: str, head_trainable: bool) -> int:
    """The memory TRL's fused LM head adds at the step's peak, in its backward: one token x vocabulary tile (in the
    compute dtype), the fp32 gradient of the hidden states, the 16-bit casts of a weight chunk and of the hidden
    states under autocast, and the LM head's fp32 weight gradient when it trains. On a GPU it scores only the
    completion tokens; `tokens` (all of them) bounds that."""
    from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    n, c = min(tokens, TOKEN_CHUNK_SIZE), min(vocab, _CHUNKED_LOGPROB_CHUNK_SIZE)
    compute = 2 if autocast else 4
    tile = n * c * (_CPU_FUSED_TILE[autocast] if device == "cpu" else compute)
    casts = compute * (c + n) * hidden if autocast else 0
    return tile + 4 * tokens * hidden + casts + (4 * vocab * hidden if head_trainable else 0)


# ---- refusing a run that cannot fit ------------------------------------------------------------------------

class MemoryFitError(RuntimeError):
    """The run's predicted peak does not fit the device's free memory."""


def gb(nbytes: float) -> str:
    return f"{nbytes / GB:.1f} GB"


def cheaper_choices(config: Any, targets: Sequence[str], precision: str, device: str,
                    tokens_per_step: int) -> dict[str, dict[str, int]]:
    """Predictions for the usual ways out: QLoRA and LoRA at rank 16, keyed by how a notebook asks for them."""
    return {label: predict(config, spec, precision, device, tokens_per_step, targets=targets)
            for label, spec in (("QLoRA (helpers.qlora(16))", qlora(16)), ("LoRA (helpers.lora(16))", lora(16)))}


def check_fits(prediction: dict[str, int], free_bytes: int, what: str,
               alternatives: dict[str, dict[str, int]]) -> None:
    """Raise MemoryFitError when the predicted peak exceeds FIT_FRACTION of the free memory, with the figures and
    the cheaper choices; return quietly when it fits."""
    if prediction["peak"] <= FIT_FRACTION * free_bytes:
        return
    parts = ", ".join(f"{name} {gb(prediction[name])}" for name in CATEGORIES)
    choices = "; ".join(f"{label} needs about {gb(p['peak'])}" + ("" if p["peak"] <= FIT_FRACTION * free_bytes
                                                                  else " (does not fit either)")
                        for label, p in sorted(alternatives.items(), key=lambda kv: kv[1]["peak"]))
    raise MemoryFitError(
        f"{what} needs about {gb(prediction['peak'])} at its peak ({parts}; gradients and activations are not held "
        f"at the same time) but the device has {gb(free_bytes)} free, of which about {FIT_FRACTION:.0%} is usable. "
        f"Fix: {choices + '; ' if choices else ''}or several GPUs with FSDP (README), which shards weights, gradients "
        "and optimizer state; or fewer tokens per step (helpers.Lab(..., batch_size=..., max_length=...)), which "
        "shrinks the activations.")
