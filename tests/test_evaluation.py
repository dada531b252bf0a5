"""helpers.evaluation: token-weighted perplexity, checked against a hand computation on a tiny Llama."""

import math
import random
from contextlib import nullcontext

import pytest
import torch
from datasets import Dataset

from helpers.environment import choose_precision
from helpers.evaluation import (cached_weight_casts, compute_context, per_example_nll, perplexity, summarize_nll,
                                token_batches)

BF16 = choose_precision("cpu", native_bf16=True)  # an AMX CPU's or an A100's training precision

PAD = 2  # like SmolLM2: the pad id is also a real token (EOS) that appears in the labels


def make_examples(lengths, seed=1, prompt_fraction=0.4):
    """Random token examples; the first ~40% of each is a prompt (label -100), the last token is EOS (PAD)."""
    rng = random.Random(seed)
    examples = []
    for n in lengths:
        ids = [rng.randrange(3, 128) for _ in range(n - 1)] + [PAD]
        n_prompt = max(1, int(n * prompt_fraction))
        labels = [-100] * n_prompt + ids[n_prompt:]
        examples.append({"input_ids": ids, "labels": labels})
    return examples


@torch.no_grad()
def hand_nll(model, examples):
    """Per example: one forward pass, log-softmax, -log p(target) where the shifted label is not -100."""
    model.eval()
    per_example = []
    for e in examples:
        logits = model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
        logp = torch.log_softmax(logits.double(), dim=-1)
        nll, count = 0.0, 0
        for t in range(1, len(e["input_ids"])):
            target = e["labels"][t]
            if target == -100:
                continue
            nll -= logp[t - 1, target].item()
            count += 1
        per_example.append((nll, count))
    return per_example


def token_weighted(per_example):
    total = sum(n for n, _ in per_example)
    count = sum(c for _, c in per_example)
    return total / count, count


LENGTHS = [5, 17, 9, 30, 3, 12, 24, 7, 19, 11]  # different lengths: batches of 8 are padded


def test_perplexity_equals_hand_computation(tiny_llama):
    examples = make_examples(LENGTHS)
    loss, count = token_weighted(hand_nll(tiny_llama, examples))
    got = perplexity(tiny_llama, Dataset.from_list(examples), max_tokens=1, pad_id=PAD)
    assert got["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    # the value is not trivially "uniform over 128 tokens"
    assert got["perplexity"] != pytest.approx(128, rel=1e-3)


def test_tokens_counts_labels_after_the_shift(tiny_llama):
    examples = make_examples(LENGTHS)
    expected = sum(sum(1 for label in e["labels"][1:] if label != -100) for e in examples)
    # the first label never counts (nothing predicts it); here prompts already mask it, so add one unmasked
    examples.append({"input_ids": [5, 6, 7, PAD], "labels": [5, 6, 7, PAD]})
    expected += 3
    got = perplexity(tiny_llama, Dataset.from_list(examples), max_tokens=40, pad_id=PAD)
    assert got["tokens"] == expected
    assert got["tokens"] == token_weighted(hand_nll(tiny_llama, examples))[1]


def test_packing_does_not_change_the_result(tiny_llama):
    examples = make_examples(LENGTHS)
    assert len({len(e["input_ids"]) for e in examples}) == len(examples)  # packs of different shapes
    ds = Dataset.from_list(examples)
    one = perplexity(tiny_llama, ds, max_tokens=1, pad_id=PAD)
    eight = perplexity(tiny_llama, ds, max_tokens=4096, pad_id=PAD)
    assert eight["perplexity"] == pytest.approx(one["perplexity"], abs=1e-4)
    assert eight["tokens"] == one["tokens"]
    loss, _ = token_weighted(hand_nll(tiny_llama, examples))
    assert eight["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)


def test_bits_per_token_is_loss_over_ln2(tiny_llama):
    got = perplexity(tiny_llama, Dataset.from_list(make_examples(LENGTHS)), max_tokens=4096, pad_id=PAD)
    assert got["bits_per_token"] == pytest.approx(got["loss"] / math.log(2), rel=1e-12)
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]), rel=1e-12)


def _teach_repetition(model, token=7, steps=40):
    """A few Adam steps so that `token token token ...` becomes easy while random text stays hard."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids = torch.tensor([[token] * 24])
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    model.eval()


def test_token_weighted_not_mean_of_per_example_means(tiny_llama):
    _teach_repetition(tiny_llama)
    easy = {"input_ids": [7] * 30, "labels": [7] * 30}  # 29 cheap targets
    hard = make_examples([6], seed=3, prompt_fraction=0.5)[0]  # 3 expensive targets
    examples = [easy, hard]
    per_example = hand_nll(tiny_llama, examples)
    weighted, count = token_weighted(per_example)
    mean_of_means = sum(n / c for n, c in per_example) / len(per_example)
    assert count == 29 + 3
    assert abs(weighted - mean_of_means) > 0.5  # the case really separates the two definitions

    # one example per pack too: there an average of per-batch means would be the mean of per-example means
    for max_tokens in (1, 4096):
        got = perplexity(tiny_llama, Dataset.from_list(examples), max_tokens=max_tokens, pad_id=PAD)
        assert got["loss"] == pytest.approx(weighted, rel=1e-5)
        assert got["perplexity"] == pytest.approx(math.exp(weighted), rel=1e-5)
        assert got["loss"] != pytest.approx(mean_of_means, rel=1e-2)


def test_perplexity_restores_training_mode(tiny_llama):
    tiny_llama.train()
    perplexity(tiny_llama, Dataset.from_list(make_examples([4, 6])), max_tokens=12, pad_id=PAD)
    assert tiny_llama.training is True
    tiny_llama.eval()
    perplexity(tiny_llama, Dataset.from_list(make_examples([4, 6])), max_tokens=12, pad_id=PAD)
    assert tiny_llama.training is False


def test_all_labels_masked_raises(tiny_llama):
    examples = [{"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}]
    with pytest.raises(ValueError, match="-100"):
        perplexity(tiny_llama, Dataset.from_list(examples), pad_id=PAD)


def test_summarize_nll_values():
    got = summarize_nll(30.0, 10)
    assert got == {"tokens": 10, "loss": 3.0, "perplexity": pytest.approx(math.exp(3.0)),
                   "bits_per_token": pytest.approx(3.0 / math.log(2))}


def test_summarize_nll_zero_tokens_raises():
    with pytest.raises(ValueError):
        summarize_nll(0.0, 0)


def test_per_example_shares_match_each_example_alone_in_dataset_order(tiny_llama):
    examples = make_examples(LENGTHS)
    hand = hand_nll(tiny_llama, examples)
    for max_tokens in (1, 30, 4096):
        got = per_example_nll(tiny_llama, Dataset.from_list(examples), max_tokens, PAD)
        assert [t for _, t in got] == [c for _, c in hand]
        assert [n for n, _ in got] == pytest.approx([n for n, _ in hand], rel=1e-5)


def test_token_batches_respect_the_budget_and_keep_every_example():
    lengths = [5, 17, 9, 30, 3, 12]
    packs = token_batches(lengths, 32)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in p) <= 32 or len(p) == 1 for p in packs)


def test_frozen_weights_are_cast_once_per_block_with_the_same_result(tiny_llama):
    """Generation runs under the training precision's autocast, which re-casts a frozen weight for every forward
    (every generated token) unless cached_weight_casts marks it; the cached cast must give the very same numbers,
    and leave the weights frozen."""
    from torch.profiler import ProfilerActivity, profile

    for param in tiny_llama.parameters():
        param.requires_grad_(False)
    tiny_llama.eval()
    rows = [torch.tensor([e["input_ids"]]) for e in make_examples(LENGTHS)]

    @torch.no_grad()
    def run(cache):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            with cache(tiny_llama), compute_context("cpu", BF16):
                got = [tiny_llama(input_ids=row).logits for row in rows]
        casts = sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")
        return got, casts

    cached, cached_casts = run(cached_weight_casts)
    uncached, uncached_casts = run(lambda model: nullcontext())
    assert all(torch.equal(a, b) for a, b in zip(cached, uncached))
    weights = sum(1 for p in tiny_llama.parameters() if p.dim() == 2)
    assert uncached_casts - cached_casts >= weights * (len(LENGTHS) - 1) - len(LENGTHS)  # cast per row vs once
    assert not any(p.requires_grad for p in tiny_llama.parameters())


def test_perplexity_is_fp32_inside_a_callers_autocast(tiny_llama):
    """The instrument does not take the training precision: called under bf16 autocast (a training loop, a sweep), it
    still equals the fp32 hand computation, and says so."""
    examples = make_examples(LENGTHS)
    loss, _ = token_weighted(hand_nll(tiny_llama, examples))
    with compute_context("cpu", BF16):
        got = perplexity(tiny_llama, Dataset.from_list(examples), max_tokens=4096, pad_id=PAD)
    assert got["loss"] == pytest.approx(loss, rel=1e-5) and got["precision"] == "fp32"


def test_a_4bit_model_is_evaluated_with_fp32_dequantized_weights(tmp_path):
    """A 4-bit layer ignores autocast and computes in its own compute dtype (bf16 on an A100): evaluation
    dequantizes into fp32 instead, so the QLoRA "before" and "after" are exact, and leaves the compute dtype as it was
    for training and generation."""
    from conftest import make_tiny_llama
    from transformers import AutoModelForCausalLM

    from helpers.evaluation import _four_bit_layers
    from helpers.models import bnb_config, keep_4bit_layers_trainable

    make_tiny_llama().save_pretrained(tmp_path)
    model = keep_4bit_layers_trainable(AutoModelForCausalLM.from_pretrained(  # as load_model loads it
        tmp_path, quantization_config=bnb_config("nf4", True, torch.bfloat16), device_map={"": "cpu"},
        dtype=torch.float32))
    layers = _four_bit_layers(model)
    assert layers and {layer.compute_dtype for layer in layers} == {torch.bfloat16}
    examples = make_examples(LENGTHS)
    got = perplexity(model, Dataset.from_list(examples), max_tokens=4096, pad_id=PAD)
    assert {layer.compute_dtype for layer in layers} == {torch.bfloat16}, "restored for training and generation"
    in_bf16, _ = token_weighted(hand_nll(model, examples))
    for layer in layers:
        layer.compute_dtype = torch.float32
    exact, _ = token_weighted(hand_nll(model, examples))
    # a random tiny model's logits are nearly uniform, so bf16 moves its loss by only ~1e-5: a tight bound
    assert got["loss"] == pytest.approx(exact, rel=1e-6)
    assert in_bf16 != pytest.approx(exact, rel=1e-6), "the case separates the two: bf16 compute is not exact"


def test_a_model_with_a_fixed_causal_mask_is_evaluated_in_packs_it_can_take():
    """GPT-Neo slices its causal mask from a fixed context x context buffer: a packed row past the context fails,
    so evaluation packs at most the context, with the same result as any other packing."""
    from conftest import make_tiny_gpt_neo

    model = make_tiny_gpt_neo(context=64)
    examples = make_examples([40, 30, 50, 20, 60, 10, 35])  # 245 tokens: a 512-token pack would hold them all
    with pytest.raises(RuntimeError, match="size of tensor"):  # the crash the cap avoids: 70 tokens, positions restart
        model(input_ids=torch.tensor([examples[0]["input_ids"] + examples[1]["input_ids"]]),
              position_ids=torch.tensor([list(range(40)) + list(range(30))]))
    ds = Dataset.from_list(examples)
    packed = perplexity(model, ds, max_tokens=512, pad_id=PAD)
    loss, count = token_weighted(hand_nll(model, examples))
    assert packed["tokens"] == count and packed["loss"] == pytest.approx(loss, rel=1e-5)
    alone = perplexity(model, ds, max_tokens=1, pad_id=PAD)["per_example"]
    assert [t for _, t in packed["per_example"]] == [t for _, t in alone]
    assert [n for n, _ in packed["per_example"]] == pytest.approx([n for n, _ in alone], abs=1e-3)


def test_a_lora_model_is_evaluated_merged_with_the_unmerged_result_and_left_unmerged(tiny_llama):
    """Evaluation folds the adapters into the base weights (one matmul per layer instead of three) and takes them out
    again: the loss equals the unmerged model's hand computation, every layer is unmerged afterwards, and each base
    weight is back within a rounding step."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = get_peft_model(tiny_llama, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # a trained adapter: B is zero at initialisation, which would make merging a no-op
            torch.nn.init.normal_(param, std=0.5)
    examples = make_examples(LENGTHS)
    exact, _ = token_weighted(hand_nll(model, examples))
    bases = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    calls = []
    merge = model.merge_adapter
    model.merge_adapter = lambda *a, **k: (calls.append("merge"), merge(*a, **k))[1]
    got = perplexity(model, Dataset.from_list(examples), max_tokens=4096, pad_id=PAD)
    assert calls == ["merge"]
    assert got["loss"] == pytest.approx(exact, rel=1e-6)
    assert not any(m.merged for m in model.modules() if isinstance(m, BaseTunerLayer))
    for name, param in model.named_parameters():
        if name in bases:
            torch.testing.assert_close(param, bases[name], rtol=1e-6, atol=1e-7)
    unmerged_again, _ = token_weighted(hand_nll(model, examples))
    assert unmerged_again == pytest.approx(exact, rel=1e-6)
