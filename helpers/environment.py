"""Where the lab runs: Colab or local, which device, which precision, which paths."""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .colab import FULL_CHECKPOINTS_ENV  # named there: the Colab setup cell sets it before torch may be imported

REPO_ROOT = Path(__file__).resolve().parent.parent

PROFILE_ENV = "LAB_PROFILE"
RESULTS_ENV = "LAB_RESULTS_DIR"
CACHE_ENV = "LAB_CACHE_DIR"
SEEDS_ENV = "LAB_SEEDS"
# "1": Lab.run_seed trains each (spec, seed) in a fresh Python process of its own (make lab sets it); "child" marks
# that process. One process for many runs fragments glibc's heap run after run (README, "Speed").
ISOLATE_ENV = "LAB_ISOLATE_RUNS"


@dataclass(frozen=True)
class Precision:
    """How a run computes: `dtype` is what activations use; trainable weights always stay fp32."""

    name: str  # "bf16" | "fp16" | "fp32"
    fp16: bool  # TrainingArguments.fp16 (AMP with a loss scaler)
    bf16: bool  # TrainingArguments.bf16

    @property
    def dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.name]


FP32 = Precision("fp32", fp16=False, bf16=False)  # no autocast: what evaluation computes in everywhere


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPU multiplies bf16 matrices in hardware (about 2-4x its fp32 rate).

    Read from the kernel's CPU flags, not from torch: torch runs bf16 everywhere, emulated (slower than fp32)
    where the hardware lacks it.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def choose_precision(device: str, capability: tuple[int, int] | None = None, native_bf16: bool = False) -> Precision:
    """bf16 from sm_80 (A100, L4, H100) up; fp16 AMP below (T4 is sm_75); on a CPU bf16 autocast where the
    hardware has bf16 matrix instructions, else fp32. Trainable weights stay fp32 in every case.

    Never ask `torch.cuda.is_bf16_supported()`: it answers True on a T4, which then emulates bf16
    slowly or fails in the AMP grad scaler (the TinyLlama seed's trouble).
    """
    if device != "cuda":
        return Precision("bf16", fp16=False, bf16=True) if native_bf16 else FP32
    if capability is None:
        raise ValueError("choose_precision('cuda') needs the GPU's compute capability, e.g. (7, 5) for a T4.")
    if capability >= (8, 0):
        return Precision("bf16", fp16=False, bf16=True)
    return Precision("fp16", fp16=True, bf16=False)


@dataclass(frozen=True)
class Environment:
    in_colab: bool
    device: str  # "cuda" | "cpu"
    device_name: str
    capability: tuple[int, int] | None
    precision: Precision
    hub_offline: bool

    def describe(self) -> str:
        where = "Google Colab" if self.in_colab else "local machine"
        hub = "offline (bundled model and data only)" if self.hub_offline else "Hub allowed"
        return f"{where} | {self.device_name} | precision {self.precision.name} | {torch_build()} | {hub}"


def torch_build() -> str:
    """'torch 2.13.0+cpu, no CUDA' or 'torch 2.8.0+cu126, CUDA 12.6': the torch this process runs and the CUDA it was
    built for. requirements.txt pins no torch (Colab keeps the CUDA build its image brings), so this is the one
    version of the stack a Colab run does not choose."""
    cuda = torch.version.cuda
    return f"torch {torch.__version__}, " + (f"CUDA {cuda}" if cuda else "no CUDA")


@dataclass(frozen=True)
class Parallel:
    """How one optimizer step is spread: over processes (torchrun / accelerate launch: DDP, or FSDP when sharded)
    and over accumulated micro-batches. The profile's batch_size stays the global batch, so the token budget of a
    run does not depend on how many processes share it."""

    processes: int = 1
    rank: int = 0
    accumulation: int = 1
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def per_device_batch(self, global_batch: int) -> int:
        split = self.processes * self.accumulation
        if global_batch % split:
            raise ValueError(f"batch_size = {global_batch} examples per step cannot be split evenly over "
                             f"{self.processes} process(es) x {self.accumulation} accumulation step(s). Fix: make "
                             f"batch_size a multiple of {split} (helpers.Lab(..., batch_size={split * max(1, global_batch // split)})).")
        return global_batch // split

    def with_rows_within(self, global_batch: int, max_length: int, row_limit: int) -> Parallel:
        """This layout with the fewest accumulated micro-batches (a multiple of its own) that keep every packed row,
        one micro-batch of examples of up to max_length tokens each, within row_limit tokens."""
        per_process = self.per_device_batch(global_batch) * self.accumulation
        for accumulation in range(self.accumulation, per_process + 1, self.accumulation):
            if per_process % accumulation == 0 and per_process // accumulation * max_length <= row_limit:
                return replace(self, accumulation=accumulation)
        raise ValueError(f"max_length = {max_length}: one example is longer than the {row_limit} tokens the model's "
                         f"attention takes in a row. Fix: max_length={row_limit} or less (helpers.Lab(..., "
                         f"max_length={min(row_limit, 512)})).")

    def describe(self) -> str:
        if self.processes == 1 and self.accumulation == 1:
            return "1 process"
        sharding = "FSDP (weights, gradients and optimizer state sharded)" if self.fsdp else "DDP"
        return (f"{self.processes} processes ({sharding})" if self.processes > 1 else "1 process") + (
            f", {self.accumulation} accumulated micro-batches per step" if self.accumulation > 1 else "")


def launched_parallel(accumulation: int = 1, fsdp: bool = False) -> Parallel:
    """The process layout torchrun or accelerate launch set in the environment (one process otherwise)."""
    return Parallel(int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")), accumulation, fsdp)


def in_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def detect() -> Environment:
    if torch.cuda.is_available():
        capability = torch.cuda.get_device_capability(0)
        name = f"{torch.cuda.get_device_name(0)} (sm_{capability[0]}{capability[1]})"
        device = "cuda"
    else:
        capability, device = None, "cpu"
        name = f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    precision = choose_precision(device, capability, device == "cpu" and cpu_has_native_bf16())
    return Environment(in_colab(), device, name, capability, precision, hub_offline())


def results_dir() -> Path:
    """Where runs write: $LAB_RESULTS_DIR, else results/ at the repository root (gitignored)."""
    path = Path(os.environ.get(RESULTS_ENV) or REPO_ROOT / "results")
    path.mkdir(parents=True, exist_ok=True)
    return path


def full_checkpoints_dir() -> Path | None:
    """$LAB_FULL_CHECKPOINTS_DIR: where full fine-tuning keeps its checkpoints instead of beside the results (on Colab
    the runtime's own disk, while the results are on Google Drive); None: beside the results."""
    value = os.environ.get(FULL_CHECKPOINTS_ENV)
    return Path(value) if value else None


def cache_dir() -> Path:
    """Converted model weights live outside the repo so a fresh clone reuses them."""
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "finetune-lab")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_directory_atomically(target: Path, *savers, keep_existing: bool = False) -> Path:
    """Each saver(staging_dir) writes into a hidden staging folder, renamed onto `target` once all succeed:
    a crash leaves a stray staging folder, never a half-written model or adapter. keep_existing: a cache that another
    process finished first is kept (it holds the same bytes), never removed under its readers."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for save in savers:
            save(staging)
        if not keep_existing:
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            if not (keep_existing and target.is_dir()):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def package_versions() -> dict[str, str | None]:
    names = ["torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate"]
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _glibc():
    """The C library's malloc controls, or None where they do not exist (not Linux, or not glibc)."""
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4


def return_freed_memory_to_os() -> None:
    """Make freed tensors leave the process, so RSS measured for one run is not another run's leftovers.

    glibc raises its mmap threshold after large frees and then keeps freed blocks in the heap; a fixed
    threshold keeps big tensors mmapped (returned to the OS on free), and malloc_trim hands back the rest.
    """
    libc = _glibc()
    if libc is None:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    libc.malloc_trim(0)


@contextmanager
def heap_reuse() -> Iterator[None]:
    """Inside: freed host memory stays in the process for the next allocation; on exit it is handed back.

    Training and evaluation run inside. Outside, every tensor over 1 MiB is a fresh mmap that the kernel zeroes page
    by page (return_freed_memory_to_os). Measured here (2026-12-07, LoRA r8, 20 steps, three repeats in one process):
    outside, 8.2-10.5 million minor page faults and 27-30 s of system time per repeat, user time rising 136 -> 150 ->
    156 s for the same work, upper-quartile step rate 130.8 -> 115.7 -> 116.6 tokens/s; inside, 0.5 million faults,
    2 s of system time, 154.4 -> 158.5 -> 155.7 tokens/s. The price: a CPU run's whole-training RSS peak includes
    freed blocks the heap keeps for reuse (2.4-2.6 GB against 2.0-2.1 GB), as CUDA's reserved figure does; the
    tables' memory is the step probe's tensors, which this does not change.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)  # every allocation from the heap, where a freed block is reused as it is
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)  # and not given back after each free
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, 65536)  # glibc's defaults
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
        return_freed_memory_to_os()
