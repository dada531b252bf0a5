"""Results files: one JSON per run, validated against results_schema.json, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from jsonschema import Draft202012Validator, FormatChecker

SCHEMA_PATH = Path(__file__).with_name("results_schema.json")
SCHEMA_VERSION = 1
SCHEMA = json.loads(SCHEMA_PATH.read_text())
_VALIDATOR = Draft202012Validator(SCHEMA, format_checker=FormatChecker())

RUN_ORDER = ("full", "lora-r8", "lora-r16", "lora-r32", "qlora")  # every table and plot uses this order


class ResultsError(ValueError):
    pass


def problems(record: object) -> list[str]:
    """Every way the record breaks the schema, as 'where: what' lines (empty when valid)."""
    errors = sorted(_VALIDATOR.iter_errors(record), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]


def validate(record: dict) -> dict:
    found = problems(record)
    if found:
        raise ResultsError("results record does not match the schema v1:\n  " + "\n  ".join(found[:10]))
    return record


def write_atomic(record: dict, path: Path) -> Path:
    """Validate, then write atomically: a record that breaks the schema never reaches the disk."""
    validate(record)
    return write_json_atomic(record, path)


def write_json_atomic(data: dict, path: Path) -> Path:
    """Write a temp file beside the target, fsync, rename: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by anyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read(path: Path) -> dict:
    """A valid record, or ResultsError saying why not (unparsable, older schema, schema violation)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ResultsError(f"cannot be parsed as JSON ({err})") from err
    if not isinstance(record, dict):
        raise ResultsError("is not a JSON object")
    version = record.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsError(f"schema_version is {version!r}, this lab reads {SCHEMA_VERSION}; re-run that notebook "
                           "to regenerate it")
    found = problems(record)
    if found:
        raise ResultsError("does not match the schema: " + "; ".join(found[:3]))
    return record


def run_sort_key(run_id: str) -> tuple[int, str]:
    return (RUN_ORDER.index(run_id) if run_id in RUN_ORDER else len(RUN_ORDER), run_id)


def load_all(directory: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """(valid records in RUN_ORDER, [(file name, reason)] for every file left out). Never raises on bad files."""
    records, rejected = [], []
    for path in sorted(Path(directory).glob("*.json")):
        if path.name.startswith(".") or path.name == "human_eval.json":
            continue
        try:
            records.append(read(path))
        except ResultsError as err:
            rejected.append((path.name, str(err)))
    records.sort(key=lambda r: run_sort_key(r["run_id"]))
    return records, rejected
