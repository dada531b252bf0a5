"""Data manifests (one TOML file per dataset), loading, prompt rendering and label masking."""

from __future__ import annotations

import hashlib
import json
import random
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from .environment import REPO_ROOT, hub_offline

MANIFEST_DIR = REPO_ROOT / "data_manifests"
IGNORE_INDEX = -100  # labels that take no part in the loss: prompt tokens and padding

INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n\n"
INPUT_TEMPLATE = "### Input:\n{input}\n\n"
RESPONSE_HEADER = "### Response:\n"

FORMAT_FIELDS = {  # which columns each format reads; the manifest maps them to the data's columns
    "instruction": ({"instruction", "output"}, {"input"}),
    "chat": ({"messages"}, set()),
    "text": ({"text"}, set()),
}
ALLOWED_KEYS = {
    "": {"name", "description", "format", "source", "fields", "split", "filter", "generation"},  # fields, filter: free
    "source": {"kind", "builder", "id", "config", "split", "path", "transform"},
    "split": {"eval_fraction", "eval_split", "group_by", "seed", "max_train", "max_eval"},
    "generation": {"prompts"},
}
SOURCE_KINDS = {"bundled": {"builder"}, "hub": {"id", "split"}, "file": {"path"}}
TRANSFORMS = {"oasst_pairs"}


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Manifest:
    path: Path
    name: str
    description: str
    format: str
    source: dict[str, Any]
    fields: dict[str, str]
    split: dict[str, Any]
    filter: dict[str, Any]
    prompts: tuple[str, ...]

    def error(self, field: str, problem: str, fix: str) -> ManifestError:
        return ManifestError(f"{self.path.name}: [{field}] {problem}. Fix: {fix}")


def _fail(path: Path, field: str, problem: str, fix: str) -> ManifestError:
    return ManifestError(f"{path.name}: [{field}] {problem}. Fix: {fix}")


def load_manifest(name_or_path: str | Path) -> Manifest:
    """Read and check a manifest; every problem names the file, the field and the fix."""
    path = Path(name_or_path)
    if not path.suffix:
        path = MANIFEST_DIR / f"{name_or_path}.toml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in MANIFEST_DIR.glob("*.toml")))
        raise ManifestError(f"No manifest {path}. Known manifests: {known}.")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise _fail(path, "file", f"is not valid TOML ({err})", "correct the TOML syntax") from err

    for section, allowed in ALLOWED_KEYS.items():
        table = raw if section == "" else raw.get(section, {})
        if not isinstance(table, dict):
            raise _fail(path, section, "must be a table", f"write it as [{section}]")
        for key in set(table) - allowed:
            where = f"{section}.{key}" if section else key
            raise _fail(path, where, "is not a known key", f"remove it or use one of: {', '.join(sorted(allowed))}")
    for key in ("name", "format", "source", "fields"):
        if key not in raw:
            raise _fail(path, key, "is missing", f"add `{key}` (see data_manifests/python_docs.toml for a complete example)")
    if raw["name"] != path.stem:
        raise _fail(path, "name", f"is {raw['name']!r} but the file is {path.name}", f"set name = {path.stem!r}")
    fmt = raw["format"]
    if fmt not in FORMAT_FIELDS:
        raise _fail(path, "format", f"{fmt!r} is not a format", f"use one of: {', '.join(FORMAT_FIELDS)}")

    source = raw["source"]
    kind = source.get("kind")
    if kind not in SOURCE_KINDS:
        raise _fail(path, "source.kind", f"{kind!r} is not a source kind", f"use one of: {', '.join(SOURCE_KINDS)}")
    for key in SOURCE_KINDS[kind]:
        if key not in source:
            raise _fail(path, f"source.{key}", f"is missing (needed by kind = {kind!r})", f"add source.{key}")
    if source.get("transform") not in (None, *TRANSFORMS):
        raise _fail(path, "source.transform", f"{source['transform']!r} is unknown", f"use one of: {sorted(TRANSFORMS)}")

    required, optional = FORMAT_FIELDS[fmt]
    fields = raw["fields"]
    for key in fields:
        if key not in required | optional:
            raise _fail(path, f"fields.{key}", f"is not read by format {fmt!r}",
                        f"map only: {', '.join(sorted(required | optional))}")
    for key in required:
        if key not in fields:
            raise _fail(path, f"fields.{key}", f"is missing (format {fmt!r} needs it)",
                        f"add {key} = \"<column name in the data>\" under [fields]")

    split = raw.get("split", {})
    if ("eval_fraction" in split) == ("eval_split" in split):
        raise _fail(path, "split", "needs exactly one of eval_fraction and eval_split",
                    "hold out a fraction (eval_fraction = 0.1) or name the source's own split (eval_split = \"validation\")")
    fraction = split.get("eval_fraction", 0.5)
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction < 1:
        raise _fail(path, "split.eval_fraction", f"{fraction!r} is not a number between 0 and 1", "use e.g. eval_fraction = 0.1")
    prompts = raw.get("generation", {}).get("prompts", [])
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise _fail(path, "generation.prompts", "must be a non-empty list of strings",
                    "add prompts = [\"...\"] under [generation]: the fixed prompts generated before and after training")
    return Manifest(path, raw["name"], raw.get("description", ""), fmt, source, fields, split,
                    raw.get("filter", {}), tuple(prompts))


def all_manifests() -> list[Path]:
    return sorted(MANIFEST_DIR.glob("*.toml"))


# ---------- raw rows ----------

def _oasst_pairs(rows: list[dict]) -> list[dict]:
    """Assistant replies with the user message they answer (OASST1 stores a message tree)."""
    by_id = {r["message_id"]: r for r in rows}
    pairs = []
    for r in rows:
        parent = by_id.get(r.get("parent_id"))
        if r.get("role") == "assistant" and parent is not None and parent.get("role") == "prompter":
            pairs.append({"instruction": parent["text"], "input": "", "output": r["text"],
                          "group": parent["message_tree_id"]})
    return pairs


def _read_source(m: Manifest, split_name: str | None = None) -> list[dict]:
    src = m.source
    if src["kind"] == "bundled":
        if src["builder"] != "python_docs":
            raise m.error("source.builder", f"{src['builder']!r} is not a bundled builder", "use builder = \"python_docs\"")
        from .python_docs import build_examples
        rows = build_examples()
    elif src["kind"] == "file":
        path = Path(src["path"])
        path = path if path.is_absolute() else m.path.parent / path
        if not path.exists():
            raise m.error("source.path", f"{path} does not exist", "point source.path at a .json or .jsonl file")
        text = path.read_text()
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" \
            else json.loads(text)
    else:
        if hub_offline():
            raise m.error("source.kind", f"hub dataset {src['id']} needs the Hugging Face Hub, which is off "
                          "(HF_HUB_OFFLINE=1)", "use the bundled manifest DATASET = \"python_docs\", or run on Colab")
        from datasets import load_dataset
        ds = load_dataset(src["id"], src.get("config") or None, split=split_name or src["split"])
        rows = ds.to_list()
    return rows


def _rows(m: Manifest, split_name: str | None = None) -> list[dict]:
    rows = _apply_filter(m, _read_source(m, split_name))  # filter first: transforms may drop the columns
    if m.source.get("transform") == "oasst_pairs":
        rows = _oasst_pairs(rows)
    return _map_fields(m, rows)


def _apply_filter(m: Manifest, rows: list[dict]) -> list[dict]:
    for column, wanted in m.filter.items():
        if rows and column not in rows[0]:
            raise m.error(f"filter.{column}", f"the data has no column {column!r} (it has: {sorted(rows[0])})",
                          "filter on an existing column")
        rows = [r for r in rows if r.get(column) == wanted]
    return rows


def _map_fields(m: Manifest, rows: list[dict]) -> list[dict]:
    columns = set(rows[0]) if rows else set()
    for key, column in m.fields.items():
        if column not in columns:
            raise m.error(f"fields.{key}", f"the data has no column {column!r} (it has: {sorted(columns)})",
                          f"set {key} to one of those columns")
    group = m.split.get("group_by")
    if group and group not in columns:
        raise m.error("split.group_by", f"the data has no column {group!r}", f"use one of: {sorted(columns)}")
    mapped = []
    for r in rows:
        row = {key: r.get(column) if r.get(column) is not None else "" for key, column in m.fields.items()}
        row["group"] = str(r[group]) if group else None
        if m.format == "instruction" and not (str(row["instruction"]).strip() and str(row["output"]).strip()):
            continue
        if m.format == "text" and not str(row["text"]).strip():
            continue
        if m.format == "chat" and not row["messages"]:
            continue
        mapped.append(row)
    return mapped


def load_rows(m: Manifest) -> tuple[list[dict], list[dict]]:
    """(train, eval) rows with the manifest's field names, before tokenization."""
    if "eval_split" in m.split:
        train, evals = _rows(m), _rows(m, m.split["eval_split"])
    else:
        rows = _rows(m)
        train, evals = _split(rows, m.split["eval_fraction"], m.split.get("seed", 0))
    for side, rows in (("train", train), ("eval", evals)):
        if not rows:
            raise m.error("fields", f"zero usable rows in the {side} split after mapping and filtering",
                          "check the field mapping, the filter and the source split")
    return train, evals


def _split(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    if rows and rows[0]["group"] is not None:
        from .python_docs import split_by_group
        return split_by_group(rows, fraction, seed)
    # No groups: a stable hash of the content decides, so the split never depends on row order.
    def to_eval(r: dict) -> bool:
        digest = hashlib.sha256(f"{seed}:{json.dumps(r, sort_keys=True)}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < fraction
    return [r for r in rows if not to_eval(r)], [r for r in rows if to_eval(r)]


# ---------- rendering and tokenization ----------

def render_instruction_prompt(instruction: str, input_text: str = "") -> str:
    """The seeds' template; the Input block is left out when empty."""
    prompt = INSTRUCTION_TEMPLATE.format(instruction=instruction.strip())
    if input_text and input_text.strip():
        prompt += INPUT_TEMPLATE.format(input=input_text.strip())
    return prompt + RESPONSE_HEADER


def render(row: dict, fmt: str, tokenizer, prompt_format: str) -> tuple[str, str]:
    """(prompt, response) text; the loss is taken on the response only."""
    if fmt == "instruction":
        return render_instruction_prompt(row["instruction"], row.get("input", "")), row["output"].strip()
    if fmt == "chat":
        messages = row["messages"]
        *history, last = messages
        if last["role"] != "assistant":
            raise ValueError("a chat row must end with an assistant message")
        if prompt_format == "chat" and tokenizer.chat_template:
            prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        else:
            user = "\n\n".join(m["content"] for m in history if m["role"] == "user")
            prompt = render_instruction_prompt(user)
        return prompt, last["content"].strip()
    return "", row["text"]


def render_generation_prompt(instruction: str, fmt: str, tokenizer, prompt_format: str) -> str:
    if fmt == "text":
        return instruction
    if fmt == "chat" and prompt_format == "chat" and tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                             add_generation_prompt=True)
    return render_instruction_prompt(instruction)


def tokenize_example(prompt: str, response: str, tokenizer) -> dict[str, list[int]]:
    """Prompt tokens are masked with -100; the response and its closing EOS are learned.

    EOS is appended as an id, not found by value, so it stays in the labels even when pad == EOS
    (SmolLM2 and GPT-2): a model that never sees EOS in its labels never learns to stop.
    """
    prompt_ids = tokenizer(prompt).input_ids if prompt else (
        [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and tokenizer("x").input_ids[0] ==
        tokenizer.bos_token_id else [])
    response_ids = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return {"input_ids": prompt_ids + response_ids,
            "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids}


def chunk_text(ids: list[int], max_length: int) -> list[dict[str, list[int]]]:
    """Raw text: consecutive windows; every token is a target."""
    return [{"input_ids": ids[i:i + max_length], "labels": ids[i:i + max_length]}
            for i in range(0, len(ids), max_length) if len(ids[i:i + max_length]) > 1]


@dataclass
class LabData:
    manifest: Manifest
    train: Dataset
    eval: Dataset
    prompts: list[str]  # rendered generation prompts
    instructions: list[str]  # the same prompts as the student reads them
    fingerprint: str
    dropped_too_long: int

    def describe(self) -> dict:
        def stats(ds: Dataset) -> dict:
            lengths = [len(x) for x in ds["input_ids"]]
            targets = sum(sum(1 for t in labels[1:] if t != IGNORE_INDEX) for labels in ds["labels"])
            return {"examples": len(ds), "tokens": sum(lengths), "target_tokens": targets,
                    "max_length": max(lengths) if lengths else 0}
        return {"manifest": self.manifest.name, "fingerprint": self.fingerprint,
                "train": stats(self.train), "eval": stats(self.eval), "dropped_too_long": self.dropped_too_long}


def _tokenize_rows(rows: list[dict], m: Manifest, tokenizer, prompt_format: str, max_length: int,
                   limit: int, desc: str) -> tuple[list[dict], int]:
    out, dropped = [], 0
    for row in tqdm(rows, desc=desc, leave=False):
        if len(out) >= limit:
            break
        if m.format == "text":
            ids = tokenizer(row["text"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            out.extend(chunk_text(ids, max_length))
            continue
        example = tokenize_example(*render(row, m.format, tokenizer, prompt_format), tokenizer)
        if len(example["input_ids"]) > max_length:
            dropped += 1  # dropped, not cut: a cut example loses its EOS and teaches the model to ramble
            continue
        out.append(example)
    return out[:limit], dropped


def prepare_data(manifest_name: str, tokenizer, prompt_format: str, max_length: int, train_examples: int,
                 eval_examples: int, generation_prompts: int, seed: int) -> LabData:
    """Tokenized train and eval sets; the eval rows are the same for every method of a profile."""
    m = load_manifest(manifest_name)
    train_rows, eval_rows = load_rows(m)
    # Shuffle before capping so a small budget still samples the whole corpus, deterministically.
    random.Random(seed).shuffle(train_rows)
    random.Random(seed + 1).shuffle(eval_rows)
    cap_train = min(train_examples, m.split.get("max_train", train_examples))
    cap_eval = min(eval_examples, m.split.get("max_eval", eval_examples))
    train, dropped_train = _tokenize_rows(train_rows, m, tokenizer, prompt_format, max_length, cap_train, "train")
    evals, dropped_eval = _tokenize_rows(eval_rows, m, tokenizer, prompt_format, max_length, cap_eval, "eval")
    if not train or not evals:
        raise m.error("split", f"no example fits max_length={max_length} tokens "
                      f"(train {len(train)}, eval {len(evals)})", "raise the profile's max_length")
    digest = hashlib.sha256()
    for example in train + evals:
        digest.update(json.dumps(example, separators=(",", ":")).encode())
    instructions = list(m.prompts[:generation_prompts])
    prompts = [render_generation_prompt(p, m.format, tokenizer, prompt_format) for p in instructions]
    return LabData(m, Dataset.from_list(train), Dataset.from_list(evals), prompts, instructions,
                   digest.hexdigest()[:16], dropped_train + dropped_eval)


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
    eos = "yes" if learned and learned[-1] == tokenizer.eos_token_id else "NO"
    return (f"--- context, label -100 ({len(context)} tokens) ---\n{tokenizer.decode(context)}\n"
            f"--- learned ({len(learned)} tokens; ends with EOS {tokenizer.eos_token!r}: {eos}) ---\n"
            f"{tokenizer.decode(learned)}")
