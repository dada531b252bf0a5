"""Budgets: one profile fixes model, data, token budget, evaluation and learning rates for every method, so runs
compare fairly. Overrides from a parameters cell are checked here, before anything heavy starts."""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass, fields, replace

import torch

from .environment import PROFILE_ENV, SEEDS_ENV, hub_offline
from .specs import by_rate_key


class ProfileError(ValueError):
    pass


@dataclass(frozen=True)
class Profile:
    name: str
    model: str  # preset name in helpers.models.PRESETS
    dataset: str  # manifest name in data_manifests/
    train_examples: int  # cap on training rows (after the eval split)
    eval_examples: int  # cap on held-out rows; the same rows for every method and seed
    max_length: int  # tokens per example; longer examples are dropped, never cut (a cut loses the end of turn)
    batch_size: int  # examples per optimizer step (packed into one row, no padding)
    max_steps: int  # optimizer steps: batch_size * max_steps examples, identical for every method
    warmup_steps: int
    eval_batch_tokens: int  # tokens per packed evaluation forward pass
    generation_tokens: int  # greedy tokens per before/after generation
    generation_prompts: int  # how many of the manifest's fixed prompts to generate for
    logging_steps: int
    learning_rates: dict[str, float]  # per method, chosen by the learning-rate sweep (python -m helpers.tools.sweep)
    forgetting: str | None  # a text manifest far from the training data, None to skip
    forgetting_tokens: int  # target tokens of general text scored before and after training
    checkpoint_steps: int  # save a resumable checkpoint every this many steps (0: never)
    data_seed: int = 0  # picks the training sample and the held-out set: fixed, so seeds change only training
    seeds: tuple[int, ...] = (42,)  # training seeds (adapter init, data order, dropout); $LAB_SEEDS=N takes N of SEED_POOL
    validation_examples: int = 0  # carved from the training side for the learning-rate sweep, never the held-out set

    def learning_rate(self, key: str) -> float:
        """The rate for a RunSpec's rate_key: "full", "lora", a LoRA variant's own where the profile has one (they
        were swept separately), else LoRA's (QLoRA trains the same adapters)."""
        return by_rate_key(self.learning_rates, key)

    def rate_for(self, spec) -> float:
        """The rate a RunSpec trains with: its own learning_rate, else this profile's for its rate_key."""
        return spec.learning_rate or self.learning_rate(spec.rate_key)

    @property
    def learning_rate_source(self) -> str:
        """Where the rates came from, for the notebooks to print: only the offline profiles' were swept."""
        return LEARNING_RATE_SOURCES.get(self.name, "set by hand in this profile")


SEED_POOL = (42, 1, 2, 3, 4, 5, 6, 7, 8, 9)
_SWEPT = ("the best of `make sweep` on a validation split (notebooks/reference_results/sweep.json; the LoRA variants': "
          "sweep-variants.json)")
LEARNING_RATE_SOURCES = {
    "smoke": "the cpu profile's, unswept at this budget (the smoke profile only tests that the code runs)",
    "cpu": _SWEPT,
    "gpu": "common starting points, not yet swept (no GPU here): `python -m helpers.tools.sweep --profile gpu` on a T4",
}

# The cpu profile's swept rates (notebooks/reference_results/): full and LoRA from sweep.json (LoRA's the same for r=8
# and r=32), LoRA r16's variants from sweep-variants.json (each changes the step: rsLoRA scales it 4x at r=16, PiSSA's
# adapters start large, LoRA+'s rate is A's with B at 16x).
CPU_RATES = {"full": 2e-4, "lora": 5e-3, "dora": 5e-3, "rslora": 1e-3, "pissa": 5e-4, "loraplus": 5e-4}

PROFILES: dict[str, Profile] = {
    # Tests: the real bundled model, a handful of steps, seconds per run.
    "smoke": Profile("smoke", "smollm2-135m-bundled", "python_docs", train_examples=8, eval_examples=6, max_length=128,
                     batch_size=2, max_steps=2, warmup_steps=0, eval_batch_tokens=512, generation_tokens=8,
                     generation_prompts=1, logging_steps=1, learning_rates=dict(CPU_RATES),
                     forgetting="vital_articles", forgetting_tokens=200, checkpoint_steps=0, validation_examples=4),
    # The offline lab on a 2-core CPU: about a minute of training per method. Learning rates: the best of `make sweep`
    # on the validation split (CPU_RATES). Evaluation packs of 512 tokens: larger
    # packs spend more on attention across examples that the mask then discards.
    "cpu": Profile("cpu", "smollm2-135m-bundled", "python_docs", train_examples=120, eval_examples=172, max_length=192,
                   batch_size=4, max_steps=30, warmup_steps=3, eval_batch_tokens=512, generation_tokens=96,
                   generation_prompts=3, logging_steps=2, learning_rates=dict(CPU_RATES),
                   forgetting="vital_articles", forgetting_tokens=3000, checkpoint_steps=10, validation_examples=40),
    # Colab T4: the Hub model at full precision and a Hub dataset, minutes per method. Its learning rates have not
    # been swept (no GPU here): `python -m helpers.tools.sweep --profile gpu` on a T4 chooses them the same way.
    "gpu": Profile("gpu", "smollm2-135m", "alpaca_cleaned", train_examples=4000, eval_examples=300, max_length=512,
                   batch_size=16, max_steps=200, warmup_steps=10, eval_batch_tokens=8192, generation_tokens=96,
                   generation_prompts=3, logging_steps=10, learning_rates={"full": 5e-5, "lora": 3e-4},
                   forgetting="wikitext2", forgetting_tokens=20000, checkpoint_steps=50, validation_examples=200),
}

# Settings a parameters cell may override, with the smallest sensible value (a typo like 0 or -1 fails here).
MINIMUM = {"train_examples": 1, "eval_examples": 1, "max_length": 16, "batch_size": 1, "max_steps": 1,
           "warmup_steps": 0, "eval_batch_tokens": 16, "generation_tokens": 1, "generation_prompts": 0,
           "logging_steps": 1, "forgetting_tokens": 1, "checkpoint_steps": 0, "data_seed": 0, "validation_examples": 0}
# ... and the largest (beyond these a typo such as 3000000 steps or a 10**6-token example is likelier than intent).
MAXIMUM = {"max_length": 32768, "batch_size": 4096, "max_steps": 1_000_000, "generation_tokens": 4096,
           "data_seed": 2**32 - 1}
# The names a parameters cell uses for the settings it passes to Lab(...).
CELL_NAMES = {"model": "MODEL_PRESET", "dataset": "DATASET", "max_steps": "MAX_STEPS", "seeds": "SEEDS"}
MAX_SEED = 2**32 - 1  # numpy's seed range (transformers.set_seed seeds numpy too)


def auto_profile_name() -> str:
    """$LAB_PROFILE, else `gpu` on a CUDA machine that may use the Hub, else `cpu`."""
    chosen = os.environ.get(PROFILE_ENV)
    if chosen:
        return chosen
    return "gpu" if torch.cuda.is_available() and not hub_offline() else "cpu"


def _label(name: str) -> str:
    return CELL_NAMES.get(name, name)


def _is_whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _not_whole(label: str, value: object, example: object) -> tuple[str, str]:
    """(what is wrong, how to fix) for a value that should be a whole number."""
    if isinstance(value, str):
        digits = value.strip().replace("_", "")
        if digits.lstrip("-").isdigit():
            return "is text (in quotes), not a number", f"write {label} = {int(digits)} without quotes"
        return "is text, not a whole number", f"write a whole number without quotes, e.g. {label} = {example}"
    if isinstance(value, bool):
        return "is True/False, not a whole number", f"write a whole number, e.g. {label} = {example}"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return "is a decimal number", f"write {label} = {int(value)} (a whole number, no decimal point)"
        return "is not a whole number", f"write a whole number, e.g. {label} = {example}"
    if isinstance(value, (list, tuple, set, dict)):
        return f"is a {type(value).__name__}, not one number", f"write one whole number, e.g. {label} = {example}"
    return f"is a {type(value).__name__}, not a whole number", f"write a whole number, e.g. {label} = {example}"


def _check_manifest(name: str, value: object, where: str) -> None:
    """The manifest exists and parses (a ManifestError naming the file and field otherwise) and suits the setting."""
    from .manifests import load_manifest

    setting = _label(name)
    manifest = load_manifest(value, setting)
    if name == "dataset" and manifest.format == "text":
        raise ProfileError(f"{setting} = {value!r}: is a 'text' manifest (plain text, used to measure forgetting), "
                           "not instruction/response pairs to fine-tune on. Fix: use an 'instruction' or 'chat' "
                           "manifest, e.g. DATASET = \"python_docs\" (offline) or \"alpaca_cleaned\" (Hub)")
    if name == "forgetting" and manifest.format != "text":
        raise ProfileError(f"forgetting = {value!r}: has format = {manifest.format!r}; forgetting is measured on "
                           "plain text. Fix: use a 'text' manifest (vital_articles offline, wikitext2 on Colab), or "
                           "None to skip")
    if manifest.source["kind"] == "file" and not manifest.data_path().is_file():
        raise ProfileError(f"{setting} = {value!r}: {manifest.path.name} [source.path] {manifest.data_path()} does "
                           "not exist. Fix: point source.path at your .json or .jsonl file (relative paths are "
                           "relative to the manifest)")


def _check_value(name: str, value: object, where: str, example: object = None) -> None:
    label = _label(name)
    if name in MINIMUM:
        example = example if _is_whole(example) else MINIMUM[name] + 1
        if not _is_whole(value):
            problem, fix = _not_whole(label, value, example)
            raise ProfileError(f"{where}: {label} = {value!r} {problem}. Fix: {fix}")
        if value < MINIMUM[name]:
            raise ProfileError(f"{where}: {label} = {value} is too small (the least that makes sense is "
                               f"{MINIMUM[name]}). Fix: use e.g. {label} = {max(example, MINIMUM[name])}, or None for "
                               "the profile's value")
        if name in MAXIMUM and value > MAXIMUM[name]:
            raise ProfileError(f"{where}: {label} = {value} is implausibly large (at most {MAXIMUM[name]}). Fix: use "
                               f"e.g. {label} = {example}, or None for the profile's value")
    elif name == "model":
        from .models import get_preset

        try:
            get_preset(value)
        except ValueError as err:
            raise ProfileError(str(err)) from None
    elif name == "dataset":
        _check_manifest(name, value, where)
    elif name == "forgetting":
        if value is not None:
            _check_manifest(name, value, where)
    elif name == "learning_rates":
        from .specs import VARIANTS

        if (not isinstance(value, dict) or not {"full", "lora"} <= set(value)
                or not set(value) <= {"full", "lora", *VARIANTS}):
            raise ProfileError(f"{where}: learning_rates = {value!r} must name a rate for 'full' and 'lora' (QLoRA "
                               f"uses LoRA's), and may name one for each LoRA variant ({', '.join(VARIANTS)}; "
                               "without one a variant uses LoRA's). Fix: learning_rates = {'full': 5e-5, 'lora': 3e-4}")
        for method, lr in value.items():
            if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or not 0 < lr < 1:
                raise ProfileError(f"{where}: learning_rates[{method!r}] = {lr!r} must be a number between 0 and 1 "
                                   "(typical: 1e-5 to 1e-3). Fix: e.g. learning_rates = {'full': 5e-5, 'lora': 3e-4}")


def check_seeds(seeds: object, label: str = "SEEDS", from_env: bool = False) -> tuple[int, ...]:
    """SEEDS from a parameters cell (or a profile): a count (3 -> the first three of SEED_POOL) or a list of seeds."""
    pool = f"the first N of {list(SEED_POOL)}"
    if _is_whole(seeds):
        if not 1 <= seeds <= len(SEED_POOL):
            single = (f"; for the single seed {seeds} write {label} = [{seeds}]"
                      if seeds > len(SEED_POOL) and not from_env else "")
            raise ProfileError(f"{label} = {seeds}: a count of seeds must be from 1 to {len(SEED_POOL)} ({pool})"
                               f"{single}. Fix: {label} = 1 for one run, {label} = 3 for three, or a list of seeds "
                               "such as [42, 1, 2]")
        return SEED_POOL[:int(seeds)]
    if isinstance(seeds, str):
        text = seeds.strip()
        fix = (f"{label} = {int(text)} (no quotes)" if text.isdigit()
               else f"{label} = [{text.strip('[]()')}] (a list, no quotes)" if text and
               all(t.strip().isdigit() for t in text.strip("[]()").split(","))
               else f"{label} = 3 (a count) or {label} = [42, 1, 2] (a list)")
        raise ProfileError(f"{label} = {seeds!r}: is text, not a count or a list of seeds. Fix: {fix}")
    if not isinstance(seeds, (list, tuple, range)):
        raise ProfileError(f"{label} = {seeds!r}: is a {type(seeds).__name__}, not a count or a list of seeds. Fix: "
                           f"{label} = 3 (a count) or {label} = [42, 1, 2] (a list)")
    if len(seeds) == 0:
        raise ProfileError(f"{label} = {seeds!r}: is empty, so nothing would run. Fix: {label} = [42] (or None for "
                           "the profile's seed)")
    for seed in seeds:
        if not _is_whole(seed) or not 0 <= seed <= MAX_SEED:
            what = "is not a whole number" if not _is_whole(seed) else f"is outside 0..{MAX_SEED}"
            raise ProfileError(f"{label} = {list(seeds)!r}: the seed {seed!r} {what}. Fix: use whole numbers without "
                               f"quotes, e.g. {label} = [42, 1, 2]")
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        distinct = list(dict.fromkeys(int(s) for s in seeds))
        raise ProfileError(f"{label} = {list(seeds)!r}: repeats the seed(s) {repeated}; a repeated seed is the same "
                           f"run again, not one more sample. Fix: {label} = {distinct}, or a count such as "
                           f"{label} = {len(seeds)} for distinct seeds")
    return tuple(int(s) for s in seeds)


def check(profile: Profile, where: str = "profile") -> Profile:
    """Every setting on its own, then the settings that are fine one by one but not together."""
    for f in fields(Profile):
        if f.name != "seeds":
            _check_value(f.name, getattr(profile, f.name), where)
    check_seeds(profile.seeds, "seeds" if where == "profile" else "SEEDS")
    if profile.warmup_steps >= profile.max_steps:
        raise ProfileError(f"{where}: warmup_steps = {profile.warmup_steps} is not below MAX_STEPS = "
                           f"{profile.max_steps}, so the learning rate would never reach its value. Fix: MAX_STEPS = "
                           f"{profile.warmup_steps + 1} or more, or add warmup_steps={profile.max_steps // 10} to "
                           "helpers.Lab(...)")
    if profile.batch_size > profile.train_examples:
        raise ProfileError(f"{where}: batch_size = {profile.batch_size} is more than train_examples = "
                           f"{profile.train_examples}, so no step gets a full batch. Fix: add batch_size="
                           f"{profile.train_examples} or train_examples={profile.batch_size * 10} to helpers.Lab(...)")
    from .models import PRESETS  # lazy: profiles stays importable without transformers' model classes

    context = PRESETS[profile.model].context if profile.model in PRESETS else None
    if context and profile.max_length > context:
        raise ProfileError(f"{where}: max_length = {profile.max_length} is longer than MODEL_PRESET = "
                           f"{profile.model!r} can read ({context} tokens). Fix: max_length={min(context, 512)} "
                           f"(at most {context})")
    if profile.eval_batch_tokens < profile.max_length:
        raise ProfileError(f"{where}: eval_batch_tokens = {profile.eval_batch_tokens} cannot hold one example of "
                           f"max_length = {profile.max_length} tokens. Fix: add eval_batch_tokens="
                           f"{profile.max_length * 8} to helpers.Lab(...)")
    return profile


def seeds_from_env(default: tuple[int, ...]) -> tuple[int, ...]:
    """$LAB_SEEDS: a count (3 -> the first three of SEED_POOL) or a list (42,1,2)."""
    raw = os.environ.get(SEEDS_ENV, "").strip()
    if not raw:
        return default
    label = f"${SEEDS_ENV}"
    parts = [x for x in re.split(r"[\s,;]+", raw.strip("[]() ")) if x]
    if not parts or not all(x.isdigit() for x in parts):
        raise ProfileError(f"{label} = {raw!r}: is neither a count nor a list of seeds. Fix: export {SEEDS_ENV}=3 "
                           f"(the first three of {list(SEED_POOL)}) or {SEEDS_ENV}=42,1,2, or unset it")
    values = [int(x) for x in parts]
    try:
        return check_seeds(values[0] if len(values) == 1 else values, label, from_env=True)
    except ProfileError as err:  # the fix names the shell variable, not the notebook's
        problem = str(err).split(". Fix:")[0]
        raise ProfileError(f"{problem}. Fix: export {SEEDS_ENV}=3 (a count from 1 to {len(SEED_POOL)}) or "
                           f"{SEEDS_ENV}=42,1,2 (distinct seeds), or unset it") from None


def check_profile_name(name: object, label: str = "PROFILE") -> str:
    if not isinstance(name, str) or name not in PROFILES:
        from .manifests import did_you_mean

        hint = did_you_mean(name, PROFILES) if isinstance(name, str) else " (a profile is a name, in quotes)"
        raise ProfileError(f"{label} = {name!r}: unknown profile{hint}. Fix: choose one of: {', '.join(PROFILES)} "
                           "(or None to pick by machine)")
    return name


def get_profile(name: str | None = None, seeds: int | list[int] | tuple[int, ...] | None = None,
                **overrides) -> Profile:
    """The named (or auto-chosen) profile; overrides whose value is None keep the profile's value.

    `seeds`: a count (3 -> the first three of SEED_POOL), a list of seeds, or None for $LAB_SEEDS, else the profile's.
    Every problem is raised here, before anything heavy starts, naming the setting and the fix.
    """
    from .manifests import did_you_mean

    label = "PROFILE" if name is not None else f"${PROFILE_ENV}"
    name = check_profile_name(auto_profile_name() if name is None else name, label)
    settable = sorted({f.name for f in fields(Profile)} - {"name", "seeds"})
    for key in sorted(set(overrides) - set(settable)):
        raise ProfileError(f"Lab(..., {key}=...): {key!r} is not a profile setting{did_you_mean(key, settable)}. "
                           f"Fix: use one of: {', '.join(settable)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    base = PROFILES[name]
    for key, value in given.items():
        _check_value(key, value, "parameters cell", getattr(base, key))
    given = {k: int(v) if _is_whole(v) else v for k, v in given.items()}  # numpy integers become plain ints
    profile = replace(base, **given)
    chosen = seeds_from_env(profile.seeds) if seeds is None else check_seeds(seeds)
    changed = ", ".join(f"{_label(k)} = {v!r}" for k, v in given.items())
    return check(replace(profile, seeds=chosen), f"profile {name!r}" + (f" with {changed}" if changed else ""))


def check_flag(label: str, value: object) -> bool:
    """FORCE, USE_DRIVE and other switches: True or False (1 and 0 are read as such; text is refused)."""
    if isinstance(value, bool):
        return value
    if _is_whole(value) and value in (0, 1):
        return bool(value)
    fix = (f"{label} = {value.strip().capitalize()} (no quotes)" if isinstance(value, str)
           and value.strip().lower() in ("true", "false") else f"{label} = True or {label} = False")
    raise ProfileError(f"{label} = {value!r}: must be True or False. Fix: {fix}")


__all__ = ["PROFILES", "Profile", "ProfileError", "SEED_POOL", "auto_profile_name", "check", "check_flag",
           "check_profile_name", "check_seeds", "get_profile"]
