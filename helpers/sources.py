"""A manifest's source read into rows: a .json/.jsonl file, the Hub or a bundled builder, filtered, mapped to the
manifest's field names and split into train and eval. Bad data stops here, with the file, the line or row, and the fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .manifests import Manifest, ManifestError, did_you_mean


class DataFileError(ManifestError):
    """A data file that cannot be read as rows: the message names the file, the line or row, and the fix."""


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


def split_rows(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(kept, carved) with about `fraction` of the rows carved off: whole groups when the rows have them."""
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
        train, evals = split_rows(_rows(m), m.split["eval_fraction"], m.split.get("seed", 0))
    for side, rows in (("train", train), ("eval", evals)):
        if not rows:
            total = len(train) + len(evals)
            raise m.error("split", f"zero usable rows in the {side} split ({total} usable rows in all; "
                          f"eval_fraction = {m.split.get('eval_fraction')!r}"
                          f"{', group_by puts them all in one group' if m.split.get('group_by') else ''})",
                          "add rows (a few dozen at least), or change eval_fraction / group_by so that both sides "
                          "get some")
    return train, evals


__all__ = ["DataFileError", "load_rows", "read_data_file", "split_rows"]
