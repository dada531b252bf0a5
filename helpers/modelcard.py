"""Share a trained run on the Hugging Face Hub: a model card made from the run's results records (`card`), the folder
that would be uploaded (`write_folder`), and the upload itself (`push`).

Every number in the card comes from the records (or from the export code's `exports` dict), shown through the lab's
own statistics and formatting (helpers.measures, helpers.tables, helpers.formatting), so the card reads exactly like
notebook 05 and the README's reference table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

from .environment import PROFILE_ENV, REPO_ROOT, SEEDS_ENV, write_directory_atomically
from .formatting import format_bytes, format_count, format_interval
from .measures import MEASURES, by_run, change, flags, interval, usable
from .profiles import SEED_POOL
from .results import describe_settings, settings_of
from .tables import markdown, summary_frame

# The README that write_folder writes starts its body with this line: a folder holding it was made here, so
# write_folder may replace it; any other non-empty folder is refused rather than deleted.
MARKER = "<!-- model card written by helpers.modelcard from the lab's results records -->"
# A fine-tune or adapter inherits its base model's license (each model's own Hub card); "other" for a base not listed.
LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0", "TinyLlama/TinyLlama-1.1B-Chat-v1.0": "apache-2.0",
            "openai-community/gpt2": "mit", "EleutherAI/gpt-neo-1.3B": "mit"}
DEFAULT_REPOSITORY = "https://github.com/finetune-lab/finetune-lab"
# The lab's packages, in the order the README's reference line names them.
PACKAGES = ("python", "torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")
# A Hub repo id: "namespace/name", letters, digits, '.', '_' and '-' (huggingface_hub checks the finer rules).
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


# ---------------------------------------------------------------- the card

def _run_records(records: Iterable[Mapping], run_id: str) -> list[dict]:
    """The run's records in seed order; a clear error when there are none or they mix settings sets (which would
    average two different experiments)."""
    records = list(records)
    found = by_run(records).get(run_id, [])
    if not found:
        present = sorted({r["run_id"] for r in records})
        raise ValueError(f"no results record of run {run_id!r} among the {len(records)} given (runs present: "
                         f"{', '.join(present) or 'none'}). Fix: pass the records that notebook 05 reads "
                         "(helpers.results.load_or_reference) and one of those run ids.")
    sets = {settings_of(r)["id"] for r in found}
    if len(sets) > 1:
        raise ValueError(f"the records of {run_id!r} come from {len(sets)} settings sets ({', '.join(sorted(sets))}): "
                         "their numbers are different experiments. Fix: pass one set's records "
                         "(helpers.results.load_sets).")
    return found


def _preset(record: Mapping):
    """The record's model preset, or None for a preset this lab does not define. Imported here: helpers.models loads
    transformers, which only the card needs."""
    from .models import PRESETS

    return PRESETS.get(record["model"]["preset"])


def base_model_id(record: Mapping) -> str | None:
    """The Hub id of the model the run started from. A bundled (offline) preset has none of its own: it names the Hub
    preset of the same model (its name without "-bundled")."""
    from .models import PRESETS

    preset = _preset(record)
    if preset is None:
        return None
    if record["model"]["source"] == "hub":
        return preset.hub_id
    same = PRESETS.get(preset.name.removesuffix("-bundled"))
    return same.hub_id if same is not None else None


def _manifest_hub_id(name: str) -> str | None:
    """The Hub dataset id of a data manifest whose rows come from the Hub, for the card's `datasets:` field."""
    from .manifests import ManifestError, load_manifest

    try:
        manifest = load_manifest(name)
    except (ManifestError, OSError):  # a user's manifest that is no longer there: the card simply names it
        return None
    source = getattr(manifest, "source", None) or {}
    return source.get("id") if source.get("kind") == "hub" else None


def _yaml(value: object) -> str:
    # JSON strings and lists are valid YAML flow scalars: no YAML writer needed, and every value is quoted.
    return json.dumps(value, ensure_ascii=False)


def _front_matter(first: Mapping) -> str:
    lora = first.get("lora") is not None
    tags = ["finetune-lab", "text-generation", "trl", "sft"]
    tags += ["peft", first["method"], "lora"] if lora else ["full-fine-tuning"]
    if first.get("quantization"):
        tags += ["4-bit", "bitsandbytes"]
    lines = ["---"]
    base = base_model_id(first)
    if base:
        lines.append(f"base_model: {_yaml(base)}")
        lines.append(f"base_model_relation: {_yaml('adapter' if lora else 'finetune')}")
    lines.append(f"library_name: {_yaml('peft' if lora else 'transformers')}")
    lines.append("pipeline_tag: text-generation")
    lines.append(f"license: {LICENSES.get(base, 'other')}")
    dataset = _manifest_hub_id(first["data"]["manifest"])
    if dataset:
        lines.append(f"datasets: {_yaml([dataset])}")
    lines.append(f"tags: {_yaml(list(dict.fromkeys(tags)))}")
    lines.append("---")
    return "\n".join(lines)


def _code(text: str, language: str = "") -> str:
    return f"```{language}\n{text}\n```"


def _base_section(first: Mapping) -> str:
    preset = _preset(first)
    name = first["model"]["preset"]
    base = base_model_id(first)
    lines = ["## Base model", ""]
    if preset is None:
        lines.append(f"Preset `{name}` (not one of this lab's presets in helpers/models.py).")
        return "\n".join(lines)
    lines.append(f"Preset `{name}`: {preset.note}")
    if first["model"]["source"] != "hub" and base:
        # The adapter (or fine-tune) was trained on a 4-bit grid dequantized to fp32, not on the checkpoint that
        # base_model names: say so, or a reader would expect the numbers below from the 16-bit weights.
        lines += ["", f"`base_model` names `{base}`, the Hub checkpoint of the same model, not the copy above that "
                  f"the run started from. On the original 16-bit `{base}` the numbers below will differ somewhat; to reproduce "
                  f'them exactly, load the base the lab\'s way: `helpers.models.load_model("{name}", "cpu")`.']
    lines += ["", f"{format_count(first['model']['total_params'])} parameters."]
    return "\n".join(lines)


def _data_section(first: Mapping) -> str:
    data = first["data"]
    lines = ["## Training data", "",
             f"Data manifest `{data['manifest']}` (data_manifests/{data['manifest']}.toml in the lab), fingerprint "
             f"`{data['fingerprint']}`: {data['train_examples']:,} training examples and {data['eval_examples']:,} "
             f"held-out examples (data seed {data['data_seed']}, {data['template']} template). The held-out examples "
             "are the same for every method and seed."]
    forgetting = first.get("forgetting")
    if forgetting:
        lines += ["", f"General text, scored before and after training to measure forgetting: manifest "
                  f"`{forgetting['manifest']}`, {forgetting['tokens']:,} tokens."]
    return "\n".join(lines)


def _method_section(first: Mapping) -> str:
    t = first["training"]
    lines = ["## Method", ""]
    if first.get("lora") is not None:
        lora = first["lora"]
        what = "QLoRA (LoRA on a 4-bit base)" if first.get("quantization") else "LoRA"
        lines += [f"{what}: rank r = {lora['r']}, alpha = {lora['alpha']}, dropout {lora['dropout']}, on "
                  f"{', '.join(f'`{m}`' for m in lora['target_modules'])}. The PEFT `LoraConfig`:", "",
                  _code(json.dumps(lora["config"], indent=2), "json")]
    else:
        lines.append("Full fine-tuning: every weight trains; no LoRA configuration.")
    quantization = first.get("quantization")
    if quantization:
        lines += ["", f"The base was loaded in {quantization['bits']}-bit {quantization['quant_type'].upper()} "
                  f"(double quantization: {'yes' if quantization['double_quant'] else 'no'}, compute dtype "
                  f"{quantization['compute_dtype']}). The bitsandbytes config:", "",
                  _code(json.dumps(quantization["config"], indent=2), "json")]
    params = first["params"]
    lines += ["", f"Trainable parameters: {format_count(params['trainable'])} ({params['trainable_pct']:.3g}% of "
              f"{format_count(params['total'])}).", "",
              f"Trained with TRL's `SFTTrainer`: learning rate {t['learning_rate']:g}, "
              f"optimizer `{t['optimizer']}`, batch size {t['batch_size']}, precision {t['precision']} (trainable "
              "weights kept in fp32)."]
    return "\n".join(lines)


def _budget_section(first: Mapping) -> str:
    t = first["training"]
    return "\n".join(["## Budget", "",
                      f"{t['steps']:,} optimizer steps of {t['batch_size']} examples: {t['tokens']:,} real training "
                      f"tokens per seed ({t['target_tokens']:,} of them targets), the same for every method of the "
                      "lab."])


def _interval_note(recs: list[dict]) -> str:
    n = len(usable(recs) or recs)
    if n >= 2:
        return f"Each measured value is the mean over the {n} seeds ± the half-width of its 95% t-interval."
    found = interval(recs, MEASURES["perplexity after"])
    examples = f" over {found.n} held-out examples" if found is not None and found.method == "bootstrap" else ""
    return (f"One seed: perplexities carry a 95% bootstrap interval{examples}; the other values are single "
            "measurements (n=1).")


def _results_section(recs: list[dict], run_id: str) -> str:
    # summary_frame formats every column as notebook 05 and the README's table do, from the same records.
    row = summary_frame(recs).formatted().loc[run_id]
    first = recs[0]
    env = first["environment"]
    rows = []
    for key in ("perplexity before", "perplexity after"):
        rows.append([MEASURES[key].title, row[key]])
    held_out = change(recs, "perplexity before", "perplexity after")
    if held_out is not None:
        rows.append(["change in held-out perplexity (after − before, paired by seed)", format_interval(held_out, 2)])
    if "general-text after" in row.index:
        rows.append([MEASURES["general-text before"].title, row["general-text before"]])
        rows.append([MEASURES["general-text after"].title, row["general-text after"]])
        general = change(recs, "general-text before", "general-text after")
        if general is not None:
            rows.append(["change in general-text perplexity (after − before, paired by seed)",
                         format_interval(general, 2)])
    if "repeated 3-grams % after" in row.index:
        rows.append([MEASURES["repeated 3-grams % before"].title, row["repeated 3-grams % before"]])
        rows.append([MEASURES["repeated 3-grams % after"].title, row["repeated 3-grams % after"]])
    rows.append([MEASURES["peak memory MiB"].title, row["peak memory MiB"]])
    rows.append([MEASURES["tokens/s"].title, row["tokens/s"]])
    rows.append(["trainable parameters", f"{row['trainable params']} ({row['trainable %']}%)"])
    rows.append(["saved adapter (MiB)" if first.get("lora") is not None else "saved model (MiB)", row["artifact MiB"]])
    lines = ["## Results", "", _interval_note(recs), "", markdown(["measure", "value"], rows, {1})]
    lines += ["", "Perplexity is token-weighted over the held-out answers "
              f"({first['eval']['tokens']:,} target tokens), computed in {first['eval']['precision']}. Peak memory is "
              "that of one measured optimizer step on the same batch for every method and seed; speed is each "
              "seed's upper-quartile step rate in real tokens/s. "
              f"Both were measured on {env['device']}, training in {env['dtype']}, and change with the machine."]
    if "excluded" in row.index and row["excluded"]:
        lines += ["", f"Left out of the means: {row['excluded']} (see the seeds below)."]
    return "\n".join(lines)


def _seeds_section(uploaded: int | None, recs: list[dict]) -> str:
    keys = ["perplexity after", "general-text after", "peak memory MiB", "tokens/s"]
    keys = [k for k in keys if any(MEASURES[k].value(r) is not None for r in recs)]
    header = ["seed", *(MEASURES[k].title for k in keys), "artifact", "flag"]
    rows = []
    for r in recs:
        # Each seed's own value with the decimals its measure is shown with everywhere in the lab.
        values = [format_interval(MEASURES[k].value(r), MEASURES[k].decimals) for k in keys]
        artifact = f"`{r['artifact']['path']}` ({format_bytes(r['artifact']['bytes'])})"
        rows.append([str(r["seed"]), *values, artifact, ", ".join(flags(r)) or "—"])
    return "\n".join(["## Seeds", "", f"{len(recs)} training seed{'s' if len(recs) != 1 else ''} (adapter "
                      "initialisation, data order, dropout); the data and held-out set are the same for each."
                      + (f" The uploaded weights are seed {uploaded}'s." if uploaded is not None else ""), "",
                      markdown(header, rows, set(range(1, len(keys) + 1)))])


def _exports_section(exports: Mapping | None, run_id: str) -> str:
    if not exports:
        return ""
    kinds = [k for k, v in exports.items() if isinstance(v, Mapping) and "file" in v]
    merged = exports.get("merged_perplexity")
    # The decimals of helpers.export's own report: a GGUF file's perplexity differs from the merged model's in the
    # third or fourth decimal, which two decimals would hide.
    rows = []
    if merged is not None:
        rows.append(["merged model (PyTorch)", "—", "—", format_interval(merged, 4), "—", "—", "—", "—"])
    for kind in kinds:
        f = exports[kind]
        gap = "—" if f.get("perplexity_gap") is None else f"{100 * f['perplexity_gap']:+.3f}%"
        met = {True: "met", False: "not met"}.get(f.get("within_bounds"), "—")
        rows.append([f"`{f['file']}`", kind, format_bytes(f["bytes"]), format_interval(f["perplexity"], 4), gap,
                     f"{format_interval(100 * f['agreement'], 2)}%", f"{f['greedy_same']} of {f['prompts']}", met])
    tokens = exports.get("eval_tokens")
    over = f" ({tokens:,} target tokens)" if tokens else ""
    lines = ["## GGUF files (llama.cpp, Ollama)", "",
             f"The merged model exported to GGUF and read back, each file compared with the merged model on the whole "
             f"held-out set{over}: perplexity, the share of positions where both predict the same next token, and how "
             "many of the lab's greedy answers are identical.", "",
             markdown(["file", "type", "size", "held-out perplexity", "vs merged model", "next-token agreement",
                     "greedy answers identical", "bounds"], rows, {2, 3, 4, 5, 6})]
    commands = run_commands(exports, run_id)
    lines += ["", "Run it locally (llama.cpp, or Ollama with the Modelfile beside the GGUF file):", "",
              _code("\n".join(commands), "bash")]
    return "\n".join(lines)


def run_commands(exports: Mapping, run_id: str) -> list[str]:
    """How to run the exported files, for the card and notebook 06: llama.cpp chats with the template stored in the
    file; Ollama reads the Modelfile. Greedy, like the lab's answers."""
    kinds = [k for k, v in exports.items() if isinstance(v, Mapping) and "file" in v]
    commands = [f"llama-cli -m {exports[kind]['file']} --temp 0" for kind in kinds]
    if exports.get("modelfile"):
        name = f"finetune-lab-{run_id}"
        commands += [f"ollama create {name} -f {exports['modelfile']}",
                     f'ollama run {name} "What does the Python module heapq do?"']
    return commands


def _usage_section(first: Mapping) -> str:
    base = base_model_id(first) or "<the base model>"
    if first.get("lora") is not None:
        # PeftModel on an explicit base: the reader sees which base it needs (the uploaded adapter_config.json names
        # the same Hub id, so AutoPeftModelForCausalLM works too).
        code = (f'from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
                f'base = AutoModelForCausalLM.from_pretrained("{base}")\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{base}")\n'
                'model = PeftModel.from_pretrained(base, "<this repository>")  # model.merge_and_unload() to merge')
    else:
        code = ('from transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
                'model = AutoModelForCausalLM.from_pretrained("<this repository>")\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{base}")  # the fine-tune keeps the base\'s tokenizer')
    if first["data"]["template"] == "chat":
        code += ('\n\nmessages = [{"role": "user", "content": "What is a Python dictionary?"}]\n'
                 'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", '
                 'return_dict=True)\n'
                 'print(tokenizer.decode(model.generate(**inputs, max_new_tokens=128)[0]))')
    lines = ["## How to use", "", _code(code, "python")]
    if first.get("quantization"):
        lines += ["", "The adapter was trained on the 4-bit base: load the base with the bitsandbytes config above (on "
                  "a GPU) to match the numbers here; on the 16-bit base it gives close but not identical outputs."]
    lines += ["", "A teaching artifact: a small model trained briefly to compare fine-tuning methods. Its answers can "
              "be wrong or repetitive; do not rely on them."]
    return "\n".join(lines)


def _environment_section(recs: list[dict]) -> str:
    envs = [r["environment"] for r in recs]
    rows = []
    for name in PACKAGES:
        # Each version once; two only if the seeds ran under different packages (their fingerprints then differ).
        versions = list(dict.fromkeys(str(e.get(name)) for e in envs if e.get(name)))
        if versions:
            rows.append([name, ", ".join(versions)])
    devices = ", ".join(dict.fromkeys(f"{e['device']}, {e['dtype']}" for e in envs))
    return "\n".join(["## Environment", "", f"Trained on {devices}; lab code version `{recs[0]['code_version']}`.", "",
                      markdown(["package", "version"], rows)])


def repository_url() -> str:
    """The lab's repository, from pyproject.toml (the one place it is written; a test keeps the setup cell equal)."""
    try:
        project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
        return project["project"]["urls"]["Repository"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return DEFAULT_REPOSITORY


def reproduce_command(recs: list[dict]) -> str:
    """The shell lines that rerun these seeds with `make lab` from a fresh clone of the lab."""
    seeds = [r["seed"] for r in recs]
    # $LAB_SEEDS=N takes the first N of SEED_POOL: the shorter form when it names exactly these seeds.
    count = len(seeds)
    seeds_value = str(count) if sorted(seeds) == sorted(SEED_POOL[:count]) else ",".join(map(str, seeds))
    first = recs[0]
    profile = settings_of(first)["profile"]
    prefix = ""
    # The Makefile sets HF_HUB_OFFLINE=1; a run that read the Hub (the gpu profile's model and data) needs it off.
    hub = first["model"]["source"] == "hub" or _manifest_hub_id(first["data"]["manifest"]) is not None or (
        first.get("forgetting") and _manifest_hub_id(first["forgetting"]["manifest"]) is not None)
    if hub:
        prefix = "HF_HUB_OFFLINE=0 "
    url = repository_url()
    folder = url.rstrip("/").rsplit("/", 1)[-1]
    return (f"git clone {url} && cd {folder}\n"
            f"{prefix}{PROFILE_ENV}={profile} {SEEDS_ENV}={seeds_value} make lab")


def _reproduce_section(recs: list[dict], run_id: str) -> str:
    first = recs[0]
    settings = settings_of(first)
    lines = ["## Reproduce", "", f"Made by the fine-tuning lab ({repository_url()}), {describe_settings(settings)}. "
             f"From a clone of the lab, `make lab` trains every run of the lab, this one ({run_id}) among them, and "
             f"writes `results/{run_id}-seed<n>.json` for each seed:", "", _code(reproduce_command(recs), "bash")]
    if not settings["standard"]:
        lines += ["", "These runs changed the profile's settings: set the same in the *Parameters* cell of notebooks "
                  "00–03 and run them (`make lab` runs the profile's standard settings)."]
    if first["environment"].get("device_kind") == "cuda":
        lines += ["", "They ran on a CUDA GPU: run them on one too (on Colab, the notebooks' badges in the README)."]
    return "\n".join(lines)


def card(records: list[dict], run_id: str, exports: dict | None = None, seed: int | None = None) -> str:
    """The README.md of the run's Hub repository: YAML front matter, then base model, data, method, budget, results
    (mean and 95% interval over seeds), seeds, exported GGUF files (when `exports` is given), usage, environment and
    the command that reproduces it."""
    recs = _run_records(records, run_id)
    first = recs[0]
    what = "LoRA adapter" if first.get("lora") is not None else "full fine-tune"
    if first.get("quantization"):
        what = "QLoRA adapter"
    title = [f"# {run_id}: a {what} of {base_model_id(first) or first['model']['preset']}", "", MARKER, "",
             f"One run of the fine-tuning lab, which trains one model on the same data, budget, optimizer and seeds "
             f"in five ways (full fine-tuning, LoRA r = 8, 16, 32, QLoRA) and four variants of LoRA r = 16 (DoRA, "
             f"rsLoRA, PiSSA, LoRA+), and compares what each costs and buys. "
             f"This card's numbers are read from the run's {len(recs)} results record"
             f"{'s' if len(recs) != 1 else ''}."]
    sections = [_front_matter(first), "\n".join(title), _base_section(first), _data_section(first),
                _method_section(first), _budget_section(first), _results_section(recs, run_id), _seeds_section(seed, recs),
                _exports_section(exports, run_id), _usage_section(first), _environment_section(recs),
                _reproduce_section(recs, run_id)]
    return "\n\n".join(s for s in sections if s) + "\n"


# ---------------------------------------------------------------- the folder

def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (a GGUF file is hundreds of MB: no second copy on the same disk), else a copy."""
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(source, target)


def _replaceable(folder: Path, extras: list[Path]) -> bool:
    """May write_folder replace what is at `folder`? Only nothing, an empty folder, one it wrote before, or a folder
    holding only the extra files themselves: write_directory_atomically deletes the old folder, so anything else
    (a results folder typed by mistake) is refused rather than lost."""
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
    readme = folder / "README.md"
    if readme.is_file() and MARKER in readme.read_text(encoding="utf-8", errors="replace"):
        return True
    inside = {p.resolve() for p in folder.iterdir()}
    return inside <= {p.resolve() for p in extras}


def write_folder(records: list[dict], run_id: str, artifact: Path, folder: Path, exports: dict | None = None,
                 extra_files: list[Path] = ()) -> Path:
    """The folder that `push` uploads: the artifact's files (an adapter, or a full model), the extra files (GGUF
    files, a Modelfile) and README.md, the card. Built in a hidden sibling and renamed into place, so a failure
    leaves no half-written folder. Returns `folder`."""
    artifact, folder = Path(artifact), Path(folder)
    uploaded = [r["seed"] for r in _run_records(records, run_id) if Path(r["artifact"]["path"]).name == artifact.name]
    text = card(records, run_id, exports, uploaded[0] if uploaded else None)  # a bad record fails before any write
    if not artifact.is_dir():
        raise FileNotFoundError(f"artifact {artifact} is not a folder. Fix: pass the run's saved adapter or model "
                                "folder (results/<record['artifact']['path']>, Lab.artifact_path(record)).")
    extras = [Path(p) for p in extra_files]
    for path in extras:
        if not path.is_file():
            raise FileNotFoundError(f"extra file {path} does not exist. Fix: export it first, or leave it out.")
    names = [p.name for p in extras]
    clash = sorted({n for n in names if names.count(n) > 1 or n == "README.md" or (artifact / n).exists()})
    if clash:
        raise ValueError(f"extra files would overwrite each other, the artifact's files or the card: "
                         f"{', '.join(clash)}. Fix: rename them.")
    a, f = artifact.resolve(), folder.resolve()
    if a == f or a.is_relative_to(f) or f.is_relative_to(a):
        raise ValueError(f"folder {folder} and artifact {artifact} overlap: writing one would replace the other. "
                         "Fix: choose a folder outside the artifact, e.g. results/hub/<run>-seed<n>.")
    if not _replaceable(folder, extras):
        raise ValueError(f"{folder} exists and was not written by write_folder: it would be replaced. Fix: choose a "
                         "new or empty folder.")
    # PEFT writes a README.md of its own into the adapter folder: the card replaces it, so it is not copied.
    files = sorted(p for p in artifact.rglob("*") if p.is_file() and p.relative_to(artifact) != Path("README.md"))

    def save(staging: Path) -> None:
        for source in files:
            target = staging / source.relative_to(artifact)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)  # copied, never linked: the run's own artifact must stay as it was saved
        for source in extras:
            _link_or_copy(source, staging / source.name)
        (staging / "README.md").write_text(text, encoding="utf-8")
        _point_at_hub_base(staging / "adapter_config.json", base_model_id(_run_records(records, run_id)[0]))

    return write_directory_atomically(folder, save)


def _point_at_hub_base(config: Path, hub_id: str | None) -> None:
    """PEFT saved the base as the local folder it was loaded from (the lab's cache for the bundled model), which no
    one downloading the adapter has: the uploaded copy names the base's Hub id instead, so that
    AutoPeftModelForCausalLM.from_pretrained("<repo>") works. The run's own artifact is left as it was saved."""
    if hub_id is None or not config.is_file():
        return
    saved = json.loads(config.read_text())
    if Path(str(saved.get("base_model_name_or_path", ""))).is_absolute():
        saved["base_model_name_or_path"] = hub_id
        config.write_text(json.dumps(saved, indent=2) + "\n")


# ---------------------------------------------------------------- the push

def check_repo_id(repo_id: object) -> str:
    """`repo_id` when it is a Hub model id "user/name", else a ValueError naming the value and the fix."""
    fix = ('Fix: write it as "your-user-name/model-name" (or "an-organisation/model-name"), letters, digits, '
           "'-', '_' and '.' only")
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id):
        raise ValueError(f"repo_id = {repo_id!r} is not a Hub repository id of the form \"user/name\". {fix}.")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)  # the Hub's finer rules ('--', '..', length), checked locally
    except HFValidationError as err:
        raise ValueError(f"repo_id = {repo_id!r} is not a valid Hub repository id \"user/name\" ({err}). "
                         f"{fix}.") from None
    return repo_id


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's 'could not connect' errors: huggingface_hub 1.x+ uses httpx (named httpx2 in newer
    releases), older releases requests; whichever is installed."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests.exceptions", ("ConnectionError", "Timeout"))):
        try:
            imported = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        found += [getattr(imported, n) for n in names if hasattr(imported, n)]
    return tuple(found)


def _why_not(err: BaseException, repo_id: str) -> str | None:
    """'<problem>; <fix>' when `err` means the Hub cannot be reached or refused our credentials, else None (a bug or
    an unexpected answer, which push raises)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    namespace = repo_id.split("/")[0]
    if isinstance(err, OfflineModeIsEnabled):
        return ("the Hub is not reachable from here (offline mode: HF_HUB_OFFLINE=1); run where the Hub is reachable "
                "with HF_HUB_OFFLINE unset")
    if isinstance(err, LocalTokenNotFoundError):
        return "no Hugging Face token (401); log in with `hf auth login`, set HF_TOKEN, or pass token=..."
    if isinstance(err, HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 401:
            return ("the Hub refused the token (401: missing or invalid); log in with `hf auth login`, set HF_TOKEN, "
                    "or pass a valid token=...")
        if status == 403:
            return (f"the token may not write to {namespace!r} (403); use a token with write access "
                    "(https://huggingface.co/settings/tokens) and a namespace it owns")
        if status == 429 or (status is not None and status >= 500):
            return f"the Hub did not serve the request ({status}: busy or down); try again later"
        return None
    if isinstance(err, _transport_errors()):
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        return f"cannot connect to the Hub at {constants.ENDPOINT} ({reason}); check the network or HF_ENDPOINT"
    return None


def push(folder: Path, repo_id: str, token: str | None = None, private: bool = False) -> dict:
    """Upload `folder` (from write_folder) to the Hub model repository `repo_id`, creating it if needed.

    Returns {"pushed": True, "repo_id", "url", "folder"}; where the Hub is offline, unreachable or refuses the token,
    {"pushed": False, "repo_id", "folder", "error"} with the problem and the fix instead of raising, so a notebook
    run offline still finishes. The folder is only read, never changed."""
    check_repo_id(repo_id)  # before any network call: a typo fails here, not as a confusing 404 from the Hub
    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(f"{folder} holds no README.md (model card). Fix: build it first with "
                                "helpers.modelcard.write_folder(records, run_id, artifact, folder).")
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload from the fine-tuning lab")
    except Exception as err:  # noqa: BLE001 -- classified below; anything unexpected is raised again
        why = _why_not(err, repo_id)
        if why is None:
            raise
        return {"pushed": False, "repo_id": repo_id, "folder": str(folder),
                "error": f"not pushed to {repo_id}: {why}. The folder {folder} is complete: upload it later with "
                         f"`hf upload {repo_id} {folder}` or from Colab with PUSH_TO_HUB"}
    return {"pushed": True, "repo_id": repo_id, "url": str(url), "folder": str(folder)}


__all__ = ["MARKER", "base_model_id", "card", "check_repo_id", "push", "repository_url", "reproduce_command",
           "write_folder"]
