"""Token-weighted perplexity on the held-out split, and greedy generations for fixed prompts."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from datasets import Dataset
from tqdm.auto import tqdm

from .data import IGNORE_INDEX, pad_batch


@torch.no_grad()
def perplexity(model: torch.nn.Module, dataset: Dataset, pad_id: int, batch_size: int = 8,
               device: str | None = None, desc: str = "perplexity") -> dict[str, float]:
    """exp(total NLL / total predicted tokens) over the whole split.

    Written by hand because Trainer.evaluate averages per-batch means, which weights a short batch like
    a long one; summing token NLLs makes the result independent of batch size and padding.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    examples = sorted(dataset.to_list(), key=lambda e: len(e["input_ids"]))  # similar lengths: little padding
    total_nll, total_tokens = 0.0, 0
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, leave=False):
        batch = {k: v.to(device) for k, v in pad_batch(examples[start:start + batch_size], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        targets = batch["labels"][:, 1:]
        nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(),
                              ignore_index=IGNORE_INDEX, reduction="sum")
        total_nll += nll.item()
        total_tokens += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    return summarize_nll(total_nll, total_tokens)


def summarize_nll(total_nll: float, total_tokens: int) -> dict[str, float]:
    if total_tokens == 0:
        raise ValueError("No target tokens in the evaluation set: every label is -100.")
    loss = total_nll / total_tokens
    return {"tokens": total_tokens, "loss": loss, "perplexity": math.exp(loss), "bits_per_token": loss / math.log(2)}


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy, so before/after differences come from the weights, not from sampling luck."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers = []
    for prompt in tqdm(prompts, desc="generate", leave=False):
        ids = tokenizer(prompt, return_tensors="pt").to(device)
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    model.train(was_training)
    return answers
