"""Rows turned into prompt–completion examples, tokenized the way SFTTrainer trains, and the lab's data sets.

An instruction row becomes a conversation (user: instruction, assistant: output) for a model with a chat template, and
the seeds' `### Instruction / ### Response` text for one without (GPT-2). Tokenization then does what TRL's SFT
preparation does: it applies the chat template, appends the end of turn and masks the prompt, so evaluation scores
exactly the tokens training learns. Reading the rows (and the errors of bad data) is helpers.sources.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

import torch
from datasets import Dataset

from .manifests import Manifest, load_manifest
from .sources import load_rows, split_rows

IGNORE_INDEX = -100  # labels that take no part in the loss: prompt tokens and padding

INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n\n"
INPUT_TEMPLATE = "### Input:\n{input}\n\n"
RESPONSE_HEADER = "### Response:\n"


# ---------- prompt–completion examples ----------

def render_instruction_prompt(instruction: str, input_text: str = "") -> str:
    """The seeds' template, for models without a chat template; the Input block is left out when empty."""
    prompt = INSTRUCTION_TEMPLATE.format(instruction=instruction.strip())
    if input_text and input_text.strip():
        prompt += INPUT_TEMPLATE.format(input=input_text.strip())
    return prompt + RESPONSE_HEADER


def user_text(instruction: str, input_text: str = "") -> str:
    return instruction.strip() + (f"\n\n{input_text.strip()}" if input_text and input_text.strip() else "")


def to_example(row: dict, fmt: str, conversational: bool) -> dict:
    """TRL's dataset formats: prompt–completion (conversational or plain text), or language modelling ("text")."""
    if fmt == "text":
        return {"text": row["text"]}
    if fmt == "chat":
        *history, last = row["messages"]
        if conversational:
            return {"prompt": history, "completion": [last]}
        users = "\n\n".join(x["content"] for x in history if x["role"] == "user")
        return {"prompt": render_instruction_prompt(users), "completion": last["content"].strip()}
    if conversational:
        return {"prompt": [{"role": "user", "content": user_text(row["instruction"], row.get("input", ""))}],
                "completion": [{"role": "assistant", "content": row["output"].strip()}]}
    return {"prompt": render_instruction_prompt(row["instruction"], row.get("input", "")),
            "completion": row["output"].strip()}


def tokenize(examples: list[dict], tokenizer) -> Dataset:
    """input_ids and labels (-100 on the prompt) as TRL 1.16's SFTTrainer prepares them for training with
    completion_only_loss=True, no truncation and no packing; evaluation scores the same sequences:
    - conversational prompt–completion: the chat template renders prompt + completion, its end of turn included;
    - plain prompt–completion (no chat template): the tokenizer's EOS is appended to the completion;
    - plain text (language modelling): EOS appended, every token a target.
    The prompt is what the tokenized prompt and prompt+completion share from the start (a template may render the
    prompt alone differently). tests/test_data.py checks this against SFTTrainer given the raw examples."""
    # Written out: SFTTrainer prepares data only in its __init__ (which needs a model) or a private method
    from trl import is_conversational  # lazy: trl loads transformers, which reading rows and padding do not need

    ids, labels = [], []
    for example in examples:
        if "text" in example:
            tokens = tokenizer(text=_with_eos(example["text"], tokenizer.eos_token))["input_ids"]
            ids.append(list(tokens))
            labels.append(list(tokens))
            continue
        if is_conversational(example):
            prompt = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
            tokens = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=True,
                                                   return_dict=True)["input_ids"]
        else:
            prompt = tokenizer(text=example["prompt"])["input_ids"]
            completion = _with_eos(example["completion"], tokenizer.eos_token)
            tokens = tokenizer(text=example["prompt"] + completion)["input_ids"]
        shared = _common_prefix_length(prompt, tokens)
        ids.append(list(tokens))
        labels.append([IGNORE_INDEX] * shared + list(tokens[shared:]))
    return Dataset.from_dict({"input_ids": ids, "labels": labels})


def _with_eos(text: str, eos: str) -> str:
    return text if text.endswith(eos) else text + eos


def _common_prefix_length(ids: list[int], other: list[int]) -> int:
    # by hand: TRL's own, trl.data_utils.common_prefix_length, is not exported by trl
    return next((i for i, (a, b) in enumerate(zip(ids, other)) if a != b), min(len(ids), len(other)))


def chunk_text(ids: list[int], max_length: int) -> list[dict[str, list[int]]]:
    """Raw text: consecutive windows; every token is a target."""
    return [{"input_ids": ids[i:i + max_length], "labels": ids[i:i + max_length]}
            for i in range(0, len(ids), max_length) if len(ids[i:i + max_length]) > 1]


def _take(rows: list[dict], fmt: str, conversational: bool, tokenizer, max_length: int,
          limit: int) -> tuple[list[dict], int]:
    """Tokenize rows in order until `limit` examples fit in max_length; longer ones are dropped, never cut
    (a cut example loses its end of turn and teaches the model to ramble)."""
    out, dropped, start = [], 0, 0
    while len(out) < limit and start < len(rows):
        chunk = rows[start:start + max(16, int((limit - len(out)) * 1.2))]
        start += len(chunk)
        for example in tokenize([to_example(r, fmt, conversational) for r in chunk], tokenizer):
            if len(example["input_ids"]) > max_length:
                dropped += 1
            else:
                out.append(example)
    return out[:limit], dropped


@dataclass
class LabData:
    manifest: Manifest
    train: Dataset
    eval: Dataset
    prompt_ids: list[list[int]]  # generation prompts, tokenized as the model expects (chat template + assistant turn)
    instructions: list[str]  # the same prompts as the student reads them
    fingerprint: str
    dropped_too_long: int
    conversational: bool
    validation: Dataset | None = None  # carved from the training side (by group) for the learning-rate sweep

    def describe(self) -> dict:
        def stats(ds: Dataset) -> dict:
            lengths = [len(x) for x in ds["input_ids"]]
            return {"examples": len(ds), "tokens": sum(lengths), "target_tokens": target_tokens(ds),
                    "max_length": max(lengths) if lengths else 0}
        return {"manifest": self.manifest.name, "description": self.manifest.description,
                "held_out": held_out_rule(self.manifest.split), "fingerprint": self.fingerprint,
                "template": "chat template" if self.conversational else "### Instruction / ### Response",
                "train": stats(self.train), "eval": stats(self.eval), "dropped_too_long": self.dropped_too_long}


def held_out_rule(split: dict) -> str:
    """How a manifest's evaluation rows are chosen, in words: the notebooks' prose holds for every dataset only if it
    prints this instead of assuming one."""
    if "eval_split" in split:
        return f"the source's own {split['eval_split']!r} split"
    share = f"{split['eval_fraction']:.0%}"
    if split.get("group_by"):
        return f"{share} by whole {split['group_by']!r} groups: no group appears on both sides"
    return f"{share} by a stable hash of each row's content"


def target_tokens(ds: Dataset) -> int:
    """Tokens the loss predicts: labels other than -100, after the one-token shift."""
    return sum(sum(1 for t in labels[1:] if t != IGNORE_INDEX) for labels in ds["labels"])


def longest_examples(ds: Dataset, count: int) -> list[int]:
    """Indices of the `count` longest examples (the earlier first among equal lengths): the largest batch of `count`
    examples the data can form, whatever order training draws them in."""
    lengths = [len(ids) for ids in ds["input_ids"]]
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))[:count]


def fingerprint(*datasets: Dataset) -> str:
    digest = hashlib.sha256()
    for ds in datasets:
        for example in ds:
            digest.update(json.dumps([example["input_ids"], example["labels"]], separators=(",", ":")).encode())
    return digest.hexdigest()[:16]


def generation_prompt_ids(instructions: list[str], tokenizer, conversational: bool) -> list[list[int]]:
    if conversational:
        return [list(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                   tokenize=True, return_dict=True)["input_ids"])
                for p in instructions]
    return [tokenizer(render_instruction_prompt(p)).input_ids for p in instructions]


def _check_counts(function: str, **values: tuple[object, int]) -> None:
    for name, (value, least) in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{function}: {name}={value!r} must be a whole number >= {least}. Fix: pass e.g. "
                             f"{name}={max(least, 1) * 8} (the profile's settings are checked by helpers.profiles)")


def prepare_data(manifest_name: str, tokenizer, conversational: bool, max_length: int, train_examples: int,
                 eval_examples: int, generation_prompts: int, seed: int, validation_examples: int = 0) -> LabData:
    """Tokenized train and eval sets; `seed` picks the sample, so every method and training seed sees the same rows.

    With validation_examples, a validation set is carved from the training side first (whole groups, as the held-out
    split is), and the training sample is drawn from what remains: the learning-rate sweep chooses on data that no
    run trains on, and never looks at the held-out set the lab reports.
    """
    if not isinstance(conversational, bool):
        raise TypeError(f"prepare_data: conversational={conversational!r} must be True or False. Fix: pass "
                        "tokenizer.chat_template is not None (True: the chat template, False: ### Instruction text)")
    _check_counts("prepare_data", max_length=(max_length, 2), train_examples=(train_examples, 1),
                  eval_examples=(eval_examples, 1), generation_prompts=(generation_prompts, 0), seed=(seed, 0))
    m = load_manifest(manifest_name)
    if m.format == "text":
        raise m.error("format", f"DATASET = {manifest_name!r} is a 'text' manifest: plain text for language modelling, "
                      "not instruction/response pairs", "train on an 'instruction' or 'chat' manifest (e.g. DATASET = "
                      "\"python_docs\"); text manifests measure forgetting (the profile's `forgetting` setting)")
    train_rows, eval_rows = load_rows(m)
    validation_rows: list[dict] = []
    if validation_examples:
        fraction = min(0.5, 1.5 * validation_examples / max(1, len(train_rows)))  # margin for rows too long
        train_rows, validation_rows = split_rows(train_rows, fraction, seed + 2)
        random.Random(seed + 3).shuffle(validation_rows)
    # Shuffle before capping so a small budget still samples the whole corpus, deterministically.
    random.Random(seed).shuffle(train_rows)
    random.Random(seed + 1).shuffle(eval_rows)
    cap_train = min(train_examples, m.split.get("max_train", train_examples))
    cap_eval = min(eval_examples, m.split.get("max_eval", eval_examples))
    train, dropped_train = _take(train_rows, m.format, conversational, tokenizer, max_length, cap_train)
    evals, dropped_eval = _take(eval_rows, m.format, conversational, tokenizer, max_length, cap_eval)
    if not train or not evals:
        raise m.error("split", f"no {'training' if not train else 'held-out'} example fits max_length={max_length} "
                      f"tokens ({dropped_train + dropped_eval} examples were longer; kept: train {len(train)}, eval "
                      f"{len(evals)})", "raise max_length (Lab(..., max_length=512)), or use shorter rows")
    train_set, eval_set = Dataset.from_list(train), Dataset.from_list(evals)
    validation_set = None
    if validation_rows:
        validation, _ = _take(validation_rows, m.format, conversational, tokenizer, max_length, validation_examples)
        validation_set = Dataset.from_list(validation) if validation else None
    instructions = list(m.prompts[:generation_prompts])
    sets = [train_set, eval_set] + ([validation_set] if validation_set is not None else [])
    return LabData(m, train_set, eval_set, generation_prompt_ids(instructions, tokenizer, conversational), instructions,
                   fingerprint(*sets), dropped_train + dropped_eval, conversational, validation_set)


def prepare_text(manifest_name: str, tokenizer, max_length: int, target_tokens_wanted: int, seed: int) -> Dataset:
    """Windows of general text from a text manifest's held-out side, up to about `target_tokens_wanted` targets:
    the same text for every run, to measure what fine-tuning costs outside its domain."""
    m = load_manifest(manifest_name, "forgetting")
    if m.format != "text":
        raise m.error("format", f"forgetting = {manifest_name!r} has format = {m.format!r}; forgetting is measured "
                      "on plain text", "use a 'text' manifest (vital_articles offline, wikitext2 on Colab)")
    _check_counts("prepare_text", max_length=(max_length, 2), target_tokens_wanted=(target_tokens_wanted, 1),
                  seed=(seed, 0))
    _, rows = load_rows(m)
    random.Random(seed).shuffle(rows)
    windows, total = [], 0
    for start in range(0, len(rows), 32):
        for example in tokenize([{"text": r["text"]} for r in rows[start:start + 32]], tokenizer):
            for window in chunk_text(example["input_ids"], max_length):
                if total >= target_tokens_wanted:
                    return Dataset.from_list(windows)
                windows.append(window)
                total += len(window["input_ids"]) - 1
    if not windows:
        raise m.error("fields", "no text to evaluate on (every held-out text is shorter than two tokens)",
                      "check the manifest's source and fields")
    return Dataset.from_list(windows)


def pad_batch(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; padding has attention 0 and label -100, so it is never a target."""
    width = max(len(e["input_ids"]) for e in examples)
    ids, labels, mask = [], [], []
    for e in examples:
        gap = width - len(e["input_ids"])
        ids.append(e["input_ids"] + [pad_id] * gap)
        labels.append(e["labels"] + [IGNORE_INDEX] * gap)
        mask.append([1] * len(e["input_ids"]) + [0] * gap)
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def explain_labels(example: dict[str, list[int]], tokenizer) -> str:
    """The example as the loss sees it: what is context only (-100) and what the model must predict."""
    context = [t for t, l in zip(example["input_ids"], example["labels"]) if l == IGNORE_INDEX]
    learned = [t for t, l in zip(example["input_ids"], example["labels"]) if l != IGNORE_INDEX]
    stop = tokenizer.eos_token_id
    ends = "yes" if stop in learned[-2:] else "NO"  # a chat template may follow the end of turn with a newline
    return (f"--- context, label -100 ({len(context)} tokens) ---\n{tokenizer.decode(context)}\n"
            f"--- learned ({len(learned)} tokens; ends with the end of turn {tokenizer.eos_token!r}: {ends}) ---\n"
            f"{tokenizer.decode(learned)}")


def masked_view(batch: dict, tokenizer, row: int = 0) -> str:
    """A collated training row as the loss sees it: every token the model reads, and below it the same text with the
    tokens labelled -100 blanked out (░), so only what the model is trained to write is left."""
    ids = [int(t) for t in batch["input_ids"][row]]
    labels = [int(t) for t in batch["labels"][row]]
    pieces = [tokenizer.decode([t]) for t in ids]
    learned = "".join(p if l != IGNORE_INDEX else "".join(ch if ch == "\n" else "░" for ch in p)
                      for p, l in zip(pieces, labels))
    targets = [t for t, l in zip(ids, labels) if l != IGNORE_INDEX]
    if not targets:
        return "no target tokens: this example teaches nothing"
    ends = "yes" if tokenizer.eos_token_id in targets[-2:] else "NO"  # a chat template may add a newline after it
    return (f"--- input_ids: the {len(ids)} tokens the model reads ---\n{''.join(pieces)}\n"
            f"--- labels: {len(targets)} targets; the {len(ids) - len(targets)} tokens labelled -100 are blanked ---\n"
            f"{learned}\n--- the targets end with the end of turn {tokenizer.eos_token!r}: {ends} ---")


__all__ = ["IGNORE_INDEX", "LabData", "chunk_text", "explain_labels", "fingerprint", "generation_prompt_ids",
           "masked_view", "pad_batch", "prepare_data", "prepare_text", "render_instruction_prompt", "target_tokens",
           "to_example", "tokenize"]
