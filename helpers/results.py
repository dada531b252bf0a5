"""Results files: one JSON per (run, seed), built here, validated against results_schema.json, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from jsonschema import Draft202012Validator, FormatChecker

from .environment import ISOLATE_ENV, package_versions
from .profiles import CELL_NAMES, PROFILES

SCHEMA_PATH = Path(__file__).with_name("results_schema.json")
SCHEMA_VERSION = 2
SCHEMA = json.loads(SCHEMA_PATH.read_text())
_VALIDATOR = Draft202012Validator(SCHEMA, format_checker=FormatChecker())

CORE_RUNS = ("full", "lora-r8", "lora-r16", "lora-r32", "qlora")  # notebooks 01-03: the README's reference set
VARIANT_RUNS = ("dora-r16", "rslora-r16", "pissa-r16", "loraplus-r16")  # notebook 04: LoRA r16's variants
RUN_ORDER = CORE_RUNS + VARIANT_RUNS  # every table and plot uses this order
TIMINGS_FILE = "timings.json"  # notebook wall times (helpers.execute); the reference copy sits beside the runs
SIDE_FILES = {"human_eval.json", "bench.json", "sweep.json", "sweep-variants.json", TIMINGS_FILE}  # JSON in a results folder that is not a run
# The source files whose code decides a run's numbers: a stored result made by other code is not reused.
TRAINING_PATH = ("training.py", "specs.py", "evaluation.py", "models.py", "data.py", "sources.py")
VERSION_KEYS = ("python", "torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")
SET_PREFIX = "set-"  # set-<id>/: the runs of one settings set other than the profile's standard one, beside them


class ResultsError(ValueError):
    pass


def file_name(run_id: str, seed: int) -> str:
    return f"{run_id}-seed{seed}.json"


def profile_settings(profile) -> dict:
    """A profile's settings that decide a run's numbers: all but its name and training seeds (seeds are the
    repeats of one experiment, not another experiment), and of its learning rates full's and LoRA's: a LoRA variant's
    own rate decides only that variant's runs (config_fingerprint), so adding or re-sweeping one leaves the settings
    set, and every other run, as it was."""
    settings = {k: v for k, v in asdict(profile).items() if k not in ("seeds", "name")}
    settings["learning_rates"] = {k: v for k, v in profile.learning_rates.items() if k in ("full", "lora")}
    return settings


def code_version() -> str:
    h = hashlib.sha256()
    for name in TRAINING_PATH:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- settings sets: which runs compare

def settings_set(profile, data_fingerprint: str) -> dict:
    """The settings that decide whether two runs compare: profile, its budget and every other setting (model, data,
    learning rates, ...) and the data actually tokenized. {"id": 8 hex digits, "profile", "standard": the profile's
    own settings, unchanged, "changed": {setting: value} where they differ}.

    Package versions, device and code are not in it: a run made by other code under the same settings is the same
    experiment, stale, and redone in place (config_fingerprint decides that)."""
    mine, default = profile_settings(profile), profile_settings(PROFILES[profile.name])
    changed = {k: v for k, v in mine.items() if v != default[k]}
    return {"id": digest(profile.name, mine, data_fingerprint)[:8], "profile": profile.name,
            "standard": not changed, "changed": changed}


def settings_of(record: dict) -> dict:
    """The settings set a record was made under. A record written before settings sets existed has none: it is taken
    as made with its profile's settings (what `make lab` uses) except for the budget it records (steps, batch,
    model, data), which catches the usual demo (a smaller MAX_STEPS)."""
    if record.get("settings"):
        return record["settings"]
    name = record["environment"]["profile"]
    if name not in PROFILES:
        return {"id": digest(name, record["data"]["fingerprint"])[:8], "profile": name, "standard": False,
                "changed": {}}
    made = replace(PROFILES[name], max_steps=record["training"]["steps"], batch_size=record["training"]["batch_size"],
                   model=record["model"]["preset"], dataset=record["data"]["manifest"])
    return settings_set(made, record["data"]["fingerprint"])


def describe_settings(settings: dict) -> str:
    """'profile cpu, standard settings' or 'profile cpu with MAX_STEPS = 2'."""
    if settings["standard"]:
        return f"profile {settings['profile']}, standard settings"
    changed = ", ".join(f"{CELL_NAMES.get(k, k)} = {v!r}" for k, v in settings["changed"].items())
    return f"profile {settings['profile']} with {changed or 'other settings'}"


def run_folder(root: Path, settings: dict, name: str) -> Path:
    """The folder of the results file `name` of a run under `settings`, inside the results folder `root`: the top
    level (the names README and the reference set use) for a profile's standard settings, set-<id>/ for any other.
    A top-level file made under other settings (another profile's standard run, a demo written before settings sets
    existed) is never replaced: the run goes to set-<id>/ too. A standard run still replaces its own stale file."""
    if settings["standard"]:
        try:
            there = settings_of(read(Path(root) / name))
        except ResultsError:  # absent or unreadable: nothing to keep (an unreadable file is redone, as ever)
            there = None
        if there is None or (there["standard"] and there["profile"] == settings["profile"]):
            return Path(root)
    return Path(root) / f"{SET_PREFIX}{settings['id']}"


def config_fingerprint(spec, profile, seed: int, env, data_fingerprint: str, layout: tuple = (1, 1, False)) -> str:
    """What decides a run's numbers: spec, seed, budget, data, precision, device, process layout (processes,
    accumulation, sharding), package versions and the code of the training path. A stored result with another
    fingerprint is stale and is run again."""
    versions = package_versions()
    rate = profile.rate_for(spec)  # a variant's own rate is not in the settings
    return digest(spec.as_dict(), profile_settings(profile), seed, data_fingerprint, env.precision.name, env.device_name,
                  {k: versions.get(k) for k in VERSION_KEYS}, code_version(), SCHEMA_VERSION, list(layout), rate)


def problems(record: object) -> list[str]:
    """Every way the record breaks the schema, as 'where: what' lines (empty when valid)."""
    errors = sorted(_VALIDATOR.iter_errors(record), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]


def validate(record: dict) -> dict:
    found = problems(record)
    if found:
        raise ResultsError(f"results record does not match the schema v{SCHEMA_VERSION}:\n  " + "\n  ".join(found[:10]))
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


class OlderSchema(ResultsError):
    """A results file from an earlier version of the lab: listed, never read as current."""


def read(path: Path) -> dict:
    """A valid record, or ResultsError saying why not (unparsable, older schema, schema violation)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultsError(f"cannot be parsed as JSON ({err})") from err
    if not isinstance(record, dict):
        raise ResultsError("is not a JSON object")
    version = record.get("schema_version")
    if version != SCHEMA_VERSION:
        older = isinstance(version, int) and version < SCHEMA_VERSION
        cls = OlderSchema if older else ResultsError
        raise cls(f"older schema (v{version}); this lab reads v{SCHEMA_VERSION}: re-run the notebook that wrote it"
                  if older else f"schema_version is {version!r}, this lab reads {SCHEMA_VERSION}")
    found = problems(record)
    if found:
        raise ResultsError("does not match the schema: " + "; ".join(found[:3]))
    return record


def run_sort_key(run_id: str) -> tuple[int, str]:
    return (RUN_ORDER.index(run_id) if run_id in RUN_ORDER else len(RUN_ORDER), run_id)


def record_sort_key(record: dict) -> tuple[int, str, int]:
    return (*run_sort_key(record["run_id"]), record["seed"])


def load_all(directory: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """(valid records in RUN_ORDER then seed, [(file name, reason)] for every file left out). Never raises on bad files."""
    records, rejected = [], []
    for path in sorted(Path(directory).glob("*.json")):
        if path.name.startswith(".") or path.name in SIDE_FILES:
            continue
        try:
            records.append(read(path))
        except ResultsError as err:
            rejected.append((path.name, str(err)))
    records.sort(key=record_sort_key)
    return records, rejected


def trained_tokens(record: dict) -> int:
    """Real tokens of the steps whose update was applied (every step's in records made before skips were counted)."""
    training = record["training"]
    return training.get("trained_tokens", training["tokens"])


def skipped_updates_note(skipped_at: list[int], steps: int, trained: int, tokens: int, changed: bool) -> str:
    """What the fp16 loss scaler's skipped updates did to a run: the one wording a record's status, the reading notes
    and the loading report use. `changed`: helpers.training.skips_change_budget (the run is then flagged)."""
    n, s = len(skipped_at), "s" if len(skipped_at) > 1 else ""
    if changed:
        return (f"the fp16 loss scaler skipped {n} of its {steps} updates (step{s} {', '.join(map(str, skipped_at))}) "
                f"after training had started or in every step: it trained {trained:,} of its {tokens:,} tokens, so its "
                "token budget is not the other runs' (gradients overflowed fp16: a lower learning rate, or bf16 on a "
                "GPU that has it)")
    return (f"the fp16 loss scaler skipped its first {n} update{s} while finding its scale, before any weight moved: "
            f"it trained {trained:,} of its {tokens:,} tokens (tolerated, README)")


def record_skips_note(record: dict) -> str:
    """skipped_updates_note for a results record ('' when no update was skipped)."""
    t = record["training"]
    skipped = t.get("skipped_at") or []
    if not skipped:
        return ""
    return skipped_updates_note(skipped, t["steps"], trained_tokens(record), t["tokens"],
                                bool(record.get("status", {}).get("budget_changed")))


def run_status(perplexity_before: float, perplexity_after: float, outcome) -> dict:
    """A record's flags, each with its note: a run that made the model worse, or whose skipped updates changed its
    token budget (helpers.training.skips_change_budget), is listed but never averaged in (helpers.measures.usable)."""
    worse = perplexity_after > perplexity_before
    notes = [f"held-out perplexity rose from {perplexity_before:.2f} to {perplexity_after:.2f}: this run made the "
             "model worse (learning rate too high for this method?)"] if worse else []
    if outcome.skipped_at:
        notes.append(skipped_updates_note(outcome.skipped_at, outcome.steps, outcome.trained_tokens, outcome.tokens,
                                          outcome.budget_changed))
    return {"worse_than_before": worse, "budget_changed": outcome.budget_changed, "notes": notes}


def build_record(*, spec, profile, env, seed: int, started_at: str, finished_at: str, fingerprint: str,
                 targets: list[str] | None, data, params: tuple[int, int, int], outcome, memory: dict, before: dict,
                 after: dict, forgetting_after: dict | None, generations_after: list[str],
                 artifact: tuple[str, int], parallel=None) -> dict:
    """The results record of one (run, seed): every number the tables, plots and notes read."""
    trainable, total, expected = params
    versions = package_versions()
    configs = spec.as_dict()  # the library configs the run trained with, as their constructors take them
    lora = None if spec.lora is None else {"r": spec.lora.r, "alpha": spec.lora.lora_alpha,
                                           "dropout": spec.lora.lora_dropout, "target_modules": targets,
                                           "config": configs["lora"]}
    q = spec.quantization
    quant = None if q is None else {
        "bits": 4, "quant_type": q.bnb_4bit_quant_type, "double_quant": q.bnb_4bit_use_double_quant,
        "compute_dtype": str(q.bnb_4bit_compute_dtype).removeprefix("torch."), "config": configs["quantization"]}
    forgetting = None
    if forgetting_after is not None and before.get("forgetting") is not None:
        fb = before["forgetting"]
        forgetting = {"manifest": profile.forgetting, "tokens": forgetting_after["tokens"],
                      "loss_before": fb["loss"], "perplexity_before": fb["perplexity"],
                      "loss_after": forgetting_after["loss"], "perplexity_after": forgetting_after["perplexity"],
                      "per_example_before": fb["per_example"], "per_example_after": forgetting_after["per_example"]}
    eb = before["eval"]
    return {
        "schema_version": SCHEMA_VERSION, "run_id": spec.run_id, "method": spec.method, "variant": spec.variant,
        "seed": seed,
        "started_at": started_at, "finished_at": finished_at, "config_fingerprint": fingerprint,
        "code_version": code_version(), "settings": settings_set(profile, data.fingerprint),
        "lora": lora, "quantization": quant,
        "model": {"preset": profile.model, "source": "bundled" if profile.model.endswith("-bundled") else "hub",
                  "total_params": total - (trainable if spec.lora else 0)},
        "data": {"manifest": data.manifest.name, "fingerprint": data.fingerprint, "train_examples": len(data.train),
                 "eval_examples": len(data.eval), "data_seed": profile.data_seed,
                 "template": "chat" if data.conversational else "instruction"},
        "params": {"trainable": trainable, "total": total, "trainable_pct": 100 * trainable / total,
                   "expected_trainable": expected},
        "training": {"steps": outcome.steps, "tokens": outcome.tokens, "target_tokens": outcome.target_tokens,
                     "skipped_steps": len(outcome.skipped_at), "skipped_at": outcome.skipped_at,
                     "trained_tokens": outcome.trained_tokens,
                     "seconds": outcome.seconds, "seconds_total": outcome.seconds_total,
                     "tokens_per_second": outcome.tokens_per_second,
                     "tokens_per_second_median": outcome.tokens_per_second_median,
                     "tokens_per_second_upper_quartile": outcome.tokens_per_second_upper_quartile,
                     "step_times": outcome.step_times, "setup_seconds": outcome.setup_seconds,
                     # trained in a fresh process of its own (Lab's run isolation), or after other work in the same one
                     "own_process": os.environ.get(ISOLATE_ENV) == "child",
                     "learning_rate": outcome.learning_rate,
                     "optimizer": outcome.optimizer, "batch_size": profile.batch_size, "precision": env.precision.name,
                     "gradient_checkpointing": outcome.gradient_checkpointing, "loss_head": outcome.loss_head,
                     "trainable_dtypes": outcome.trainable_dtypes,
                     "resumed_from_step": outcome.resumed_from_step, "step_seconds": outcome.step_seconds,
                     "processes": parallel.processes if parallel else 1,
                     "accumulation": parallel.accumulation if parallel else 1,
                     "sharded": bool(parallel and parallel.fsdp), "global_batch": profile.batch_size,
                     "per_device_batch": parallel.per_device_batch(profile.batch_size) if parallel
                     else profile.batch_size,
                     "log": outcome.log},
        "memory": memory,
        "eval": {"precision": after["precision"], "tokens": after["tokens"], "loss_before": eb["loss"], "perplexity_before": eb["perplexity"],
                 "bits_per_token_before": eb["bits_per_token"], "loss_after": after["loss"],
                 "perplexity_after": after["perplexity"], "bits_per_token_after": after["bits_per_token"],
                 "per_example_before": eb["per_example"], "per_example_after": after["per_example"]},
        "forgetting": forgetting,
        "status": run_status(eb["perplexity"], after["perplexity"], outcome),
        "generations": [{"prompt": p, "before": b, "after": a} for p, b, a in
                        zip(data.instructions, before["generations"], generations_after)],
        # relative to the results folder (set-<id>/artifacts/... for a run of other settings), so a results folder can
        # be moved or copied (Drive, a USB stick)
        "artifact": {"path": artifact[0], "bytes": artifact[1]},
        "environment": {"device": env.device_name, "device_kind": env.device, "dtype": env.precision.name,
                        "profile": profile.name, **{k: versions.get(k) for k in VERSION_KEYS}},
    }


REFERENCE_DIR = Path(__file__).resolve().parent.parent / "notebooks" / "reference_results"
BENCH_FILE = "bench.json"  # written by `make bench`; the committed one is in REFERENCE_DIR


@dataclass(frozen=True)
class SettingsSet:
    """The runs of one settings set in a results folder."""

    settings: dict
    folder: Path  # where its results files are: the results folder itself or its set-<id>/
    records: tuple[dict, ...]

    @property
    def id(self) -> str:
        return self.settings["id"]

    @property
    def runs(self) -> list[str]:
        return sorted({r["run_id"] for r in self.records}, key=run_sort_key)

    def describe(self) -> str:
        """'set 1a2b3c4d (profile cpu with MAX_STEPS = 2): 1 run (lora-r8), 1 results file, in .../set-1a2b3c4d'."""
        runs, n = self.runs, len(self.records)
        return (f"set {self.id} ({describe_settings(self.settings)}): {len(runs)} run{'s' if len(runs) > 1 else ''} "
                f"({', '.join(runs)}), {n} results file{'s' if n > 1 else ''}, in {self.folder}")


def _set_order(found: SettingsSet) -> tuple[int, int, bool]:
    # The set shown by default: the most runs, then the most seeds, then the profile's standard settings (then the
    # newest, by a first sort); so a short demo beside a full set never takes its place.
    return (-len(found.runs), -len(found.records), not found.settings["standard"])


def load_sets(directory: Path) -> tuple[list[SettingsSet], list[tuple[str, str]]]:
    """Every valid record in `directory` and its set-<id>/ folders, grouped by settings set (the default one first,
    see _set_order), and every file left out (named relative to `directory`) with its reason."""
    directory = Path(directory)
    folders = [directory] + sorted(p for p in directory.glob(f"{SET_PREFIX}*") if p.is_dir())
    grouped: dict[str, tuple[dict, dict[Path, list[dict]]]] = {}
    left_out = []
    for folder in folders:
        records, rejected = load_all(folder)
        left_out += [(str((folder / name).relative_to(directory)), why) for name, why in rejected]
        for r in records:
            settings = settings_of(r)
            grouped.setdefault(settings["id"], (settings, {}))[1].setdefault(folder, []).append(r)
    sets = []
    for settings, by_folder in grouped.values():
        records = sorted((r for recs in by_folder.values() for r in recs), key=record_sort_key)
        home = max(by_folder, key=lambda f: len(by_folder[f]))
        sets.append(SettingsSet(settings, home, tuple(records)))
    newest_first = sorted(sets, key=lambda found: max(r["finished_at"] for r in found.records), reverse=True)
    return sorted(newest_first, key=_set_order), left_out


@dataclass(frozen=True)
class Loaded:
    """What notebook 05 compares: one settings set, and what else the results folder holds."""

    folder: Path  # the results folder read (artifact paths in the records are relative to it)
    shown: SettingsSet | None  # the set compared (None: no valid run at all)
    others: list[SettingsSet]  # the other sets in the folder, never mixed into the comparison
    left_out: list[tuple[str, str]]
    reference: str | None  # a label when these are the committed reference results, not the folder's

    @property
    def records(self) -> list[dict]:
        return list(self.shown.records) if self.shown else []

    @property
    def set_folder(self) -> Path:
        """Where the shown set's own files go (its comparison figure, its ratings)."""
        return self.shown.folder if self.shown else self.folder


def load_or_reference(directory: Path, settings_set_id: str | None = None) -> Loaded:
    """The runs of one settings set in `directory` (by default the set with the most runs; settings_set_id picks
    another), with the other sets listed; the committed reference set, labelled, when the folder has no valid run at
    all (a fresh Colab runtime, a new clone)."""
    sets, left_out = load_sets(directory)
    if not sets and REFERENCE_DIR.is_dir():
        reference, _ = load_sets(REFERENCE_DIR)
        if reference:
            records = reference[0].records
            first = min(r["finished_at"][:10] for r in records)
            label = (f"make lab, profile {records[0]['environment']['profile']}, {records[0]['environment']['device']}, "
                     f"{first}, in {REFERENCE_DIR}")
            return Loaded(REFERENCE_DIR, reference[0], reference[1:], left_out, label)
    if settings_set_id is not None:
        chosen = [s for s in sets if s.id == settings_set_id]
        if not chosen:
            known = ", ".join(s.id for s in sets) or "none"
            raise ResultsError(f"SETTINGS_SET = {settings_set_id!r}: no such settings set in {directory} (there: "
                               f"{known}). Fix: one of those, or None for the set with the most runs")
        sets = chosen + [s for s in sets if s is not chosen[0]]
    return Loaded(Path(directory), sets[0] if sets else None, sets[1:], left_out, None)


def load_bench(directory: Path | None = None) -> dict | None:
    """The latest `make bench` measurement: `directory`'s, else the committed reference one; None when neither exists."""
    for folder in ([Path(directory)] if directory else []) + [REFERENCE_DIR]:
        path = folder / BENCH_FILE
        if path.exists():
            try:
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
    return None
