"""Token-weighted perplexity on held-out data, and greedy generations for fixed prompts, batched.

Perplexity is the lab's instrument, not a method under test: it is computed in fp32 for every run whatever the
training precision (exact_computation), so two runs differ by their weights only. Generation runs in the training
precision: its answers are read, not measured, and on a GPU fp32 would make it slower for no reader's gain. Both run
with a LoRA adapter merged into its base for the block (merged_adapters).
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from datasets import Dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from .data import IGNORE_INDEX
from .environment import Precision, heap_reuse
from .models import packed_row_limit

EVALUATION_PRECISION = "fp32"  # what every perplexity is computed in; the results record it


class ExampleScore(NamedTuple):
    nll: float  # summed over the example's target tokens
    tokens: int  # its target tokens
    predicted: list[int]  # the most likely token at each target position
    lead: list[float]  # that token's logit minus the runner-up's: near 0, a near tie


def compute_context(device: str, precision: Precision):
    """The autocast training uses, for generation (perplexity uses exact_computation)."""
    if precision.name == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device, dtype=precision.dtype)


def _four_bit_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    # bitsandbytes' Linear4bit keeps these in its own __dict__; PEFT's wrapper around it does not
    return [m for m in model.modules() if "compute_type_is_set" in vars(m) and hasattr(m, "compute_dtype")]


@contextmanager
def exact_computation(model: torch.nn.Module) -> Iterator[None]:
    """fp32 throughout: autocast off (also inside a caller's autocast), and each 4-bit layer dequantized into fp32.

    A 4-bit layer ignores autocast: it dequantizes its NF4 weight into its own compute dtype (the training precision,
    bf16 or fp16 on a GPU) and multiplies there, so without this a QLoRA model would still be evaluated in 16 bits.
    Both the 4-bit base's "before" and the trained QLoRA model's "after" are measured this way: the same instrument
    on both sides. The compute dtypes are restored on exit, so training and generation are unchanged.
    """
    device = next(model.parameters()).device.type
    layers = _four_bit_layers(model)
    saved = [layer.compute_dtype for layer in layers]
    for layer in layers:
        layer.compute_dtype = torch.float32
    try:
        with torch.autocast(device_type=device, enabled=False):
            yield
    finally:
        for layer, dtype in zip(layers, saved):
            layer.compute_dtype = dtype


@contextmanager
def cached_weight_casts(model: torch.nn.Module):
    """Cast each weight to the autocast dtype once for the whole block, not once per forward pass.

    autocast caches its low-precision copy of a weight only for leaves that require grad (and never in inference
    mode), so frozen weights (the base under a LoRA adapter, the norms of a 4-bit base) would be cast again for every
    generated token: half of generation's time. The flags are restored on exit; the cast values are the ones autocast
    makes anyway.
    """
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    for param in frozen:
        param.requires_grad_(True)
    try:
        yield
    finally:
        for param in frozen:
            param.requires_grad_(False)


@contextmanager
def merged_adapters(model: torch.nn.Module) -> Iterator[None]:
    """A LoRA model's adapters folded into its base weights for the block (PEFT's merge_adapter), then taken out again.

    Each adapted layer then does one matmul instead of three (its base's and the adapter's two thin ones): the
    held-out set of the cpu profile took 38.6-40.2 s instead of 43.9-47.7 s for a LoRA r16 model (fp32, 2 cores of an
    AMD EPYC, two alternating repeats each), with the same summed loss to 4e-8. Unmerging subtracts what merging added, so each base weight comes back within a rounding step of
    its value (fp32 (W + dW) - dW); the adapter itself, which the run saves, is untouched. A 4-bit base is left
    unmerged: merging into it requantizes.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuned = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    if not tuned or any(m.merged for m in tuned) or _four_bit_layers(model):
        yield
        return
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def token_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped into packs of at most max_tokens tokens, longest first (a pack's cost grows with its size)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    packs, current, size = [], [], 0
    for i in order:
        if current and size + lengths[i] > max_tokens:
            packs.append(current)
            current, size = [], 0
        current.append(i)
        size += lengths[i]
    if current:
        packs.append(current)
    return packs


def _target_log_probs(model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor,
                      labels: torch.Tensor, predictions: bool = False) -> tuple[torch.Tensor, ...]:
    """(log p(label), is-a-target) at every position of the packed row but the last, shape (length - 1,) each; the
    log-probability is 0 where the next token is not a target. predictions=True adds (the most likely next token,
    its logit's lead over the second), -1 and 0 where the next token is not a target: a top-2 over the vocabulary
    that only the export's read-back check reads, so a run's own evaluations skip it.

    The LM head runs on the target positions only: on a CPU, scoring the prompt tokens too (as TRL's fused head
    does off CUDA) made evaluation about a third slower, for numbers nobody reads. Models whose logits are
    post-processed (soft-capping, scaling) take their own full forward instead.
    """
    lm = _causal_lm(model)
    targets = labels[0, 1:]
    keep = targets != IGNORE_INDEX
    config = lm.config.get_text_config()
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[0, :-1]
        picked = logits[keep]
    else:
        hidden = lm.base_model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        picked = lm.get_output_embeddings()(hidden[0, :-1][keep])
    out = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    out[keep] = -F.cross_entropy(picked.float(), targets[keep], reduction="none")
    if not predictions:
        return out, keep
    predicted = torch.full(targets.shape, -1, dtype=torch.long, device=targets.device)
    lead = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    top = picked.float().topk(2, dim=-1)
    predicted[keep], lead[keep] = top.indices[:, 0], top.values[:, 0] - top.values[:, 1]
    return out, keep, predicted, lead


@torch.no_grad()
def per_example_scores(model: torch.nn.Module, dataset: Dataset, max_tokens: int = 2048, pad_id: int = 0,
                       predictions: bool = True) -> list[ExampleScore]:
    """Every example's summed NLL and target count, and (predictions=True) at each of its target positions the
    model's most likely token and that token's logit lead over the runner-up (how near a tie it was), else empty
    lists; dataset order, fp32 (exact_computation).

    Examples are packed without padding exactly as in training (TRL's padding-free collator: position ids restart
    per example, so none attends to another, and each example's first label is masked so none is predicted from the
    previous one); each example's share of the packed row is then a slice.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    examples = dataset.to_list()
    if limit := packed_row_limit(_causal_lm(model)):  # a longer pack would not run; any packing gives the same result
        max_tokens = min(max_tokens, limit)
    collate = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=True)
    found: list[ExampleScore] = [ExampleScore(0.0, 0, [], [])] * len(examples)
    try:
        with heap_reuse(), exact_computation(model), merged_adapters(model):
            for pack in token_batches([len(e["input_ids"]) for e in examples], max_tokens):
                batch = collate([{"input_ids": examples[i]["input_ids"], "labels": examples[i]["labels"]}
                                 for i in pack])
                log_probs, keep, *guesses = (t.cpu() for t in _target_log_probs(
                    model, batch["input_ids"].to(device), batch["position_ids"].to(device), batch["labels"].to(device),
                    predictions))
                bounds = batch["cu_seq_lens_q"].tolist()
                for k, i in enumerate(pack):  # position t of log_probs predicts token t + 1 of the packed row
                    lo, hi = max(0, bounds[k] - 1), bounds[k + 1] - 1
                    mine = keep[lo:hi]
                    predicted, lead = (g[lo:hi][mine].tolist() for g in guesses) if guesses else ([], [])
                    found[i] = ExampleScore(-float(log_probs[lo:hi].sum()), int(mine.sum()), predicted, lead)
    finally:
        model.train(was_training)
    return found


def per_example_nll(model: torch.nn.Module, dataset: Dataset, max_tokens: int = 2048,
                    pad_id: int = 0) -> list[tuple[float, int]]:
    """(summed NLL, predicted tokens) of every example, in dataset order: per_example_scores without the predictions."""
    return [(s.nll, s.tokens) for s in per_example_scores(model, dataset, max_tokens, pad_id, predictions=False)]


def perplexity(model: torch.nn.Module, dataset: Dataset, max_tokens: int = 2048, pad_id: int = 0) -> dict:
    """exp(total NLL / total predicted tokens) over the whole split, with each example's share kept for the bootstrap.

    Written by hand because Trainer.evaluate averages per-batch means, which weights a short batch like a long one;
    summing token NLLs makes the result independent of batch size and packing.
    """
    per_example = per_example_nll(model, dataset, max_tokens, pad_id)
    result = summarize_nll(sum(n for n, _ in per_example), sum(t for _, t in per_example))
    return {**result, "precision": EVALUATION_PRECISION, "per_example": [[round(n, 4), t] for n, t in per_example]}


def summarize_nll(total_nll: float, total_tokens: int) -> dict[str, float]:
    if total_tokens == 0:
        raise ValueError("No target tokens in the evaluation set: every label is -100.")
    loss = total_nll / total_tokens
    return {"tokens": total_tokens, "loss": loss, "perplexity": math.exp(loss), "bits_per_token": loss / math.log(2)}


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int,
             precision: Precision, repetition_penalty: float | None = None) -> list[str]:
    """Greedy (so before/after differences come from the weights, not from sampling luck), all prompts in one
    left-padded batch, stopping at the end of turn.

    repetition_penalty (> 1, e.g. 1.3): still greedy, but every token already in the prompt or the answer has its
    logit divided by it (multiplied when negative; transformers' RepetitionPenaltyLogitsProcessor) before the pick.
    None, the runs' setting, leaves decoding untouched.
    """
    if repetition_penalty is not None and not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty={repetition_penalty!r} must be a positive number (1.0 = no penalty, "
                         "1.3 = a common choice), or None for plain greedy decoding")
    if not prompt_ids:
        return []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    width = max(len(p) for p in prompt_ids)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    try:
        # merged like the evaluation: one matmul per adapted layer instead of three, and for DoRA no dense W + s*B*A
        # and weight norm per layer per generated token (measured on the cpu profile's three answers: DoRA 42.6 s
        # unmerged, 4.2 s merged; LoRA 5.6 s unmerged)
        with merged_adapters(model), cached_weight_casts(model), compute_context(device.type, precision):
            penalty = {} if repetition_penalty is None else {"repetition_penalty": float(repetition_penalty)}
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 use_cache=True, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, **penalty)
    finally:
        model.train(was_training)
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
