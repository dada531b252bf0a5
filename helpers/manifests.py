"""Data manifests: one TOML file per dataset says where its rows come from, how columns map to fields, how the
held-out split is made and which prompts are generated. Every problem names the file, the field and the fix."""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .environment import REPO_ROOT

MANIFEST_DIR = REPO_ROOT / "data_manifests"

FORMAT_FIELDS = {  # format -> (required fields, optional fields); the manifest maps them to the data's columns
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
BUNDLED_BUILDERS = {"python_docs", "vital_articles"}  # helpers/python_docs.py, helpers/vital_articles.py
TRANSFORMS = {"oasst_pairs"}
FILE_SUFFIXES = {".json", ".jsonl"}


class ManifestError(ValueError):
    pass


def did_you_mean(value: object, choices) -> str:
    """" (did you mean 'cpu'?)" for the choices closest to a mistyped value (case and spaces ignored), else ""."""
    if not isinstance(value, str) or not value:
        return ""
    choices = [str(c) for c in choices]
    folded = {c.lower().replace(" ", ""): c for c in choices}
    key = value.strip().lower().replace(" ", "")
    if key in folded and folded[key] != value:
        return f" (did you mean {folded[key]!r}?)"
    close = [folded[c] for c in difflib.get_close_matches(key, list(folded), n=3, cutoff=0.6)]
    close = [c for c in close if c != value]
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


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
        return fail(self.path, field, problem, fix)

    def data_path(self) -> Path:
        """A file source's path; relative paths are relative to the manifest."""
        path = Path(self.source["path"]).expanduser()
        return path if path.is_absolute() else self.path.parent / path


def fail(path: Path, field: str, problem: str, fix: str) -> ManifestError:
    return ManifestError(f"{Path(path).name}: [{field}] {problem}. Fix: {fix}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: object) -> str:
    return {str: "text", bool: "true/false", int: "a whole number", float: "a number", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _positive_int(path: Path, split: dict, key: str) -> None:
    if key in split and not (_is_whole(split[key]) and split[key] > 0):
        raise fail(path, f"split.{key}", f"{split[key]!r} is not a positive whole number",
                   f"use e.g. {key} = 500 (no quotes), or remove it for no cap")


def _string(path: Path, table: dict, key: str, where: str, example: str) -> None:
    """An optional key that must be non-empty text when present."""
    if key in table and (not isinstance(table[key], str) or not table[key].strip()):
        raise fail(path, where, f"{table[key]!r} is {_type_name(table[key])}, not a non-empty text",
                   f"write {key} = {example}")


def known_manifests() -> list[str]:
    return sorted(p.stem for p in MANIFEST_DIR.glob("*.toml"))


def resolve(name_or_path: str | Path, setting: str = "DATASET") -> Path:
    """The .toml file a DATASET value means: a name in data_manifests/, or a path (as given, from the repository
    root, or a shipped manifest's file name). Raises ManifestError naming the close matches when there is none;
    `setting` is the parameter the value came from (DATASET, forgetting)."""
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        raise ManifestError(f"{setting} = {name_or_path!r}: a dataset is a manifest name (text) or the path of a .toml "
                            f"file. Fix: use one of: {', '.join(known_manifests())}")
    text = str(name_or_path).strip()
    path = Path(text).expanduser()
    if not path.suffix:
        candidates = [MANIFEST_DIR / f"{text}.toml"]
    else:
        candidates = [path] if path.is_absolute() else [path, REPO_ROOT / path]
        if path.name == text:  # a bare file name: also a shipped manifest's
            candidates.append(MANIFEST_DIR / path.name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if path.suffix in FILE_SUFFIXES:
        raise ManifestError(f"{setting} = {text!r}: is a data file, not a manifest. Fix: write a manifest .toml "
                            "(copy data_manifests/python_docs.toml) with [source] kind = \"file\" and path = "
                            f"\"{path.name}\", and give {setting} the manifest's path")
    if path.suffix and path.suffix != ".toml":
        raise ManifestError(f"{setting} = {text!r}: a manifest is a .toml file, not a {path.suffix} file. Fix: give a "
                            f"manifest name ({', '.join(known_manifests())}) or the path of a .toml file")
    known = known_manifests()
    if not path.suffix:
        raise ManifestError(f"{setting} = {text!r}: there is no manifest {MANIFEST_DIR / (text + '.toml')}"
                            f"{did_you_mean(text, known)}. Fix: use one of: {', '.join(known)}; or give the path of "
                            "a .toml file of your own (see data_manifests/python_docs.toml for a complete example)")
    raise ManifestError(f"{setting} = {text!r}: the file {path.resolve()} does not exist"
                        f"{did_you_mean(path.stem, known)}. Fix: check the path (relative paths start at the "
                        "notebook's folder or the repository root), "
                        f"or use one of: {', '.join(known)}")


def load_manifest(name_or_path: str | Path, setting: str = "DATASET") -> Manifest:
    """Read and check a manifest: a name from data_manifests/ or a path to a .toml file."""
    path = resolve(name_or_path, setting)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as err:
        raise fail(path, "file", f"is not UTF-8 text ({err.reason} at byte {err.start})",
                   "save the manifest as UTF-8 (in most editors: Save As, encoding UTF-8)") from err
    except tomllib.TOMLDecodeError as err:
        raise fail(path, "file", f"is not valid TOML ({err})", "correct the TOML syntax on that line (text needs "
                   "\"quotes\", tables are written [name])") from err
    except OSError as err:
        raise fail(path, "file", f"cannot be read ({err.strerror})", "check the path and its permissions") from err

    for section, allowed in ALLOWED_KEYS.items():
        table = raw if section == "" else raw.get(section, {})
        if not isinstance(table, dict):
            raise fail(path, section, f"is {_type_name(table)}, not a table", f"write it as a [{section}] section")
        for key in sorted(set(table) - allowed):
            where = f"{section}.{key}" if section else key
            raise fail(path, where, f"is not a known key{did_you_mean(key, allowed)}",
                       f"remove it or use one of: {', '.join(sorted(allowed))}")
    for key in ("name", "format", "source", "fields"):
        if key not in raw:
            raise fail(path, key, "is missing", f"add `{key}` (see data_manifests/python_docs.toml for a complete example)")
    if raw["name"] != path.stem:
        raise fail(path, "name", f"is {raw['name']!r} but the file is {path.name}", f"set name = {path.stem!r}")
    _string(path, raw, "description", "description", '"what the rows are"')
    fmt = raw["format"]
    if not isinstance(fmt, str) or fmt not in FORMAT_FIELDS:
        raise fail(path, "format", f"{fmt!r} is not a format{did_you_mean(fmt, FORMAT_FIELDS)}",
                   f"use one of: {', '.join(FORMAT_FIELDS)}")

    source = raw["source"]
    if not isinstance(source, dict):
        raise fail(path, "source", f"is {_type_name(source)}, not a table", "write it as a [source] section")
    kind = source.get("kind")
    if not isinstance(kind, str) or kind not in SOURCE_KINDS:
        raise fail(path, "source.kind", f"{kind!r} is not a source kind{did_you_mean(kind, SOURCE_KINDS)}",
                   f"use one of: {', '.join(SOURCE_KINDS)}")
    for key in sorted(SOURCE_KINDS[kind]):
        if key not in source:
            raise fail(path, f"source.{key}", f"is missing (needed by kind = {kind!r})",
                       f"add {key} = \"...\" under [source]")
        _string(path, source, key, f"source.{key}", '"..."')
    for key in ("config", "split", "id", "path", "builder"):
        _string(path, source, key, f"source.{key}", '"..."')
    if kind == "bundled" and source["builder"] not in BUNDLED_BUILDERS:
        raise fail(path, "source.builder", f"{source['builder']!r} is not a bundled builder"
                   f"{did_you_mean(source['builder'], BUNDLED_BUILDERS)}",
                   f"use one of: {', '.join(sorted(BUNDLED_BUILDERS))}")
    if kind == "file" and Path(source["path"]).suffix.lower() not in FILE_SUFFIXES:
        raise fail(path, "source.path", f"{source['path']!r} is neither a .json nor a .jsonl file",
                   "point it at a JSON list of objects (.json) or one JSON object per line (.jsonl)")
    if "transform" in source and (not isinstance(source["transform"], str) or source["transform"] not in TRANSFORMS):
        raise fail(path, "source.transform", f"{source['transform']!r} is unknown"
                   f"{did_you_mean(source['transform'], TRANSFORMS)}",
                   f"use one of: {', '.join(sorted(TRANSFORMS))}, or remove it")

    required, optional = FORMAT_FIELDS[fmt]
    fields = raw["fields"]
    if not isinstance(fields, dict):
        raise fail(path, "fields", f"is {_type_name(fields)}, not a table", "write it as a [fields] section")
    for key in sorted(fields):
        if key not in required | optional:
            raise fail(path, f"fields.{key}", f"is not read by format {fmt!r}{did_you_mean(key, required | optional)}",
                       f"map only: {', '.join(sorted(required | optional))}")
        if not isinstance(fields[key], str) or not fields[key]:
            raise fail(path, f"fields.{key}", f"{fields[key]!r} is not a column name",
                       f"write {key} = \"<column name in the data>\"")
    for key in sorted(required):
        if key not in fields:
            raise fail(path, f"fields.{key}", f"is missing (format {fmt!r} needs it)",
                       f"add {key} = \"<column name in the data>\" under [fields]")

    filters = raw.get("filter", {})
    if not isinstance(filters, dict):
        raise fail(path, "filter", f"is {_type_name(filters)}, not a table",
                   "write it as a [filter] section of column = value lines, e.g. lang = \"en\"")
    for column, wanted in filters.items():
        if isinstance(wanted, (dict, list)):
            raise fail(path, f"filter.{column}", f"is {_type_name(wanted)}; a filter keeps rows whose column equals "
                       "one value", f"write {column} = \"<value>\"")

    split = raw.get("split", {})
    if ("eval_fraction" in split) == ("eval_split" in split):
        raise fail(path, "split", "needs exactly one of eval_fraction and eval_split",
                   "hold out a fraction (eval_fraction = 0.1) or name the source's own split (eval_split = \"validation\")")
    fraction = split.get("eval_fraction", 0.5)
    if not _is_number(fraction) or not 0 < fraction < 1:
        raise fail(path, "split.eval_fraction", f"{fraction!r} is not a number between 0 and 1",
                   "use e.g. eval_fraction = 0.1 (no quotes)")
    _string(path, split, "eval_split", "split.eval_split", '"validation"')
    if "eval_split" in split and kind != "hub":
        raise fail(path, "split.eval_split", f"only a Hub dataset has its own splits (source.kind is {kind!r})",
                   "hold out a fraction instead: eval_fraction = 0.1")
    _string(path, split, "group_by", "split.group_by", '"<column name in the data>"')
    for key in ("max_train", "max_eval"):
        _positive_int(path, split, key)
    if "seed" in split and not (_is_whole(split["seed"]) and split["seed"] >= 0):
        raise fail(path, "split.seed", f"{split['seed']!r} is not a whole number >= 0", "use e.g. seed = 0")
    prompts = raw.get("generation", {}).get("prompts", [])
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise fail(path, "generation.prompts", f"{prompts!r} is not a non-empty list of texts",
                   "add prompts = [\"...\"] under [generation]: the fixed prompts generated before and after training")
    return Manifest(path, raw["name"], raw.get("description", ""), fmt, source, fields, split, filters, tuple(prompts))


def all_manifests() -> list[Path]:
    return sorted(MANIFEST_DIR.glob("*.toml"))
