"""helpers.environment (precision from the compute capability alone) and helpers.profiles (budgets)."""

from dataclasses import asdict

import pytest
import torch

from helpers import environment, profiles
from helpers.environment import Precision, choose_precision, detect
from helpers.profiles import PROFILES, get_profile

# ---------- precision ----------


@pytest.mark.parametrize("capability, name, fp16, bf16, dtype", [
    ((7, 5), "fp16", True, False, torch.float16),  # T4
    ((7, 0), "fp16", True, False, torch.float16),  # V100
    ((8, 0), "bf16", False, True, torch.bfloat16),  # A100
    ((8, 9), "bf16", False, True, torch.bfloat16),  # L4
    ((9, 0), "bf16", False, True, torch.bfloat16),  # H100
])
def test_choose_precision_on_cuda(capability, name, fp16, bf16, dtype):
    p = choose_precision("cuda", capability)
    assert (p.name, p.fp16, p.bf16) == (name, fp16, bf16)
    assert p.dtype == dtype


def test_choose_precision_on_cpu_follows_its_bf16_instructions():
    p = choose_precision("cpu")
    assert p == Precision("fp32", fp16=False, bf16=False)
    assert p.dtype == torch.float32
    assert choose_precision("cpu", (9, 0)) == p  # a capability does not matter off CUDA
    native = choose_precision("cpu", None, native_bf16=True)  # AVX512-BF16 or AMX: bf16 autocast pays
    assert native == Precision("bf16", fp16=False, bf16=True) and native.dtype == torch.bfloat16


@pytest.mark.parametrize("flags, native", [("fpu avx512f avx512_bf16 amx_tile", True), ("fpu amx_bf16", True),
                                           ("fpu avx2 avx512f", False)])
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(environment.Path, "read_text", lambda self, *a, **k: f"flags\t\t: {flags}\n")
    assert environment.cpu_has_native_bf16() is native


def test_choose_precision_cuda_needs_a_capability():
    with pytest.raises(ValueError, match="capability"):
        choose_precision("cuda")


def _fake_gpu(monkeypatch, capability, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def _bf16_question_is_forbidden(*args, **kwargs):
    raise AssertionError("the precision decision consulted torch.cuda.is_bf16_supported()")


def test_detect_on_a_t4_chooses_fp16_without_asking_is_bf16_supported(monkeypatch):
    _fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", _bf16_question_is_forbidden)
    env = detect()
    assert env.device == "cuda"
    assert env.capability == (7, 5)
    assert env.device_name == "Tesla T4 (sm_75)"
    assert env.precision == Precision("fp16", fp16=True, bf16=False)


def test_detect_on_a_t4_ignores_a_bf16_supported_true(monkeypatch):
    # torch answers True on a T4 (emulated bf16); the lab must still pick fp16
    _fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert detect().precision.name == "fp16"


def test_detect_on_an_a100_chooses_bf16(monkeypatch):
    _fake_gpu(monkeypatch, (8, 0), "NVIDIA A100-SXM4-40GB")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", _bf16_question_is_forbidden)
    env = detect()
    assert env.precision == Precision("bf16", fp16=False, bf16=True)
    assert env.device_name == "NVIDIA A100-SXM4-40GB (sm_80)"


def test_the_environment_line_names_the_torch_and_cuda_that_colab_brings(monkeypatch):
    """requirements.txt pins no torch: on Colab the image's CUDA build is the one version the lab does not choose,
    so the line every notebook prints (lab.describe) names it."""
    _fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.8.0+cu126"))
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    assert "| torch 2.8.0+cu126, CUDA 12.6 |" in detect().describe()
    monkeypatch.setattr(torch.version, "cuda", None)  # the CPU build make setup installs
    assert "| torch 2.8.0+cu126, no CUDA |" in detect().describe()


@pytest.mark.parametrize("native, name", [(False, "fp32"), (True, "bf16")])
def test_detect_without_cuda_uses_the_cpu_flags(monkeypatch, native, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(environment, "cpu_has_native_bf16", lambda: native)
    env = detect()
    assert (env.device, env.capability, env.precision.name) == ("cpu", None, name)
    assert env.device_name.startswith("CPU (")


@pytest.mark.parametrize("value, offline", [("1", True), ("true", True), ("ON", True), ("0", False), ("", False)])
def test_hub_offline(monkeypatch, value, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert environment.hub_offline() is offline


def test_results_dir_follows_the_environment(monkeypatch, tmp_path):
    target = tmp_path / "deep" / "results"
    monkeypatch.setenv(environment.RESULTS_ENV, str(target))
    assert environment.results_dir() == target
    assert target.is_dir()


# ---------- profiles ----------


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu"])
def test_lab_profile_env_is_respected(monkeypatch, name):
    monkeypatch.setenv("LAB_PROFILE", name)
    assert get_profile() == PROFILES[name]
    assert get_profile().name == name


def test_explicit_name_beats_the_environment(monkeypatch):
    monkeypatch.setenv("LAB_PROFILE", "gpu")
    assert get_profile("smoke").name == "smoke"


@pytest.mark.parametrize("cuda, offline, expected", [(False, "1", "cpu"), (False, "0", "cpu"), (True, "1", "cpu"),
                                                     (True, "0", "gpu")])
def test_auto_profile_without_lab_profile(monkeypatch, cuda, offline, expected):
    monkeypatch.delenv("LAB_PROFILE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert get_profile().name == expected


@pytest.mark.parametrize("source", ["argument", "environment"])
def test_unknown_profile_names_the_choices(monkeypatch, source):
    monkeypatch.setenv("LAB_PROFILE", "laptop")
    with pytest.raises(ValueError) as info:
        get_profile("laptop" if source == "argument" else None)
    message = str(info.value)
    assert "'laptop'" in message
    for choice in ("smoke", "cpu", "gpu"):
        assert choice in message


def test_override_none_keeps_the_profile_value():
    assert get_profile("cpu", max_steps=None, batch_size=None) == PROFILES["cpu"]


def test_override_value_replaces_only_that_setting():
    p = get_profile("cpu", max_steps=4, max_length=64)
    assert (p.max_steps, p.max_length) == (4, 64)
    assert p.name == "cpu"
    assert asdict(p) == {**asdict(PROFILES["cpu"]), "max_steps": 4, "max_length": 64}
    assert PROFILES["cpu"].max_steps == 30  # the table itself is untouched


def test_unknown_override_key_raises():
    with pytest.raises(ValueError, match="max_stepz"):
        get_profile("cpu", max_stepz=3)


def test_profiles_share_one_seed_and_fit_their_budget():
    for p in PROFILES.values():
        assert p.seeds == (42,) and p.data_seed == 0, "training seeds vary; the data sample and held-out set do not"
        assert p.warmup_steps < p.max_steps
        assert p.generation_prompts >= 1
        assert profiles.check(p) is p


def test_seeds_choose_training_runs_not_data(monkeypatch):
    monkeypatch.setenv("LAB_SEEDS", "3")
    assert get_profile("smoke").seeds == (42, 1, 2)
    monkeypatch.setenv("LAB_SEEDS", "7,8")
    assert get_profile("smoke").seeds == (7, 8)
    assert get_profile("smoke", seeds=2).seeds == (42, 1)
    assert get_profile("smoke", seeds=[5]).seeds == (5,)
    assert {get_profile("smoke", seeds=n).data_seed for n in (1, 3)} == {0}


# ---------- host memory ----------


@pytest.mark.skipif(environment._glibc() is None, reason="glibc's malloc controls only")
def test_heap_reuse_keeps_freed_memory_inside_and_hands_it_back_on_exit():
    import psutil

    process, size = psutil.Process(), 256 * 2**20
    environment.return_freed_memory_to_os()

    def allocate_and_free() -> int:
        block = torch.ones(size // 4)  # written, so every page is resident
        del block
        return process.memory_info().rss

    start = process.memory_info().rss
    assert allocate_and_free() - start < size // 4, "outside the block a freed tensor leaves the process"
    with environment.heap_reuse():
        assert allocate_and_free() - start > size // 2, "inside, a freed tensor stays for the next allocation"
    assert process.memory_info().rss - start < size // 4, "on exit it is handed back"
    assert allocate_and_free() - start < size // 4, "and tensors are mmapped and returned again afterwards"
