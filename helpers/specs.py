"""Run specs: full fine-tuning, LoRA and QLoRA as data. A QLoRA spec is a LoRA spec plus one quantization line."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

LORA_ALPHA = 16  # fixed across ranks (see lora()); the learning rates in the profiles were swept with it
LORA_DROPOUT = 0.0  # measured: dropout copies every adapted layer's input (time and memory) and 30-200 steps need no regulariser
OPTIMIZERS = ("adamw_torch", "paged_adamw_8bit")
METHODS = ("full", "lora", "qlora")
QUANT_TYPES = ("nf4", "fp4")
MAX_RANK = 1024
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class SpecError(ValueError):
    pass


def did_you_mean(value: object, choices) -> str:
    from .manifests import did_you_mean as suggest  # lazy: `import helpers` must not import torch

    return suggest(value, choices)


@dataclass(frozen=True)
class LoraSpec:
    r: int
    alpha: float
    dropout: float = LORA_DROPOUT
    target_modules: tuple[str, ...] | None = None  # None: the model preset's attention + MLP projections


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    quant_type: str = "nf4"  # NormalFloat 4 (QLoRA's); "fp4" is the plain 4-bit float
    double_quant: bool = True  # quantize the quantization constants too (~0.4 bits/parameter saved)


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    method: str  # "full" | "lora" | "qlora"
    learning_rate: float | None = None  # None: the profile's rate for this method (from the learning-rate sweep)
    lora: LoraSpec | None = None
    quantization: QuantSpec | None = None
    optimizer: str = "adamw_torch"  # the same for every standard run; a paged 8-bit optimizer is its own run id

    def __post_init__(self) -> None:
        check(self)


def full() -> RunSpec:
    return RunSpec("full", "full")


def _rank_problem(r: object, label: str) -> tuple[str, str] | None:
    """(what is wrong, the fix) for a LoRA rank that is not a whole number from 1 to MAX_RANK, else None."""
    if isinstance(r, bool) or not isinstance(r, int):
        if isinstance(r, str) and r.strip().isdigit():
            return "is text (in quotes), not a number", f"write {label} = {int(r)} without quotes"
        if isinstance(r, float) and math.isfinite(r) and r.is_integer():
            return "is a decimal number", f"write {label} = {int(r)} (a whole number, no decimal point)"
        if isinstance(r, (list, tuple, set, range)):
            return ("is a list; one spec takes one rank",
                    "one spec per rank: [helpers.lora(r) for r in RANKS], or helpers.specs.lora_runs(RANKS)")
        return f"is {type(r).__name__}, not a whole number", f"write a whole number, e.g. {label} = 16"
    if not 1 <= r <= MAX_RANK:
        return (f"must be from 1 to {MAX_RANK} (typical: 8, 16, 32; rank 0 trains nothing)",
                f"{label} = 16")
    return None


def check_rank(r: object, label: str = "RANK") -> int:
    """A LoRA rank as typed in a parameters cell: a whole number from 1 to MAX_RANK."""
    problem = _rank_problem(r, label)
    if problem:
        raise SpecError(f"{label} = {r!r}: the LoRA rank {problem[0]}. Fix: {problem[1]}")
    return r


def lora(r: int, alpha: float | None = None, dropout: float | None = None) -> RunSpec:
    """LoRA with alpha fixed across ranks (16): PEFT scales the update by alpha / r, so a larger rank starts with a
    smaller per-direction step, and the best learning rate barely depends on the rank (LoRA Without Regret)."""
    r = check_rank(r, "RANK")
    return RunSpec(f"lora-r{r}", "lora", lora=LoraSpec(r, LORA_ALPHA if alpha is None else alpha,
                                                       LORA_DROPOUT if dropout is None else dropout))


def lora_runs(ranks: object) -> list[RunSpec]:
    """RANKS from notebook 02's parameters cell: a non-empty list of distinct ranks, one LoRA spec each."""
    if isinstance(ranks, (int, float, str)) and not isinstance(ranks, bool):
        problem = _rank_problem(ranks, "RANKS")
        fix = (f"RANKS = [{ranks}]" if problem is None
               else f"RANKS = [{int(ranks)}] (a list, no quotes)" if isinstance(ranks, str) and ranks.strip().isdigit()
               else "RANKS = [8, 16, 32] (a list of whole numbers)")
        raise SpecError(f"RANKS = {ranks!r}: is one value, not a list of ranks. Fix: {fix}")
    if not isinstance(ranks, (list, tuple, range)):
        raise SpecError(f"RANKS = {ranks!r}: is {type(ranks).__name__}, not a list of ranks. Fix: RANKS = [8, 16, 32]")
    if len(ranks) == 0:
        raise SpecError("RANKS = []: is empty, so nothing would run. Fix: RANKS = [8, 16, 32]")
    for r in ranks:
        problem = _rank_problem(r, "RANKS")
        if problem:
            raise SpecError(f"RANKS = {list(ranks)!r}: the rank {r!r} {problem[0]}. Fix: RANKS = [8, 16, 32] (whole "
                            f"numbers from 1 to {MAX_RANK}, no quotes)")
    repeated = sorted({r for r in ranks if list(ranks).count(r) > 1})
    if repeated:
        raise SpecError(f"RANKS = {list(ranks)!r}: repeats rank(s) {repeated}; the same spec would run twice. "
                        f"Fix: RANKS = {list(dict.fromkeys(ranks))}")
    return [lora(r) for r in ranks]


def qlora(r: int = 16) -> RunSpec:
    # QLoRA = LoRA on a 4-bit NF4 base: the same spec plus one quantization line.
    r = check_rank(r, "RANK")
    return replace(lora(r), run_id="qlora" if r == 16 else f"qlora-r{r}", method="qlora", quantization=QuantSpec())


def paged(spec: RunSpec) -> RunSpec:
    """The same run with paged 8-bit AdamW (CUDA only): a run of its own, so the optimizer is never a hidden difference."""
    if not isinstance(spec, RunSpec):
        raise SpecError(f"helpers.paged({spec!r}): takes a run spec. Fix: helpers.paged(helpers.lora(16))")
    return replace(spec, run_id=f"{spec.run_id}-paged8bit", optimizer="paged_adamw_8bit")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check(spec: RunSpec) -> RunSpec:
    """Every setting a student can type wrong, refused before any model is loaded, with the fix."""
    if not isinstance(spec, RunSpec):
        raise SpecError(f"lab.run({spec!r}): takes a run spec, not {type(spec).__name__}. Fix: "
                        "lab.run(helpers.lora(16)) (or helpers.full(), helpers.qlora(16); for a list: for spec in specs: lab.run(spec))")
    if not isinstance(spec.run_id, str) or not RUN_ID.fullmatch(spec.run_id):
        raise SpecError(f"run spec {spec.run_id!r}: run_id names the results file, so it must be letters, digits, "
                        "'.', '-' or '_' (no spaces or slashes). Fix: e.g. run_id=\"lora-r16-lr2e-4\"")
    where = f"run spec {spec.run_id!r}"
    if spec.method not in METHODS:
        raise SpecError(f"{where}: method {spec.method!r} is not a method{did_you_mean(spec.method, METHODS)}. "
                        f"Fix: use one of {', '.join(METHODS)} (or helpers.full(), helpers.lora(r), helpers.qlora(r))")
    if spec.learning_rate is not None:
        lr = spec.learning_rate
        if not _number(lr) or not 0 < lr < 1:
            raise SpecError(f"{where}: learning_rate={lr!r} must be a number between 0 and 1 (typical: 1e-5 to 1e-3). "
                            "Fix: use e.g. 2e-4 (no quotes), or None for the profile's rate.")
    if spec.optimizer not in OPTIMIZERS:
        raise SpecError(f"{where}: optimizer {spec.optimizer!r} is not supported"
                        f"{did_you_mean(spec.optimizer, OPTIMIZERS)}. Fix: use one of {', '.join(OPTIMIZERS)} "
                        "(helpers.paged(spec) for the paged 8-bit one)")
    if spec.method == "full":
        if spec.lora or spec.quantization:
            raise SpecError(f"{where}: full fine-tuning trains every weight; it takes no LoRA or quantization settings. "
                            "Fix: use helpers.lora(r) or helpers.qlora(r).")
        return spec
    if not isinstance(spec.lora, LoraSpec):
        raise SpecError(f"{where}: method {spec.method!r} needs a LoRA spec. Fix: use helpers.lora(r) or helpers.qlora(r).")
    r, alpha, dropout = spec.lora.r, spec.lora.alpha, spec.lora.dropout
    try:
        check_rank(r, "r")
    except SpecError as err:
        raise SpecError(f"{where}: {err}") from None
    if not _number(alpha) or alpha <= 0:
        raise SpecError(f"{where}: lora_alpha={alpha!r} must be a positive number (the update is scaled by alpha / r). "
                        f"Fix: alpha={LORA_ALPHA} (the lab's value for every rank)")
    if not _number(dropout) or not 0 <= dropout < 1:
        raise SpecError(f"{where}: lora_dropout={dropout!r} must be at least 0 and below 1 (a fraction of inputs "
                        "dropped). Fix: dropout=0.0 (the lab's value) or e.g. 0.05")
    targets = spec.lora.target_modules
    if targets is not None and (isinstance(targets, str) or not isinstance(targets, (tuple, list)) or not targets
                                or not all(isinstance(t, str) and t.strip() for t in targets)):
        fix = (f"target_modules=({targets!r},) (a tuple: note the comma)" if isinstance(targets, str)
               else "e.g. target_modules=('q_proj', 'v_proj')")
        raise SpecError(f"{where}: target_modules={targets!r} must be a non-empty tuple of layer names. Fix: {fix}, "
                        "or None for the model preset's projections")
    if spec.method == "qlora" and spec.quantization is None or spec.method == "lora" and spec.quantization is not None:
        raise SpecError(f"{where}: method {spec.method!r} and quantization={spec.quantization!r} disagree. "
                        "Fix: use helpers.qlora(r) for a 4-bit base, helpers.lora(r) for a full-precision one.")
    if spec.quantization is not None:
        q = spec.quantization
        if not isinstance(q, QuantSpec):
            raise SpecError(f"{where}: quantization={q!r} is not a QuantSpec. Fix: use helpers.qlora(r)")
        if q.bits != 4 or isinstance(q.bits, bool):
            raise SpecError(f"{where}: bits={q.bits!r}: only 4-bit quantization is supported (QLoRA's NF4; 8-bit "
                            "bitsandbytes layers are a different method). Fix: bits=4, or helpers.qlora(r)")
        if q.quant_type not in QUANT_TYPES:
            raise SpecError(f"{where}: quant_type={q.quant_type!r} is not a 4-bit type"
                            f"{did_you_mean(q.quant_type, QUANT_TYPES)}. Fix: quant_type='nf4' (QLoRA's "
                            "NormalFloat) or 'fp4'")
        if not isinstance(q.double_quant, bool):
            raise SpecError(f"{where}: double_quant={q.double_quant!r} must be True or False. Fix: double_quant=True")
    return spec


def check_targets(spec: RunSpec, targets: list[str], layer_names: set[str]) -> None:
    """Target modules the model does not have would leave LoRA silently training nothing (or fail deep in PEFT)."""
    missing = [t for t in targets if t not in layer_names]
    if missing:
        hints = "".join(f" {t!r}{did_you_mean(t, layer_names) or ' (no close match)'};" for t in missing)
        raise SpecError(f"run spec {spec.run_id!r}: target module(s) {missing} are not layers of this model:{hints} "
                        f"its linear layers are named: {', '.join(sorted(layer_names))}. Fix: pick target_modules "
                        "from those, or leave target_modules as None for the preset's projections.")


def model_layer_names(preset_name: str) -> set[str]:
    """The names of the model's linear layers (what LoRA can target), from its config alone: the model is built on
    the meta device, so no weight is loaded or allocated."""
    import torch
    from transformers import AutoModelForCausalLM

    from .models import load_config
    from .training import linear_layer_names

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(load_config(preset_name))
    return linear_layer_names(model)


def check_targets_for_model(spec: RunSpec, preset_name: str) -> None:
    """check_targets before any weight is loaded (for the top of Lab.run): the layer names come from the config."""
    if spec.lora is None:
        return
    from .models import get_preset

    targets = list(spec.lora.target_modules or get_preset(preset_name).lora_targets)
    check_targets(spec, targets, model_layer_names(preset_name))


STANDARD_RUNS: tuple[RunSpec, ...] = (full(), lora(8), lora(16), lora(32), qlora())


def from_run_id(run_id: str) -> RunSpec:
    """The standard spec a run id names: full, lora-r<r>, qlora or qlora-r<r> (for command lines)."""
    for spec in STANDARD_RUNS:
        if spec.run_id == run_id:
            return spec
    for prefix, make in (("lora-r", lora), ("qlora-r", qlora)):
        if run_id.startswith(prefix) and run_id[len(prefix):].isdigit():
            return make(int(run_id[len(prefix):]))
    raise SpecError(f"run id {run_id!r} is not one the lab knows. Fix: full, lora-r<rank> (e.g. lora-r8), qlora or "
                    "qlora-r<rank>.")
