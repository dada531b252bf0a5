"""Run specs: full fine-tuning, LoRA and QLoRA as data that holds the libraries' own configs.

A LoRA spec carries the `peft.LoraConfig` PEFT wraps the base with; a QLoRA spec is the same plus the
`transformers.BitsAndBytesConfig` the base is loaded with (one line apart, as in torchtune). A student's own
`LoraConfig` runs through the same path: `RunSpec("attn-r8", lora=LoraConfig(r=8, lora_alpha=16, ...))`.
`resolve` fills what depends on the model and the device (target modules, compute dtype) into a copy: that copy is
what trains, what a notebook prints and what the results record.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

LORA_ALPHA = 16  # fixed across ranks (see lora()); the learning rates in the profiles were swept with it
LORA_DROPOUT = 0.0  # measured: dropout copies every adapted layer's input (time and memory) and 30-200 steps need no regulariser
OPTIMIZERS = ("adamw_torch", "paged_adamw_8bit")
METHODS = ("full", "lora", "qlora")
# LoRA variants, each one argument in PEFT (notebook 04): a LoraConfig field, or LoRA+'s optimizer. Each changes the
# effective step size, so each has its own swept learning rate (a profile without one uses LoRA's).
VARIANTS = ("dora", "rslora", "pissa", "loraplus")
VARIANT_RANK = 16  # the rank the variants are compared at: LoRA r=16's, and QLoRA's
LORAPLUS_RATIO = 16.0  # B's learning rate / A's: the LoRA+ paper's recommendation, PEFT's docs' example
PISSA_NITER = 4  # subspace iterations of PiSSA's fast SVD (init_lora_weights="pissa_niter_4"; "pissa" = exact SVD)
QUANT_TYPES = ("nf4", "fp4")
MAX_RANK = 1024
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# The fields a notebook shows of each config, in this order, whatever their value; any other field is shown only where
# it differs from the library's default. Bookkeeping PEFT writes while wrapping a model is never shown.
SHOWN = {"LoraConfig": ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "task_type"),
         "BitsAndBytesConfig": ("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant")}
BOOKKEEPING = {"peft_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version",
               "quant_method", "_load_in_4bit", "_load_in_8bit"}


class SpecError(ValueError):
    pass


def did_you_mean(value: object, choices) -> str:
    from .manifests import did_you_mean as suggest  # lazy: `import helpers` must not import torch

    return suggest(value, choices)


# ---------------------------------------------------------------- showing a library config as a student types it

def _plain(value: Any) -> Any:
    """A config value as JSON-able data: sets sorted (PEFT stores target_modules as a set), dtypes by name."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "value") and type(value).__module__.startswith(("peft", "transformers")):  # str enums
        return value.value
    if type(value).__name__ == "dtype":
        return str(value).removeprefix("torch.")
    return value


def _defaults(kind: type) -> dict:
    return kind().to_dict()


def config_fields(config: Any) -> dict[str, Any]:
    """The fields of a LoraConfig / BitsAndBytesConfig worth showing and recording: the lab's chosen ones always,
    any other one where it differs from the library default (JSON-able values)."""
    if config is None:
        return {}
    values, defaults = config.to_dict(), _defaults(type(config))
    if isinstance(config, _bnb_class()):
        values["bnb_4bit_compute_dtype"] = config.bnb_4bit_compute_dtype  # to_dict gives a str, show the torch dtype
    shown = SHOWN.get(type(config).__name__, ())
    out = {k: _plain(values[k]) for k in shown if k in values}
    out.update({k: _plain(v) for k, v in values.items()
                if k not in out and k not in BOOKKEEPING and _plain(v) != _plain(defaults.get(k))})
    return out


def show_config(config: Any) -> str:
    """`LoraConfig(r=8, lora_alpha=16, ...)`: the constructor call that builds this config (copy it into your code)."""
    def literal(key: str, value: Any) -> str:
        if key == "bnb_4bit_compute_dtype":
            return f"torch.{value}"
        return repr(value)
    fields = config_fields(config)
    return f"{type(config).__name__}(" + ", ".join(f"{k}={literal(k, v)}" for k, v in fields.items()) + ")"


def _bnb_class() -> type:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig


def _lora_class() -> type:
    from peft import LoraConfig

    return LoraConfig


# ---------------------------------------------------------------- the spec

@dataclass(frozen=True, repr=False, eq=True)
class RunSpec:
    run_id: str
    lora: Any = None  # peft.LoraConfig, or None for full fine-tuning
    quantization: Any = None  # transformers.BitsAndBytesConfig for a 4-bit base (QLoRA), else None
    learning_rate: float | None = None  # None: the profile's rate for this method (from the learning-rate sweep)
    optimizer: str = "adamw_torch"  # the same for every standard run; a paged 8-bit optimizer is its own run id
    # LoRA+: B's learning rate is this many times A's (peft.optimizers.create_loraplus_optimizer, the same AdamW
    # otherwise); None: one rate for every trainable weight
    loraplus_lr_ratio: float | None = None
    resolved: bool = field(default=False, compare=False)  # set by resolve(): targets and compute dtype filled in

    def __post_init__(self) -> None:
        check(self)

    @property
    def method(self) -> str:
        """full: every weight trains; lora: adapters on a full-precision base; qlora: adapters on a 4-bit base."""
        return "full" if self.lora is None else "qlora" if self.quantization is not None else "lora"

    @property
    def variant(self) -> str | None:
        """Which LoRA variants this spec uses ("dora", "rslora", "pissa", "loraplus", several joined by "+"), read
        off its LoraConfig and optimizer; None for plain LoRA, QLoRA and full fine-tuning."""
        if self.lora is None:
            return None
        init = self.lora.init_lora_weights
        used = [name for name, on in (("dora", self.lora.use_dora), ("rslora", self.lora.use_rslora),
                                      ("pissa", isinstance(init, str) and init.startswith("pissa")),
                                      ("loraplus", self.loraplus_lr_ratio is not None)) if on]
        return "+".join(used) or None

    def uses(self, variant: str) -> bool:
        """Whether this spec uses one LoRA variant ("pissa", ...), alone or with others."""
        return variant in (self.variant or "").split("+")

    @property
    def rate_key(self) -> str:
        """The profile's learning_rates entry this spec trains with (by_rate_key falls back to LoRA's)."""
        return self.variant or self.method

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: what the results record and the fingerprint hold."""
        out = {"run_id": self.run_id, "method": self.method, "learning_rate": self.learning_rate,
               "optimizer": self.optimizer, "lora": config_fields(self.lora) or None,
               "quantization": config_fields(self.quantization) or None}
        if self.loraplus_lr_ratio is not None:  # only when set: what a standard run records stays as it was
            out["loraplus_lr_ratio"] = self.loraplus_lr_ratio
        if self.variant:
            out["variant"] = self.variant
        return out

    def __hash__(self) -> int:
        import json

        return hash(json.dumps(self.as_dict(), sort_keys=True, default=str))

    def __repr__(self) -> str:
        parts = [repr(self.run_id)]
        if self.lora is not None:
            parts.append(f"lora={show_config(self.lora)}")
        if self.quantization is not None:
            parts.append(f"quantization={show_config(self.quantization)}")
        if self.learning_rate is not None:
            parts.append(f"learning_rate={self.learning_rate!r}")
        if self.optimizer != "adamw_torch":
            parts.append(f"optimizer={self.optimizer!r}")
        if self.loraplus_lr_ratio is not None:
            parts.append(f"loraplus_lr_ratio={self.loraplus_lr_ratio!r}")
        return "RunSpec(" + ",\n        ".join(parts) + ")"

    __str__ = __repr__


def full() -> RunSpec:
    return RunSpec("full")


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


def by_rate_key(table: dict, key: str):
    """A table's entry for a RunSpec.rate_key (a profile's learning rates, the sweep's grids): the key's own, else
    full's for full fine-tuning and LoRA's for the rest (QLoRA trains the same adapters; a variant without its own
    entry takes LoRA's)."""
    return table.get(key) or table["full" if key == "full" else "lora"]


def check_rank(r: object, label: str = "RANK") -> int:
    """A LoRA rank as typed in a parameters cell: a whole number from 1 to MAX_RANK."""
    problem = _rank_problem(r, label)
    if problem:
        raise SpecError(f"{label} = {r!r}: the LoRA rank {problem[0]}. Fix: {problem[1]}")
    return r


def lora_config(r: int, alpha: float | None = None, dropout: float | None = None, **peft_fields):
    """The lab's LoraConfig: alpha fixed across ranks (16). PEFT scales the update by lora_alpha / r, so a larger rank
    starts with a smaller per-direction step, and the best learning rate barely depends on the rank (LoRA Without
    Regret). target_modules=None: the model preset's attention + MLP projections (filled in by resolve)."""
    return _lora_class()(r=r, lora_alpha=LORA_ALPHA if alpha is None else alpha,
                         lora_dropout=LORA_DROPOUT if dropout is None else dropout, target_modules=None, bias="none",
                         task_type="CAUSAL_LM", **peft_fields)


def nf4_config():
    """QLoRA's 4-bit base: NF4 with double quantization; the compute dtype follows the device (filled in by resolve)."""
    return _bnb_class()(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)


def lora(r: int, alpha: float | None = None, dropout: float | None = None) -> RunSpec:
    r = check_rank(r, "RANK")
    return RunSpec(f"lora-r{r}", lora=lora_config(r, alpha, dropout))


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
    return replace(lora(r), run_id="qlora" if r == 16 else f"qlora-r{r}", quantization=nf4_config())


# ---------------------------------------------------------------- LoRA variants: one argument each, everything else LoRA's

def dora(r: int = VARIANT_RANK) -> RunSpec:
    """DoRA: each adapted weight split into a direction (W + BA, normalised per output) and a trained magnitude vector."""
    r = check_rank(r, "RANK")
    return RunSpec(f"dora-r{r}", lora=lora_config(r, use_dora=True))


def rslora(r: int = VARIANT_RANK) -> RunSpec:
    """rsLoRA: the update scaled by lora_alpha / sqrt(r) instead of lora_alpha / r (at r=16 and alpha 16: 4x LoRA's)."""
    r = check_rank(r, "RANK")
    return RunSpec(f"rslora-r{r}", lora=lora_config(r, use_rslora=True))


def pissa(r: int = VARIANT_RANK, niter: int | None = PISSA_NITER) -> RunSpec:
    """PiSSA: A and B start from W's top-r singular vectors (W's principal part trains, the residual stays frozen),
    found by a randomized SVD with `niter` subspace iterations; niter=None: the exact SVD."""
    r = check_rank(r, "RANK")
    return RunSpec(f"pissa-r{r}", lora=lora_config(r, init_lora_weights="pissa" if niter is None
                                                   else f"pissa_niter_{niter}"))


def loraplus(r: int = VARIANT_RANK, ratio: float = LORAPLUS_RATIO) -> RunSpec:
    """LoRA+: plain LoRA adapters, B trained at `ratio` times A's learning rate."""
    r = check_rank(r, "RANK")
    return RunSpec(f"loraplus-r{r}", lora=lora_config(r), loraplus_lr_ratio=ratio)


VARIANT_MAKERS = {"dora": dora, "rslora": rslora, "pissa": pissa, "loraplus": loraplus}


def variant_runs(r: int = VARIANT_RANK) -> tuple[RunSpec, ...]:
    return tuple(make(r) for make in VARIANT_MAKERS.values())


def variant_specs(names: object, r: object = VARIANT_RANK) -> list[RunSpec]:
    """VARIANTS and RANK from notebook 04's parameters cell: a non-empty list of distinct variant names, one spec each."""
    r = check_rank(r, "RANK")
    example = f"VARIANTS = {list(VARIANTS)!r}"
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
        raise SpecError(f"VARIANTS = {names!r}: must be a non-empty list of variant names. Fix: {example}")
    for name in names:
        if name not in VARIANT_MAKERS:
            raise SpecError(f"VARIANTS = {list(names)!r}: {name!r} is not a variant the lab trains"
                            f"{did_you_mean(name, VARIANTS)}. Fix: choose from {example}")
    if len(set(names)) < len(names):
        raise SpecError(f"VARIANTS = {list(names)!r}: a name repeats; the same run would train twice. "
                        f"Fix: VARIANTS = {list(dict.fromkeys(names))!r}")
    return [VARIANT_MAKERS[name](r) for name in names]


def paged(spec: RunSpec) -> RunSpec:
    """The same run with paged 8-bit AdamW (CUDA only): a run of its own, so the optimizer is never a hidden difference."""
    if not isinstance(spec, RunSpec):
        raise SpecError(f"helpers.paged({spec!r}): takes a run spec. Fix: helpers.paged(helpers.lora(16))")
    return replace(spec, run_id=f"{spec.run_id}-paged8bit", optimizer="paged_adamw_8bit")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_lora(where: str, config: Any) -> None:
    if not isinstance(config, _lora_class()):
        raise SpecError(f"{where}: lora={config!r} is not a peft.LoraConfig. Fix: lora=LoraConfig(r=8, lora_alpha=16) "
                        "(from peft import LoraConfig), or helpers.lora(r)")
    try:
        check_rank(config.r, "r")
    except SpecError as err:
        raise SpecError(f"{where}: {err}") from None
    alpha, dropout = config.lora_alpha, config.lora_dropout
    if not _number(alpha) or alpha <= 0:
        raise SpecError(f"{where}: lora_alpha={alpha!r} must be a positive number (the update is scaled by lora_alpha "
                        f"/ r). Fix: lora_alpha={LORA_ALPHA} (the lab's value for every rank)")
    if not _number(dropout) or not 0 <= dropout < 1:
        raise SpecError(f"{where}: lora_dropout={dropout!r} must be at least 0 and below 1 (a fraction of inputs "
                        "dropped). Fix: lora_dropout=0.0 (the lab's value) or e.g. 0.05")
    targets = config.target_modules
    if targets is not None and (isinstance(targets, str) or not isinstance(targets, (tuple, list, set, frozenset))
                                or not targets or not all(isinstance(t, str) and t.strip() for t in targets)):
        fix = (f"target_modules=[{targets!r}] (a list of layer names; PEFT would read one string as a regular "
               "expression)" if isinstance(targets, str) else "e.g. target_modules=['q_proj', 'v_proj']")
        raise SpecError(f"{where}: target_modules={targets!r} must be a non-empty list of layer names. Fix: {fix}, "
                        "or None for the model preset's projections")
    task = getattr(config.task_type, "value", config.task_type)
    if task not in (None, "CAUSAL_LM"):
        raise SpecError(f"{where}: task_type={task!r}: the lab trains causal language models. "
                        "Fix: task_type='CAUSAL_LM' (or leave it out)")


def _check_quantization(where: str, q: Any) -> None:
    if not isinstance(q, _bnb_class()):
        raise SpecError(f"{where}: quantization={q!r} is not a transformers.BitsAndBytesConfig. Fix: "
                        "quantization=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4'), or helpers.qlora(r)")
    if not q.load_in_4bit:
        raise SpecError(f"{where}: load_in_4bit={q.load_in_4bit!r} (8-bit: {q.load_in_8bit!r}): only a 4-bit base is "
                        "supported (QLoRA's NF4; 8-bit bitsandbytes layers are a different method). Fix: "
                        "BitsAndBytesConfig(load_in_4bit=True, ...), or helpers.qlora(r)")
    if q.bnb_4bit_quant_type not in QUANT_TYPES:
        raise SpecError(f"{where}: bnb_4bit_quant_type={q.bnb_4bit_quant_type!r} is not a 4-bit type"
                        f"{did_you_mean(q.bnb_4bit_quant_type, QUANT_TYPES)}. Fix: bnb_4bit_quant_type='nf4' (QLoRA's "
                        "NormalFloat) or 'fp4'")
    if not isinstance(q.bnb_4bit_use_double_quant, bool):
        raise SpecError(f"{where}: bnb_4bit_use_double_quant={q.bnb_4bit_use_double_quant!r} must be True or False. "
                        "Fix: bnb_4bit_use_double_quant=True")


def check(spec: RunSpec) -> RunSpec:
    """Every setting a student can type wrong, refused before any model is loaded, with the fix."""
    if not isinstance(spec, RunSpec):
        raise SpecError(f"lab.run({spec!r}): takes a run spec, not {type(spec).__name__}. Fix: "
                        "lab.run(helpers.lora(16)) (or helpers.full(), helpers.qlora(16); several: lab.run([spec, ...]))")
    if not isinstance(spec.run_id, str) or not RUN_ID.fullmatch(spec.run_id):
        raise SpecError(f"run spec {spec.run_id!r}: run_id names the results file, so it must be letters, digits, "
                        "'.', '-' or '_' (no spaces or slashes). Fix: e.g. run_id=\"lora-r16-lr2e-4\"")
    where = f"run spec {spec.run_id!r}"
    if spec.learning_rate is not None:
        lr = spec.learning_rate
        if not _number(lr) or not 0 < lr < 1:
            raise SpecError(f"{where}: learning_rate={lr!r} must be a number between 0 and 1 (typical: 1e-5 to 1e-3). "
                            "Fix: use e.g. 2e-4 (no quotes), or None for the profile's rate.")
    if spec.optimizer not in OPTIMIZERS:
        raise SpecError(f"{where}: optimizer {spec.optimizer!r} is not supported"
                        f"{did_you_mean(spec.optimizer, OPTIMIZERS)}. Fix: use one of {', '.join(OPTIMIZERS)} "
                        "(helpers.paged(spec) for the paged 8-bit one)")
    if spec.lora is not None:
        _check_lora(where, spec.lora)
    if spec.loraplus_lr_ratio is not None:
        ratio = spec.loraplus_lr_ratio
        if spec.lora is None:
            raise SpecError(f"{where}: loraplus_lr_ratio={ratio!r} splits the learning rate of LoRA's A and B "
                            "matrices, and full fine-tuning has none. Fix: helpers.specs.loraplus(16), or drop "
                            "loraplus_lr_ratio")
        if not _number(ratio) or ratio < 1:
            raise SpecError(f"{where}: loraplus_lr_ratio={ratio!r} must be a number of at least 1 (B's rate / A's; "
                            f"PEFT: 'should be >= 1'). Fix: loraplus_lr_ratio={LORAPLUS_RATIO:g}")
        if spec.optimizer != "adamw_torch":
            raise SpecError(f"{where}: LoRA+ builds its own AdamW with two learning rates, so optimizer="
                            f"{spec.optimizer!r} would be ignored. Fix: leave optimizer as 'adamw_torch'")
    if spec.quantization is not None:
        if spec.lora is None:
            raise SpecError(f"{where}: a 4-bit base cannot be fully fine-tuned (its weights are frozen integers). "
                            "Fix: add lora=LoraConfig(...) (QLoRA: helpers.qlora(r)), or drop quantization for full "
                            "fine-tuning.")
        _check_quantization(where, spec.quantization)
        if spec.uses("pissa"):
            raise SpecError(f"{where}: PiSSA (init_lora_weights={spec.lora.init_lora_weights!r}) rewrites the base weights as W minus their "
                            "principal part, and a 4-bit base would be requantized to hold that residual; the lab "
                            "compares PiSSA on a full-precision base. Fix: drop quantization (helpers.specs.pissa(16))")
    return spec


def ordered_targets(targets, preset_targets) -> list[str]:
    """Target names in the preset's order (q, k, v, o, gate, up, down), any others after them, sorted: PEFT keeps a set,
    and a set's order changes between processes, which must not change a fingerprint or a record."""
    names = set(targets)
    return [t for t in preset_targets if t in names] + sorted(names - set(preset_targets))


def resolve(spec: RunSpec, preset_name: str, compute_dtype) -> RunSpec:
    """The spec exactly as it trains on this model and device, as a copy (the caller's configs are never changed):
    target_modules None -> the preset's projections; GPT-2's Conv1D layers get fan_in_fan_out; task_type CAUSAL_LM;
    a 4-bit base computes in the profile's precision, like every other method (helpers.environment)."""
    check(spec)
    if spec.resolved:
        return spec
    from .models import get_preset

    preset = get_preset(preset_name)
    lora_cfg = quant = None
    if spec.lora is not None:
        lora_cfg = copy.deepcopy(spec.lora)
        lora_cfg.target_modules = ordered_targets(lora_cfg.target_modules or preset.lora_targets, preset.lora_targets)
        lora_cfg.fan_in_fan_out = preset.conv1d
        if lora_cfg.task_type is None:
            lora_cfg.task_type = "CAUSAL_LM"
    if spec.quantization is not None:
        quant = with_compute_dtype(spec.quantization, compute_dtype, spec.run_id)
    return replace(spec, lora=lora_cfg, quantization=quant, resolved=True)


def with_compute_dtype(quantization: Any, compute_dtype, run_id: str = "the 4-bit base") -> Any:
    """A copy of a BitsAndBytesConfig computing in `compute_dtype`. A dtype the student chose that differs from the
    device's precision is refused: every method of a profile computes in one precision."""
    import torch

    chosen = quantization.bnb_4bit_compute_dtype
    if chosen not in (torch.float32, compute_dtype):  # float32 is BitsAndBytesConfig's default: nothing was chosen
        raise SpecError(f"run spec {run_id!r}: bnb_4bit_compute_dtype={chosen} but this device computes in "
                        f"{compute_dtype}; every method of a profile uses one precision, so the comparison stays fair. "
                        "Fix: leave bnb_4bit_compute_dtype out (the lab sets it from the device)")
    quant = copy.deepcopy(quantization)
    quant.bnb_4bit_compute_dtype = compute_dtype
    return quant


def check_targets(spec: RunSpec, targets: list[str], layer_names: set[str]) -> None:
    """Target modules the model does not have would leave LoRA silently training nothing (or fail deep in PEFT)."""
    missing = [t for t in targets if t not in layer_names]
    if missing:
        hints = "".join(f" {t!r}{did_you_mean(t, layer_names) or ' (no close match)'};" for t in missing)
        raise SpecError(f"run spec {spec.run_id!r}: target module(s) {missing} are not layers of this model:{hints} "
                        f"its linear layers are named: {', '.join(sorted(layer_names))}. Fix: pick target_modules "
                        "from those, or leave target_modules as None for the preset's projections.")


def check_targets_for_model(spec: RunSpec, preset_name: str) -> None:
    """check_targets before any weight is loaded (for the top of Lab.run): the layer names come from the config."""
    if spec.lora is None:
        return
    from .models import get_preset, model_layer_names

    preset = get_preset(preset_name)
    targets = ordered_targets(spec.lora.target_modules or preset.lora_targets, preset.lora_targets)
    check_targets(spec, targets, model_layer_names(preset_name))


def standard_runs() -> tuple[RunSpec, ...]:
    return (full(), lora(8), lora(16), lora(32), qlora())


def __getattr__(name: str):
    if name == "STANDARD_RUNS":  # built on use: a LoraConfig imports peft, and `import helpers` must stay light
        return standard_runs()
    raise AttributeError(f"module 'helpers.specs' has no attribute {name!r}")


def from_run_id(run_id: str) -> RunSpec:
    """The spec a run id names: full, lora-r<r>, qlora or qlora-r<r>, or a variant's dora-r<r>, rslora-r<r>,
    pissa-r<r>, loraplus-r<r> (command lines, notebook 06's RUN)."""
    text = str(run_id)
    known = standard_runs() + variant_runs()
    for spec in known:
        if spec.run_id == text:
            return spec
    makers = {"lora": lora, "qlora": qlora, **VARIANT_MAKERS}
    for prefix, make in ((f"{name}-r", make) for name, make in makers.items()):
        if text.startswith(prefix) and text[len(prefix):].isdigit():
            return make(int(text[len(prefix):]))
    raise SpecError(f"run id {run_id!r} is not one the lab knows.{did_you_mean(text, [s.run_id for s in known])} "
                    "Fix: full, lora-r<rank> (e.g. lora-r8), qlora or qlora-r<rank>, or a variant: "
                    f"{', '.join(s.run_id for s in known if s.variant)}.")
