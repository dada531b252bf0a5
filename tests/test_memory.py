"""helpers.memory: one training step measured by category, the prediction from the config, the fit check."""

from types import SimpleNamespace

import pytest
import torch
from conftest import make_tiny_llama, tiny_llama_config
from peft import LoraConfig, get_peft_model
from transformers import GPTNeoConfig, GPTNeoForCausalLM, LlamaConfig, LlamaForCausalLM

from helpers.memory import (MemoryFitError, MemoryMeter, StepMemoryProbe, cheaper_choices, check_fits, gb,
                            gradient_bytes, predict, weight_bytes)
from helpers.models import LLAMA_TARGETS
from helpers.specs import dora, full, lora, qlora

RANK = 8


def wide_llama_config() -> LlamaConfig:
    """Wider and deeper than conftest's tiny Llama, with the same small vocabulary, so that activations (per token
    ~ layers x widths) dwarf "other": at the step's peak, early in backward, that is two fp32 logits-sized tensors
    (the gradients of the log-softmax and of the logits) plus one layer's backward temporaries (MLP-wide gradients),
    neither of which grows with the number of layers."""
    return LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=6,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)


def build(method: str, config: LlamaConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.config.use_cache = False
    if method in ("lora", "dora"):
        model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=16, lora_dropout=0.0, bias="none",
                                                 target_modules=list(LLAMA_TARGETS), task_type="CAUSAL_LM",
                                                 use_dora=method == "dora"))
    return model.train()


def packed_batch(vocab: int, rows: int, length: int) -> dict[str, torch.Tensor]:
    """The lab's padding-free layout: a step's examples in one row, positions restarting at each example."""
    ids = torch.randint(0, vocab, (1, rows * length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(length).repeat(rows)[None]}


def measured_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """Two optimizer steps (the first creates AdamW's state); the probe brackets the second as
    LabTrainer.measure_step does."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    probe = StepMemoryProbe()
    for done in range(2):
        if done == 1:
            probe.start(model, optimizer)
        assert probe.active == (done == 1)
        with probe.forward():  # a no-op while the probe is not active
            loss = model(**batch).loss
        loss.backward()
        probe.before_optimizer_step(model)
        optimizer.step()
        probe.after_optimizer_step(optimizer)
        model.zero_grad()
        del loss
    result = probe.stop()
    assert not probe.active and result == probe.result()
    return result


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices gain nothing from a second thread, and OpenMP's spinning threads make a step 30x slower when
    another process holds the other core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def measured() -> dict[str, tuple[dict, torch.nn.Module]]:
    config = wide_llama_config()
    out = {}
    for method in ("lora", "full"):
        model = build(method, config)
        out[method] = (measured_step(model, packed_batch(config.vocab_size, rows=4, length=128)), model)
    return out


def test_dora_prediction_counts_its_magnitudes_and_saved_outputs(measured):
    """DoRA (PEFT's use_dora) trains a magnitude per output of each adapted layer and keeps two more outputs of that
    width per token for the backward pass: the prediction counts both, within the lab's bound, and above LoRA's."""
    config = wide_llama_config()
    model = build("dora", config)
    m = measured_step(model, packed_batch(config.vocab_size, rows=4, length=128))
    spec = dora(RANK)
    p = predict(config, spec, "fp32", "cpu", 4 * 128, targets=LLAMA_TARGETS)
    assert p["trainable_params"] == sum(q.numel() for q in model.parameters() if q.requires_grad)
    assert (p["weights"], p["gradients"], p["optimizer"]) == (m["weights"], m["gradients"], m["optimizer"])
    assert abs(p["activations"] - m["activations"]) <= 0.05 * m["activations"], (p, m)
    assert abs(p["peak"] - m["step_peak"]) <= 0.15 * m["step_peak"], (p, m)
    lora_step = measured["lora"][0]
    assert m["activations"] > lora_step["activations"] and p["activations"] > predict(
        config, lora(RANK), "fp32", "cpu", 4 * 128, targets=LLAMA_TARGETS)["activations"]


def test_categories_add_up_to_the_step_peak_and_explain_it(measured):
    for method, (m, _) in measured.items():
        assert set(m) == {"weights", "gradients", "optimizer", "activations", "other", "step_peak", "tokens",
                          "paged_optimizer"}
        assert m["paged_optimizer"] == 0, "torch's AdamW keeps its state in ordinary tensors"
        assert m["tokens"] == 4 * 128, "the packed row's tokens, as the forward saw them"
        tracked = m["weights"] + m["optimizer"] + max(m["activations"], m["gradients"])
        assert tracked <= m["step_peak"], (method, m)  # "other" was not clamped at 0: the sum is exact
        assert tracked + m["other"] == m["step_peak"]
    lora_step = measured["lora"][0]
    # Activations dominate this LoRA step; the categories must explain all but "other" (two logits' gradients).
    assert lora_step["activations"] > 5 * lora_step["weights"]
    tracked = lora_step["step_peak"] - lora_step["other"]
    assert tracked >= 0.95 * lora_step["step_peak"], lora_step
    assert lora_step["other"] > 0  # the logits' gradients are real memory the categories do not hold


def test_gradient_and_adamw_bytes_are_exact(measured):
    for method, (m, model) in measured.items():
        trainable = [p for p in model.parameters() if p.requires_grad]
        n = sum(p.numel() for p in trainable)
        assert m["gradients"] == 4 * n, method
        # AdamW: fp32 exp_avg and exp_avg_sq, plus a 4-byte fp32 `step` tensor per parameter (non-capturable)
        assert m["optimizer"] == 8 * n + 4 * len(trainable), method
        assert gradient_bytes(model) == 0  # zero_grad(set_to_none) freed them after the step
    assert measured["full"][0]["gradients"] > 5 * measured["lora"][0]["gradients"]


def test_prediction_matches_the_measured_step(measured):
    config = wide_llama_config()
    tokens = 4 * 128
    for method, spec in (("lora", lora(RANK)), ("full", full())):
        m, model = measured[method]
        p = predict(config, spec, "fp32", "cpu", tokens, targets=LLAMA_TARGETS)
        trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
        assert p["trainable_params"] == trainable
        assert (p["weights"], p["gradients"], p["optimizer"]) == (m["weights"], m["gradients"], m["optimizer"])
        measured_total = sum(m[k] for k in ("weights", "gradients", "optimizer", "activations", "other"))
        assert abs(p["total"] - measured_total) <= 0.15 * measured_total, (method, p, m)
        assert abs(p["peak"] - m["step_peak"]) <= 0.15 * m["step_peak"], (method, p, m)
        assert abs(p["activations"] - m["activations"]) <= 0.05 * m["activations"], (method, p, m)


class FakeCuda:
    """The CUDA allocator's statistics as torch keeps them, one set per process: bytes allocated now, and the peak
    since the last reset_peak_memory_stats."""

    def __init__(self, allocated: int = 100):
        self.allocated = self.peak = allocated

    def allocate(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def free(self, n: int) -> None:
        self.allocated -= n

    def install(self, monkeypatch) -> "FakeCuda":
        now, peak = (lambda device=None: self.allocated), (lambda device=None: self.peak)
        reset = lambda device=None: setattr(self, "peak", self.allocated)  # noqa: E731
        for name, fake in {"is_available": lambda: True, "synchronize": lambda device=None: None,
                           "empty_cache": lambda: None, "memory_allocated": now, "memory_reserved": now,
                           "max_memory_allocated": peak, "max_memory_reserved": peak,
                           "reset_peak_memory_stats": reset}.items():
            monkeypatch.setattr(torch.cuda, name, fake)
        return self


class OnCuda:
    """Stands in for a model on the GPU: the probe asks it only for its parameters' device, storages and gradients
    (a parameter that is no tensor has no storage to count)."""

    def __init__(self):
        self.param = SimpleNamespace(device=torch.device("cuda"), grad=None)

    def parameters(self):
        return iter([self.param])

    def buffers(self):
        return iter([])


def test_the_whole_run_peak_keeps_the_steps_before_a_probe_resets_the_cuda_peak(monkeypatch):
    """CUDA keeps one peak counter per device: a probe that resets it inside the meter's block must not erase step 1's
    peak from the whole-run figure."""
    cuda = FakeCuda().install(monkeypatch)
    meter = MemoryMeter("cuda")
    with meter.measure():
        cuda.allocate(5000)  # step 1: the highest point of the run
        cuda.free(5000)
        probe = StepMemoryProbe()
        probe.start(OnCuda(), SimpleNamespace(state={}))
        cuda.allocate(2000)
        cuda.free(2000)
        assert probe.stop()["step_peak"] == 100 + 2000, "the probe still measures its own step from its reset"
    assert meter.peak_bytes == 5000 and meter.reserved == 5000


def test_paged_optimizer_state_is_counted_apart_from_the_cuda_peak(monkeypatch):
    """A paged bitsandbytes optimizer keeps its state in CUDA managed memory, wrapped as CPU tensors marked is_paged
    (bitsandbytes.functional.get_paged): the probe reports it, and does not take it out of the allocator's peak,
    which never held it."""
    cuda = FakeCuda().install(monkeypatch)
    paged = torch.zeros(1 << 16, dtype=torch.uint8)
    paged.is_paged = True
    optimizer = SimpleNamespace(state={"param": {"state1": paged, "step": 3}})
    model, probe = OnCuda(), StepMemoryProbe()
    probe.start(model, optimizer)
    cuda.allocate(2000)
    probe.before_optimizer_step(model)
    probe.after_optimizer_step(optimizer)
    cuda.free(2000)
    step = probe.stop()
    assert step["paged_optimizer"] == step["optimizer"] == 1 << 16
    assert step["step_peak"] == 2100 and step["other"] == 2100, "the allocator's whole peak is not optimizer state"


def gpt_neo_config() -> GPTNeoConfig:
    """wide_llama_config's widths in GPT-Neo: eager attention only (LayerNorm, GELU, 4h MLP)."""
    return GPTNeoConfig(vocab_size=128, hidden_size=128, num_layers=6, num_heads=4, window_size=256,
                        attention_types=[[["global", "local"], 3]], max_position_embeddings=1024, bos_token_id=2,
                        eos_token_id=2)


@pytest.mark.parametrize("architecture", ["llama-eager", "gpt-neo"])
def test_eager_attention_prediction_matches_the_measured_step(architecture):
    """Eager attention keeps each layer's heads x T x T probabilities for backward (SDPA keeps none): 6 layers x 4
    heads x 512^2 fp32 here, two thirds of the activations."""
    if architecture == "gpt-neo":  # its GELU (tanh form) keeps more MLP tensors than the SiLU counted: 8% here
        config, tolerance = gpt_neo_config(), 0.10
        targets = ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"]
        torch.manual_seed(0)
        model = GPTNeoForCausalLM(config)
    else:
        config, targets, tolerance = wide_llama_config(), list(LLAMA_TARGETS), 0.05
        config._attn_implementation = "eager"
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.config.use_cache = False
    assert model.config._attn_implementation == "eager"
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=16, lora_dropout=0.0, target_modules=targets,
                                             task_type="CAUSAL_LM")).train()
    m = measured_step(model, packed_batch(config.vocab_size, rows=4, length=128))
    p = predict(config, lora(RANK), "fp32", "cpu", 4 * 128, targets=targets)
    assert m["activations"] > 6 * 4 * 512 * 512 * 4  # the probabilities alone
    assert abs(p["activations"] - m["activations"]) <= tolerance * m["activations"], (p, m)
    assert abs(p["peak"] - m["step_peak"]) <= 0.15 * m["step_peak"], (p, m)


def test_fused_lm_head_prediction_matches_the_measured_step(real_tokenizer, tmp_path, monkeypatch):
    """On CUDA the lab's loss goes through TRL's fused LM head (no logits kept): forced on a CPU, LabTrainer's measured
    step matches predict for that loss head, and the full-logits prediction (the CPU's) misses it by far. The
    vocabulary is large next to the model, as in SmolLM2 (49,152 x 576), so the logits matter."""
    import dataclasses

    from datasets import Dataset

    from helpers import training
    from helpers.environment import Environment, choose_precision
    from helpers.profiles import get_profile

    config = LlamaConfig(vocab_size=8192, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.config.use_cache = False
    ids = torch.randint(3, 8192, (8, 128), generator=torch.Generator().manual_seed(0)).tolist()
    examples = [{"input_ids": row, "labels": [-100] * 40 + row[40:]} for row in ids]
    profile = dataclasses.replace(get_profile("smoke"), max_steps=1, batch_size=4, max_length=128,
                                  checkpoint_steps=0, logging_steps=1)
    monkeypatch.setattr(training, "loss_head_for", lambda device: "fused")
    env = Environment(False, "cpu", "test", None, choose_precision("cpu"), True)
    trainer = training.make_trainer(model, lora(RANK), profile, env, Dataset.from_list(examples), real_tokenizer, 3,
                                    tmp_path, "t")
    assert trainer.loss_head == "fused"
    training.train(trainer)  # the measured step, like every step after the first, finds AdamW's state
    m = trainer.measure_step([0, 1, 2, 3], StepMemoryProbe())
    assert m["tokens"] == 4 * 128
    fused = predict(config, lora(RANK), "fp32", "cpu", m["tokens"], targets=LLAMA_TARGETS, loss_head="fused")
    assert (fused["weights"], fused["gradients"], fused["optimizer"]) == (m["weights"], m["gradients"], m["optimizer"])
    assert abs(fused["activations"] - m["activations"]) <= 0.05 * m["activations"], (fused, m)
    assert abs(fused["peak"] - m["step_peak"]) <= 0.15 * m["step_peak"], (fused, m)
    assert predict(config, lora(RANK), "fp32", "cpu", m["tokens"], targets=LLAMA_TARGETS) == fused, \
        "by default the prediction takes the trainer's loss head"
    full_logits = predict(config, lora(RANK), "fp32", "cpu", m["tokens"], targets=LLAMA_TARGETS,
                          loss_head="full logits")
    assert full_logits["activations"] > 2 * m["activations"], "the fp32 log-softmax of the logits is not kept"


def test_the_prediction_follows_the_loss_head_of_the_device():
    """A CUDA run's prediction is the fused head's (what LabTrainer uses there): for SmolLM2-135M at ~3.5k tokens a
    step that is ~1.8 GB below the full-logits figure (the fp32 log-softmax kept, two logits-sized gradients)."""
    from helpers.training import loss_head_for

    smollm2 = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    assert (loss_head_for("cuda"), loss_head_for("cpu")) == ("fused", "full logits")
    cuda = predict(smollm2, lora(16), "fp16", "cuda", 3500, targets=LLAMA_TARGETS)
    assert cuda == predict(smollm2, lora(16), "fp16", "cuda", 3500, targets=LLAMA_TARGETS, loss_head="fused")
    logits = predict(smollm2, lora(16), "fp16", "cuda", 3500, targets=LLAMA_TARGETS, loss_head="full logits")
    logits_bytes = 3500 * 49152 * (4 + 8) + 2 * 49152 * 576  # log-softmax, two gradients; the head's fp16 copy
    assert logits["peak"] - cuda["peak"] == pytest.approx(logits_bytes, rel=0.15)
    assert gb(logits["peak"] - cuda["peak"]) == "1.8 GB"  # README, Memory by category
    with pytest.raises(ValueError, match="'full logits' or 'fused'"):
        predict(smollm2, lora(16), "fp16", "cuda", 3500, targets=LLAMA_TARGETS, loss_head="chunked")


def test_a_probe_stopped_without_a_step_says_so():
    assert StepMemoryProbe().result() is None
    with pytest.raises(RuntimeError, match="no step was measured"):
        StepMemoryProbe().stop()


TINYLLAMA = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                        num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False)
T4_FREE = int(15e9)


def test_fit_check_refuses_tinyllama_full_fine_tuning_on_a_t4():
    tokens = 16 * 512
    p = predict(TINYLLAMA, full(), "fp16", "cuda", tokens, targets=LLAMA_TARGETS)
    # fp32 master weights, gradients and AdamW: 16 bytes a parameter, ~17.6 GB before any activation
    assert 17.4e9 < p["weights"] + p["gradients"] + p["optimizer"] < 18e9
    with pytest.raises(MemoryFitError) as err:
        check_fits(p, T4_FREE, "full fine-tuning of TinyLlama-1.1B",
                   cheaper_choices(TINYLLAMA, LLAMA_TARGETS, "fp16", "cuda", tokens))
    message = str(err.value)
    for words in ("full fine-tuning of TinyLlama-1.1B", f"{p['peak'] / 1e9:.1f} GB", "optimizer 8.8 GB",
                  "15.0 GB free", "QLoRA (helpers.qlora(16)) needs about", "LoRA (helpers.lora(16))", "FSDP"):
        assert words in message, (words, message)


def test_fit_check_accepts_tinyllama_qlora_on_a_t4():
    # 16 examples of ~128 real tokens. A full 16 x 512 packed row is predicted at ~26 GB even for QLoRA: without
    # activation checkpointing, the activations of 8192 tokens (~2.8 MB each across 22 layers, the T x T mask
    # included) exceed a T4 whatever the weights cost.
    tokens = 16 * 128
    p = predict(TINYLLAMA, qlora(16), "fp16", "cuda", tokens, targets=LLAMA_TARGETS)
    check_fits(p, T4_FREE, "QLoRA r16 of TinyLlama-1.1B", {})
    assert p["weights"] < 1.2e9 and p["trainable_params"] == 22 * 16 * (2 * 4096 + 2 * 2304 + 3 * 7680)
    with pytest.raises(MemoryFitError):
        check_fits(predict(TINYLLAMA, full(), "fp16", "cuda", tokens, targets=LLAMA_TARGETS), T4_FREE, "full", {})


def test_four_bit_weights_count_packed_bytes_and_quant_state(tmp_path):
    """A 4-bit Llama loaded as the lab loads QLoRA's base (bitsandbytes on CPU): packed uint8 bytes plus absmax,
    codes and offset of each layer's (double) quantization state, everything else fp32."""
    from transformers import AutoModelForCausalLM

    from helpers.models import bnb_config

    config = LlamaConfig(vocab_size=128, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # 64k-value layers: the state is small
    fp32_model = LlamaForCausalLM(config)
    fp32_model.save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, device_map={"": "cpu"},
                                                 quantization_config=bnb_config("nf4", True, torch.float32))
    packed = [p for p in model.parameters() if p.__class__.__name__ == "Params4bit"]
    assert len(packed) == 14 and all(p.dtype == torch.uint8 for p in packed)
    stored = sum(p.untyped_storage().nbytes() for p in model.parameters())
    quantized = weight_bytes(model)
    assert quantized > stored + 14 * 1024  # + each layer's absmax and 256-entry second-level code
    assert quantized < weight_bytes(fp32_model) / 3
    # the prediction from the config alone is exact (its LoRA adapters aside)
    p = predict(config, qlora(RANK), "fp32", "cpu", 64, targets=LLAMA_TARGETS)
    assert p["weights"] - 4 * p["trainable_params"] == quantized
