"""Saved adapters: reload onto a base, merge into it, and keep several on one base to switch between."""

from __future__ import annotations

import json
import time

import pandas as pd
import torch
from peft import PeftModel

from .data import pad_batch
from .models import bnb_config, load_model


class MergeError(RuntimeError):
    pass


def base_for(lab, record: dict) -> torch.nn.Module:
    """The base a record's adapter was trained on: 4-bit NF4 for QLoRA, full precision otherwise."""
    quant = record.get("quantization")
    config = None
    if quant:
        config = bnb_config(quant["quant_type"], quant["double_quant"], lab.env.precision.dtype)
    return load_model(record["model"]["preset"], lab.env.device, config)


def adapter_name(record: dict) -> str:
    """The name an adapter is loaded under: run and seed (several seeds of one run can share a base)."""
    return f"{record['run_id']}-seed{record['seed']}"


def reload(lab, record: dict, base: torch.nn.Module | None = None) -> PeftModel:
    """Base + the adapter saved by a run; evaluates to the loss measured at the end of training."""
    if record["lora"] is None:
        raise ValueError(f"{record['run_id']} is a full fine-tune: its artifact is a whole model, not an adapter.")
    base = base if base is not None else base_for(lab, record)
    return PeftModel.from_pretrained(base, lab.artifact_path(record), adapter_name=adapter_name(record))


def reload_check(lab, record: dict, model: torch.nn.Module | None = None, examples: int = 8) -> tuple[float, float]:
    """(loss the run measured at the end of training, loss of `model` — by default its saved adapter reloaded) over
    the first `examples` held-out examples, from the per-example sums the results file keeps: a wrong or stale file
    shows as a difference far above float rounding, at a fraction of a full evaluation's time."""
    saved = record["eval"]["per_example_after"][:examples]
    at_end = sum(n for n, _ in saved) / sum(t for _, t in saved)
    model = model if model is not None else reload(lab, record)
    return at_end, lab.evaluate(model, examples=len(saved))["loss"]


def load_several(lab, records: list[dict]) -> PeftModel:
    """Several adapters on one copy of the base weights; `model.set_adapter(adapter_name(record))` picks one."""
    if len({bool(r.get("quantization")) for r in records}) > 1:
        raise ValueError("Adapters for a 4-bit base and a full-precision base cannot share one base model.")
    first, *rest = records
    model = reload(lab, first)
    for record in rest:
        model.load_adapter(lab.artifact_path(record), adapter_name=adapter_name(record))
    return model


def has_4bit_layers(model: torch.nn.Module) -> bool:
    # Module types, not the model's is_loaded_in_4bit flag: that flag stays True after dequantize().
    return any(type(module).__name__ == "Linear4bit" for module in model.modules())


def merge(model: PeftModel) -> torch.nn.Module:
    """Fold the adapter into the base weights (W + (alpha/r) B A): a plain model, no adapter overhead.

    Refused on a 4-bit base: the merged weight would be rounded back to NF4, losing most of the update.
    """
    if has_4bit_layers(model):
        raise MergeError("This adapter sits on a 4-bit base; merging in place would round W + BA back to NF4 and "
                         "lose the update. Use helpers.adapters.merge_dequantized(lab, record): it dequantizes the "
                         "NF4 weights the adapter was trained against to full precision, then merges.")
    return model.merge_and_unload()


def merge_dequantized(lab, record: dict) -> torch.nn.Module:
    """A QLoRA adapter merged into its own base, dequantized: the weights it was trained against, in fp32.

    Not the original fp32 checkpoint: the adapter learned to correct the 4-bit weights, not those.
    """
    base = base_for(lab, record)
    if has_4bit_layers(base):
        base = base.dequantize()
    return PeftModel.from_pretrained(base, lab.artifact_path(record)).merge_and_unload()


@torch.no_grad()
def max_logit_difference(a: torch.nn.Module, b: torch.nn.Module, examples: list[dict], pad_id: int) -> float:
    """Largest absolute logit gap between two models over real (non-pad) positions."""
    batch = pad_batch(examples, pad_id)
    device = next(a.parameters()).device
    mask = batch["attention_mask"].bool().to(device)
    la = a.eval()(input_ids=batch["input_ids"].to(device), attention_mask=mask.long(), use_cache=False).logits
    lb = b.eval()(input_ids=batch["input_ids"].to(device), attention_mask=mask.long(), use_cache=False).logits
    return float((la - lb).abs()[mask].max())


def parameter_check(records: list[dict]) -> pd.DataFrame:
    """Trainable parameters counted from the spec (r * (in + out) per target) next to PEFT's own count, per run."""
    rows, seen = [], set()
    for r in records:
        if r["lora"] and r["run_id"] not in seen:
            seen.add(r["run_id"])
            rows.append({"run": r["run_id"], "r": r["lora"]["r"], "from the spec": r["params"]["expected_trainable"],
                         "PEFT get_nb_trainable_parameters": r["params"]["trainable"],
                         "agree": r["params"]["expected_trainable"] == r["params"]["trainable"]})
    return pd.DataFrame(rows)


def saved_rank(lab, record: dict) -> int:
    """The rank of the adapter a run saved: r, or 2r for PiSSA (saved as trained minus initial, for the original base)."""
    return json.loads((lab.artifact_path(record) / "adapter_config.json").read_text())["r"]


def variant_checks(lab, records: list[dict], examples: int = 8) -> pd.DataFrame:
    """Per run (its first seed): the saved adapter's rank; the loss over the first `examples` held-out examples at
    the end of training, with that adapter reloaded onto the original base, and merged into it (merge_and_unload).
    All three losses agree to float rounding when saving, reloading and merging work (PiSSA's through PEFT's
    conversion, DoRA's through its magnitude-aware merge)."""
    rows, seen = [], set()
    for record in records:
        if record["lora"] is None or record["quantization"] or record["run_id"] in seen:
            continue
        seen.add(record["run_id"])
        model = reload(lab, record)
        at_end, reloaded = reload_check(lab, record, model=model, examples=examples)
        _, merged = reload_check(lab, record, model=merge(model), examples=examples)  # merged in place: one load
        rows.append({"run": record["run_id"], "rank trained": record["lora"]["r"], "rank saved": saved_rank(lab, record),
                     "loss at end of training": at_end, "reloaded on the original base": reloaded,
                     "merged into it": merged, "largest difference": max(abs(reloaded - at_end), abs(merged - at_end))})
    return pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame(rows)


def _clock(tensor: torch.Tensor) -> float:
    """perf_counter once the work queued on the tensor's device is done (a GPU returns before its kernels finish)."""
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)
    return time.perf_counter()


@torch.no_grad()
def svd_init_check(model: torch.nn.Module, targets, r: int, niter: int, layer: int = 0) -> pd.DataFrame:
    """What PiSSA's fast SVD changes, on the adapted weights of decoder layer `layer`: the share of each weight's
    energy (squared singular values) in its top r directions found by the exact SVD (init_lora_weights="pissa")
    and by torch.svd_lowrank with `niter` subspace iterations ("pissa_niter_<niter>", what PEFT then calls), and
    the time each takes (wall time; on a GPU after the kernels finish). The fast SVD finds slightly weaker directions,
    so a little less of W starts in the adapter."""
    rows = []
    prefix = f".layers.{layer}."
    for name, module in model.named_modules():
        if prefix not in f".{name}." or name.split(".")[-1] not in targets or not hasattr(module, "weight"):
            continue
        weight = module.weight.detach().float()
        start = _clock(weight)
        exact = torch.linalg.svd(weight, full_matrices=False)[1]  # what PEFT's exact "pissa" runs
        exact_s = _clock(weight) - start
        start = _clock(weight)
        fast = torch.svd_lowrank(weight, q=r, niter=niter)[1]
        fast_s = _clock(weight) - start
        energy = float((exact ** 2).sum())
        rows.append({"weight": name.split(prefix, 1)[-1], "shape": "x".join(map(str, weight.shape)),
                     "top-r share, exact SVD": float((exact[:r] ** 2).sum()) / energy,
                     f"top-r share, niter={niter}": float((fast ** 2).sum()) / energy,
                     "exact ms": 1000 * exact_s, "fast ms": 1000 * fast_s})
    if not rows:
        raise ValueError(f"svd_init_check: decoder layer {layer} has none of the weights {list(targets)}. Fix: "
                         "layer=0, and targets=the LoraConfig's target_modules")
    return pd.DataFrame(rows).set_index("weight")
