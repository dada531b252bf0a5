"""Rows from a manifest's source, turned into prompt–completion examples and tokenized the way SFTTrainer trains.

An instruction row becomes a conversation (user: instruction, assistant: output) for a model with a chat template, and the
seeds' `### Instruction / ### Response` text for one without (GPT-2). TRL's own SFT preparation then applies the chat
template, appends the end of turn and masks the prompt, so evaluation scores exactly the tokens training learns.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset

from .manifests import Manifest, ManifestError, did_you_mean, fail, load_manifest

IGNORE_INDEX = -100  # labels that take no part in the loss: prompt tokens and padding

INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n\n"
INPUT_TEMPLATE = "### Input:\n{input}\n\n"
RESPONSE_HEADER = "### Response:\n"


class DataFileError(ManifestError):
    """A data file that cannot be read as rows: the message names the file, the line or row, and the fix."""


# ---------- raw rows ----------

def _file_error(path: Path, where: str, problem: str, fix: str) -> DataFileError:
    return DataFileError(f"{path}{where}: {problem}. Fix: {fix}")


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def read_data_file(path: Path, locations: dict[int, str] | None = None) -> list[dict]:
    """The rows of a .json (a list of objects) or .jsonl (one object per line) file, or a DataFileError naming the
    file, the line and the fix. `locations`, when given, receives id(row) -> "line 7" / "row 7" for later messages."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise _file_error(path, "", what, "point the manifest's source.path at a .json or .jsonl file (relative "
                          "paths are relative to the manifest)")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark (Windows editors) is not an error
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise _file_error(path, f", line {line}", f"is not UTF-8 text ({err.reason} at byte {err.start})",
                          "save the file as UTF-8 (in most editors: Save As, encoding UTF-8)") from err
    if not text.strip():
        raise _file_error(path, "", "is empty", "put the training rows in it (see the manifest's [fields])")
    where = locations if locations is not None else {}
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                hint = (" (this looks like a JSON list spread over lines: name the file .json)"
                        if number == 1 and line.strip().startswith("[") else "")
                raise _file_error(path, f", line {number}",
                                  f"is not valid JSON ({err.msg} at column {err.colno}){hint}",
                                  "each line must be one complete JSON object; check the quotes, commas and braces "
                                  "on that line") from err
            if not isinstance(row, dict):
                raise _file_error(path, f", line {number}", f"is {_kind(row)}, not a JSON object",
                                  'write one object per line, e.g. {"instruction": "...", "output": "..."}')
            where[id(row)] = f"line {number}"
            rows.append(row)
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        hint = (" (it looks like one object per line: name the file .jsonl)"
                if err.msg == "Extra data" else "")
        raise _file_error(path, f", line {err.lineno}", f"is not valid JSON ({err.msg} at column {err.colno}){hint}",
                          "correct the JSON at that line") from err
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        seem = f"; the rows seem to be under the key {lists[0]!r}" if len(lists) == 1 else ""
        raise _file_error(path, "", f"holds a JSON object, not a list of rows{seem}",
                          "make the top level a list: [{...}, {...}]")
    if not isinstance(data, list):
        raise _file_error(path, "", f"holds {_kind(data)}, not a list of rows",
                          "make the top level a list: [{...}, {...}]")
    if not data:
        raise _file_error(path, "", "holds an empty list: no rows", "put the training rows in the list")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise _file_error(path, f", row {number}", f"is {_kind(row)}, not a JSON object",
                              'every row must be an object, e.g. {"instruction": "...", "output": "..."}')
        where[id(row)] = f"row {number}"
    return data


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


def _read_source(m: Manifest, split_name: str | None = None, locations: dict[int, str] | None = None) -> list[dict]:
    src = m.source
    if src["kind"] == "bundled":
        if src["builder"] == "vital_articles":
            from .vital_articles import build_rows
            return build_rows()
        from .python_docs import build_examples
        return build_examples()
    if src["kind"] == "file":
        path = m.data_path()
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise m.error("source.path", f"{path} {what}", "point source.path at a .json or .jsonl file "
                          "(relative paths are relative to the manifest)")
        return read_data_file(path, locations)
    from .models import hub_error  # lazy: models imports transformers' model classes

    from datasets import load_dataset
    config = src.get("config") or None
    try:  # offline, datasets reads what an earlier online load left in $HF_DATASETS_CACHE; only an uncached one fails
        return load_dataset(src["id"], config, split=split_name or src["split"]).to_list()
    except (OSError, ValueError) as err:
        # Not there: offline and not cached, or not on the Hub (ConnectionError, DatasetNotFoundError and
        # DataFilesNotFoundError are OSErrors), or cached without this config. Any other error (a wrong split
        # name, a damaged file) is the data's own and is shown as datasets raised it.
        if not isinstance(err, OSError) and not str(err).startswith("Couldn't find cache"):
            raise
        fix = ('measure forgetting on the bundled text manifest "vital_articles" (the profile\'s `forgetting`)'
               if m.format == "text" else 'use the bundled manifest DATASET = "python_docs"')
        fix += ' or the offline profile PROFILE = "cpu" (bundled model and data)'
        raise hub_error(f"dataset {src['id']}" + (f" config {config!r}" if config else "") + f" (manifest "
                        f"{m.path.name})", err, fix) from err


def _source_name(m: Manifest) -> str:
    return m.data_path().name if m.source["kind"] == "file" else f"the {m.source['kind']} data"


def _place(m: Manifest, locations: dict[int, str] | None, row: dict, number: int) -> str:
    """Where a row is, as the student finds it: "rows.jsonl line 7", else its position among the rows read."""
    found = (locations or {}).get(id(row))
    return f"{_source_name(m)} {found}" if found else f"{_source_name(m)} row {number}"


def _text(m: Manifest, place: str, key: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise m.error(f"fields.{key}", f"{place}: column {m.fields[key]!r} holds {_kind(value)}, not text",
                  f"make {m.fields[key]!r} a text in every row (\"...\"), or map {key} to a column of text")


def _messages(m: Manifest, place: str, value: object) -> list[dict]:
    ok = (isinstance(value, list) and value and all(isinstance(x, dict) and isinstance(x.get("role"), str)
                                                     and isinstance(x.get("content"), str) for x in value))
    if not ok:
        raise m.error("fields.messages", f"{place}: column {m.fields['messages']!r} is not a list of "
                      "{role, content} messages",
                      'write messages as [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]')
    roles = {x["role"] for x in value} - {"system", "user", "assistant"}
    if roles:
        raise m.error("fields.messages", f"{place}: unknown role(s) {sorted(roles)}",
                      "use the roles \"system\", \"user\" and \"assistant\"")
    if value[-1]["role"] != "assistant":
        raise m.error("fields.messages", f"{place}: the last message is from {value[-1]['role']!r}",
                      "end every conversation with the assistant's reply: that is what the model learns")
    if not any(x["role"] == "user" for x in value):
        raise m.error("fields.messages", f"{place}: there is no user message",
                      "start the conversation with the user's message the assistant answers")
    return value


def _apply_filter(m: Manifest, rows: list[dict]) -> list[dict]:
    for column, wanted in m.filter.items():
        if rows and not any(column in r for r in rows):
            raise m.error(f"filter.{column}", f"{_source_name(m)} has no column {column!r} (it has: "
                          f"{sorted(rows[0])}){did_you_mean(column, rows[0])}", "filter on an existing column")
        kept = [r for r in rows if r.get(column) == wanted]
        if rows and not kept:
            values = sorted({repr(r.get(column)) for r in rows})
            raise m.error(f"filter.{column}", f"no row of {_source_name(m)} has {column} = {wanted!r} (the "
                          f"{len(rows)} rows have: {', '.join(values[:5])}{', ...' if len(values) > 5 else ''})",
                          "use a value that occurs in the data (text is compared exactly, case included), or "
                          "remove the filter")
        rows = kept
    return rows


def _map_fields(m: Manifest, rows: list[dict], locations: dict[int, str] | None = None) -> list[dict]:
    columns = set().union(*(r.keys() for r in rows)) if rows else set()
    for key, column in m.fields.items():
        if column not in columns:
            raise m.error(f"fields.{key}", f"{_source_name(m)} has no column {column!r} (it has: {sorted(columns)})"
                          f"{did_you_mean(column, columns)}", f"set {key} to one of those columns")
    group = m.split.get("group_by")
    if group and group not in columns:
        raise m.error("split.group_by", f"{_source_name(m)} has no column {group!r}{did_you_mean(group, columns)}",
                      f"use one of: {sorted(columns)}, or remove group_by")
    mapped = []
    for number, r in enumerate(rows, start=1):
        place = _place(m, locations, r, number)
        if m.format == "chat":
            row = {"messages": _messages(m, place, r.get(m.fields["messages"]))}
        else:
            row = {key: _text(m, place, key, r.get(column)) for key, column in m.fields.items()}
            if any(not row[key].strip() for key in ("instruction", "output", "text") if key in row):
                continue  # an empty instruction, answer or text teaches nothing
        if group:
            value = r.get(group)
            if isinstance(value, (dict, list)) or value is None:
                raise m.error("split.group_by", f"{place}: column {group!r} holds {_kind(value)}",
                              f"give every row a text or number in {group!r} (rows with the same value stay on one "
                              "side of the split), or remove group_by")
        row["group"] = str(r[group]) if group else None
        mapped.append(row)
    return mapped


def _rows(m: Manifest, split_name: str | None = None) -> list[dict]:
    locations: dict[int, str] = {}
    read = _read_source(m, split_name, locations)
    rows = _apply_filter(m, read)  # filter first: transforms may drop the columns
    if m.source.get("transform") == "oasst_pairs":
        rows = _oasst_pairs(rows)
    mapped = _map_fields(m, rows, locations)
    if not mapped:
        why = ("every row has an empty instruction or output" if m.format == "instruction"
               else "every row has an empty text" if m.format == "text" else "no row is a usable conversation")
        raise m.error("fields", f"{_source_name(m)}{f' (split {split_name!r})' if split_name else ''}: zero usable "
                      f"rows: {len(read)} read, {len(rows)} after the filter and transform, 0 after mapping ({why})",
                      "check the field mapping, the filter and the data itself")
    return mapped


def _split(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    if rows and rows[0]["group"] is not None:
        from .python_docs import split_by_group
        return split_by_group(rows, fraction, seed)

    def to_eval(r: dict) -> bool:  # no groups: a stable hash of the content decides, never the row order
        digest = hashlib.sha256(f"{seed}:{json.dumps(r, sort_keys=True)}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < fraction
    return [r for r in rows if not to_eval(r)], [r for r in rows if to_eval(r)]


def load_rows(m: Manifest) -> tuple[list[dict], list[dict]]:
    """(train, eval) rows with the manifest's field names, before tokenization."""
    if "eval_split" in m.split:
        train, evals = _rows(m), _rows(m, m.split["eval_split"])
    else:
        train, evals = _split(_rows(m), m.split["eval_fraction"], m.split.get("seed", 0))
    for side, rows in (("train", train), ("eval", evals)):
        if not rows:
            total = len(train) + len(evals)
            raise m.error("split", f"zero usable rows in the {side} split ({total} usable rows in all; "
                          f"eval_fraction = {m.split.get('eval_fraction')!r}"
                          f"{', group_by puts them all in one group' if m.split.get('group_by') else ''})",
                          "add rows (a few dozen at least), or change eval_fraction / group_by so that both sides "
                          "get some")
    return train, evals


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


def _preparation_config():
    from trl import SFTConfig

    # Only the fields SFTTrainer's preparation reads; fp16/bf16 off so no device check runs for a tokenizer-only step.
    return SFTConfig(output_dir="unused", max_length=None, packing=False, completion_only_loss=True, activation_checkpointing=False,
                     dataset_num_proc=None, bf16=False, fp16=False, report_to="none", use_cpu=True)


def tokenize(examples: list[dict], tokenizer) -> Dataset:
    """input_ids and labels (-100 on the prompt), by TRL's own SFT preparation: chat template, end of turn appended,
    completion mask. SFTTrainer runs this step inside its __init__, which needs a model; the step itself needs only
    the tokenizer, so it is called here once for train, eval and generation alike (a test checks that SFTTrainer
    given the raw examples prepares exactly the same ids and labels)."""
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled
    from trl import SFTTrainer

    preparer = object.__new__(SFTTrainer)  # the attributes _prepare_dataset reads, set as SFTTrainer.__init__ would
    preparer._tokenizer, preparer.chat_template, preparer.completion_only_loss = tokenizer, None, True
    shown = is_progress_bar_enabled()
    disable_progress_bar()  # a bar per tiny map() call is noise in a notebook
    try:
        prepared = SFTTrainer._prepare_dataset(preparer, Dataset.from_list(examples), tokenizer,
                                               _preparation_config(), False, None, "lab")
    finally:
        if shown:
            enable_progress_bar()
    return prepared.select_columns(["input_ids", "labels"])


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
        return {"manifest": self.manifest.name, "fingerprint": self.fingerprint,
                "template": "chat template" if self.conversational else "### Instruction / ### Response",
                "train": stats(self.train), "eval": stats(self.eval), "dropped_too_long": self.dropped_too_long}


def target_tokens(ds: Dataset) -> int:
    """Tokens the loss predicts: labels other than -100, after the one-token shift."""
    return sum(sum(1 for t in labels[1:] if t != IGNORE_INDEX) for labels in ds["labels"])


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
        train_rows, validation_rows = _split(train_rows, fraction, seed + 2)
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


__all__ = ["IGNORE_INDEX", "DataFileError", "LabData", "ManifestError", "chunk_text", "explain_labels", "fail",
           "fingerprint", "load_manifest", "load_rows", "masked_view", "pad_batch", "prepare_data", "prepare_text", "read_data_file",
           "render_instruction_prompt", "target_tokens", "to_example", "tokenize"]
