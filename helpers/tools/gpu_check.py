"""`make gpu-check`: the smoke profile on a CUDA GPU, through the T4's path whatever the GPU, before a class uses Colab.

A T4 (sm_75) has no bf16: the lab trains there with fp16 autocast and a loss scaler, trainable weights in fp32, and
QLoRA's 4-bit layers computing in fp16. That path is forced here with choose_precision("cuda", (7, 5)) even on a newer
GPU; then bf16 where the GPU has it (sm_80 and up). Each precision runs full fine-tuning, LoRA r8 and QLoRA and
prints precision, the trainable parameters' dtype (must be fp32), the updates the fp16 loss scaler skipped, how many
of the trained tensors training changed (each must), memory by category and tokens/s, under the torch and CUDA
versions. It fails when a run's trainable weights are not fp32, when the scaler skipped every update, or when a
trained tensor came out as it went in. Not part of `make test` (CI has no GPU). Results go to a temporary folder.

The smoke profile's model and general text are the offline ones where those packages are installed (`make gpu-check`);
a Colab GPU runtime lacks them (its setup cell installs them only without a GPU), so there the same budget runs on
the `gpu` profile's Hub model and general text, the ones the class trains and scores: on Colab, after any notebook's
setup cell, `!cd /content/finetune-lab && python -m helpers.tools.gpu_check`.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

NO_CUDA = ("gpu-check needs a CUDA GPU, and this machine has none (torch.cuda.is_available() is False). Run it on a "
           "GPU machine, or on Colab with Runtime -> Change runtime type -> T4 GPU: "
           "!cd /content/finetune-lab && python -m helpers.tools.gpu_check")
T4 = (7, 5)


def plan(capability: tuple[int, int]) -> list[tuple[str, object]]:
    """(precision name, run spec) pairs, in order: the T4 path first, then bf16 if this GPU has it."""
    from .. import full, lora, qlora

    precisions = ["fp16"] + (["bf16"] if tuple(capability) >= (8, 0) else [])
    return [(p, spec) for p in precisions for spec in (full(), lora(8), qlora(16))]


def smoke_settings() -> dict[str, str]:
    """Lab overrides for the smoke profile: none where the offline packages are installed, else the `gpu` profile's
    Hub model and general text (a Colab GPU runtime)."""
    from ..colab import offline_installed
    from ..environment import REPO_ROOT
    from ..profiles import PROFILES

    if offline_installed(REPO_ROOT):
        return {}
    return {"model": PROFILES["gpu"].model, "forgetting": PROFILES["gpu"].forgetting}


def precision_for(name: str):
    from ..environment import choose_precision

    return choose_precision("cuda", T4 if name == "fp16" else (8, 0))


def training_changes(artifact: Path, base: dict | None = None) -> tuple[int, int]:
    """(tensors training changed, tensors checked) in a run's saved artifact: every lora_B of an adapter (PEFT starts
    them at zero, so one applied update makes each non-zero), or with `base` (the model's parameters before training)
    every tensor of a full model that `base` has too."""
    import torch
    from safetensors.torch import load_file

    saved: dict = {}
    for path in sorted(Path(artifact).glob("*.safetensors")):
        saved.update(load_file(path))
    if base is None:
        checked = [t for name, t in saved.items() if "lora_B" in name]
        return sum(bool(t.count_nonzero()) for t in checked), len(checked)
    shared = [name for name in saved if name in base]
    changed = sum(not torch.equal(saved[n], base[n].detach().to("cpu", saved[n].dtype)) for n in shared)
    return changed, len(shared)


def run_one(results: Path, precision_name: str, spec) -> dict:
    from ..memory import release
    from ..runs import Lab

    lab = Lab("smoke", results=results / precision_name, seeds=1, **smoke_settings())
    lab.env = dataclasses.replace(lab.env, precision=precision_for(precision_name))
    record = lab.run(spec, force=True)[0]
    base = None
    if spec.lora is None:  # a full model: its parameters (not buffers, which never train) against the base's
        model = lab.base_model()
        base = {name: p.detach().cpu() for name, p in model.named_parameters()}
        del model
        release()
    changed, checked = training_changes(lab.artifact_path(record), base)
    categories = record["memory"].get("categories") or {}
    training = record["training"]
    return {"run": spec.run_id, "precision": training["precision"],
            "4-bit compute": (record.get("quantization") or {}).get("compute_dtype", "-"),
            "trainable dtype": ",".join(training["trainable_dtypes"]),
            "steps": training["steps"], "skipped": training["skipped_steps"],
            "tensors changed": changed, "tensors checked": checked,
            **{f"{c} MiB": round(v / 2**20) for c, v in categories.items()},
            "tokens/s": round(training["tokens_per_second"])}


def failures(rows: list[dict]) -> list[str]:
    """What makes `make gpu-check` fail, one line per kind: trainable weights not fp32 under autocast, a run whose
    every update the loss scaler skipped, a run in which training left a trained tensor as it was."""
    found = []
    bad = [f"{r['run']} ({r['precision']}): {r['trainable dtype']}" for r in rows if r["trainable dtype"] != "float32"]
    if bad:
        found.append("trainable weights must stay fp32 under autocast: " + "; ".join(bad))
    skipped = [f"{r['run']} ({r['precision']}): {r['skipped']} of {r['steps']}" for r in rows
               if r["skipped"] >= r["steps"]]
    if skipped:
        found.append("the fp16 loss scaler skipped every update (inf/NaN gradients), so nothing was trained: "
                     + "; ".join(skipped))
    unchanged = [f"{r['run']} ({r['precision']}): {r['tensors changed']} of {r['tensors checked']} changed"
                 for r in rows if r["tensors checked"] == 0 or r["tensors changed"] < r["tensors checked"]]
    if unchanged:
        found.append("training must change every trained tensor (each lora_B starts at zero; a full model's weights "
                     "start as the base's): " + "; ".join(unchanged))
    return found


def main() -> int:
    import torch

    from ..environment import torch_build

    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    capability = torch.cuda.get_device_capability(0)
    print(f"{torch.cuda.get_device_name(0)} (sm_{capability[0]}{capability[1]}), {torch_build()}: the T4 path (fp16)"
          + (" then bf16" if capability >= (8, 0) else "; no bf16 on this GPU"))
    if hub := smoke_settings():
        print(f"The offline packages are not installed here (a Colab GPU runtime): the smoke profile's budget on the "
              f"Hub model {hub['model']}, general text {hub['forgetting']}.")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        for precision_name, spec in plan(capability):
            rows.append(run_one(Path(folder), precision_name, spec))
    import pandas as pd

    print(pd.DataFrame(rows).set_index("run").to_string())
    found = failures(rows)
    for line in found:
        print(f"FAILED: {line}", file=sys.stderr)
    if found:
        return 1
    print("OK: every run trained fp32 weights under its autocast precision, applied updates, and changed every "
          "trained tensor.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
