"""One run trained by several processes: the lab's training path, unchanged, under torchrun or accelerate launch.

    torchrun --standalone --nproc_per_node 2 -m helpers.tools.distributed --runs full lora-r8
    accelerate launch --multi_gpu --num_processes 4 -m helpers.tools.distributed --runs full --fsdp

Without --fsdp it is DDP: every process holds the whole model and a share of each step's examples, and the
gradients are averaged. With --fsdp (CUDA only) weights, gradients and optimizer state are sharded over the
processes, for a full fine-tune that does not fit one GPU; the memory prediction divides them by the number of
processes before the model is loaded (not QLoRA's 4-bit weights, which FSDP leaves whole). A QLoRA base is loaded onto
each process's own GPU (LOCAL_RANK). The profile's batch_size stays the global batch and the loss is normalised by
the whole step's tokens, so the token budget and the update are a single process's. One results file per run,
written once by the main process, records the processes, the global and per-device batch, and each process's memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..environment import FP32, launched_parallel
from ..runs import Lab
from ..specs import from_run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["lora-r8"], help="run ids: full, lora-r8, ..., qlora")
    parser.add_argument("--profile", default=None, help="smoke | cpu | gpu (default: $LAB_PROFILE or automatic)")
    parser.add_argument("--results", default=None, help="results folder (default: $LAB_RESULTS_DIR or results/)")
    parser.add_argument("--seeds", type=int, default=None, help="training seeds per run (default: the profile's)")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches accumulated per optimizer step")
    parser.add_argument("--fsdp", action="store_true", help="shard weights, gradients and optimizer state (CUDA)")
    parser.add_argument("--fp32", action="store_true", help="compute in fp32 (for exact comparisons between layouts)")
    parser.add_argument("--force", action="store_true", help="train again even if a matching result exists")
    args = parser.parse_args(argv)
    parallel = launched_parallel(args.accumulate, args.fsdp)
    lab = Lab(args.profile, results=args.results, seeds=args.seeds, parallel=parallel)
    if args.fsdp and lab.env.device != "cuda":
        raise SystemExit("--fsdp needs GPUs: PyTorch's FSDP through the Trainer does not run on CPU processes. Fix: "
                         "leave out --fsdp (DDP), or run on a machine with several GPUs.")
    if args.fp32:
        lab.env = dataclasses.replace(lab.env, precision=FP32)
    specs = [from_run_id(run_id) for run_id in args.runs]  # every id checked before anything trains
    if parallel.is_main:
        print(lab.describe(), flush=True)
    for spec in specs:
        for record in lab.run(spec, force=args.force):
            t = record["training"]
            print(f"{record['run_id']} seed {record['seed']}: loss after {record['eval']['loss_after']:.6f}, "
                  f"{t['processes']} process(es) x {t['per_device_batch']} examples (global batch {t['global_batch']}), "
                  f"{t['tokens']} tokens, {t['tokens_per_second']:.0f} tokens/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
