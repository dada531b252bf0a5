"""`make gpu-check`: the smoke profile on a CUDA GPU, through the T4's path whatever the GPU, before a class uses Colab.

A T4 (sm_75) has no bf16: the lab trains there with fp16 autocast and a loss scaler, trainable weights in fp32, and
QLoRA's 4-bit layers computing in fp16. That path is forced here with choose_precision("cuda", (7, 5)) even on a newer
GPU; then bf16 where the GPU has it (sm_80 and up). Each precision runs full fine-tuning, LoRA r8 and QLoRA and
prints precision, the trainable parameters' dtype (must be fp32), memory by category and tokens/s. Not part of
`make test` (CI has no GPU). Results go to a temporary folder.

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


def run_one(results: Path, precision_name: str, spec) -> dict:
    from ..runs import Lab

    lab = Lab("smoke", results=results / precision_name, seeds=1, **smoke_settings())
    lab.env = dataclasses.replace(lab.env, precision=precision_for(precision_name))
    record = lab.run(spec, force=True)[0]
    categories = record["memory"].get("categories") or {}
    return {"run": spec.run_id, "precision": record["training"]["precision"],
            "4-bit compute": (record.get("quantization") or {}).get("compute_dtype", "-"),
            "trainable dtype": ",".join(record["training"]["trainable_dtypes"]),
            **{f"{c} MiB": round(v / 2**20) for c, v in categories.items()},
            "tokens/s": round(record["training"]["tokens_per_second"])}


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    capability = torch.cuda.get_device_capability(0)
    print(f"{torch.cuda.get_device_name(0)} (sm_{capability[0]}{capability[1]}): the T4 path (fp16)"
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
    bad = [f"{r['run']} ({r['precision']}): {r['trainable dtype']}" for r in rows if r["trainable dtype"] != "float32"]
    if bad:
        print("FAILED: trainable weights must stay fp32 under autocast: " + "; ".join(bad), file=sys.stderr)
        return 1
    print("OK: every run trained fp32 weights under its autocast precision.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
