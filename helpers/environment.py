"""Where the lab runs: Colab or local, which device, which precision, which paths."""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

PROFILE_ENV = "LAB_PROFILE"
RESULTS_ENV = "LAB_RESULTS_DIR"
CACHE_ENV = "LAB_CACHE_DIR"


@dataclass(frozen=True)
class Precision:
    """How a run computes: `dtype` is what activations use; trainable weights always stay fp32."""

    name: str  # "bf16" | "fp16" | "fp32"
    fp16: bool  # TrainingArguments.fp16 (AMP with a loss scaler)
    bf16: bool  # TrainingArguments.bf16

    @property
    def dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.name]


def choose_precision(device: str, capability: tuple[int, int] | None = None) -> Precision:
    """bf16 from sm_80 (A100, L4, H100) up; fp16 AMP below (T4 is sm_75); fp32 on CPU.

    Never ask `torch.cuda.is_bf16_supported()`: it answers True on a T4, which then emulates bf16
    slowly or fails in the AMP grad scaler (the TinyLlama seed's trouble).
    """
    if device != "cuda":
        return Precision("fp32", fp16=False, bf16=False)
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
        return f"{where} | {self.device_name} | precision {self.precision.name} | {hub}"


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
    return Environment(in_colab(), device, name, capability, choose_precision(device, capability), hub_offline())


def results_dir() -> Path:
    """Where runs write: $LAB_RESULTS_DIR, else results/ at the repository root (gitignored)."""
    path = Path(os.environ.get(RESULTS_ENV) or REPO_ROOT / "results")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Converted model weights live outside the repo so a fresh clone reuses them."""
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "finetune-lab")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_directory_atomically(target: Path, *savers) -> Path:
    """Each saver(staging_dir) writes into a hidden staging folder, renamed onto `target` once all succeed:
    a crash leaves a stray staging folder, never a half-written model or adapter."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for save in savers:
            save(staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
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


def return_freed_memory_to_os() -> None:
    """Make freed tensors leave the process, so RSS measured for one run is not another run's leftovers.

    glibc raises its mmap threshold after large frees and then keeps freed blocks in the heap; a fixed
    threshold keeps big tensors mmapped (returned to the OS on free), and malloc_trim hands back the rest.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 1 << 20)
    libc.malloc_trim(0)
