"""The rows `make bench` times: the naive recipe of the seed project and the lab's training path, one lever apart.

Rows (LoRA r8, then full fine-tuning):
- naive baseline (seed-002 recipe): plain transformers.Trainer, every example padded to 512 tokens, labels =
  input_ids with the padding as targets, fp32, LoRA dropout 0.05.
- padded to the batch's longest (LoRA only): the same Trainer, padding only to the longest example of the step,
  padding out of attention and loss (the lab's labels): the padding lever alone.
- packed, no padding (fp32, dropout 0.05): helpers.training with fp32 forced: the packing lever.
- + bf16 autocast: helpers.training as detect() chooses it, LoRA dropout still 0.05: the precision lever.
- lab (+ LoRA dropout 0): helpers.training exactly as `make lab` runs it (full: "lab (+ bf16 autocast)").
- lab with TRL's fused LM head: the same, with SFTTrainer.compute_loss instead of LabTrainer's full-logits loss.

Every row is a real Trainer run (transformers.Trainer for the naive and padded rows, helpers.training's build_base +
make_trainer + train for the others), timed by timing.StepTimer.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import MethodType
from typing import Callable

from datasets import Dataset
from peft import get_peft_model
from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainingArguments, default_data_collator
from trl import SFTTrainer

from .. import specs
from ..environment import Environment, choose_precision
from ..models import load_model
from ..runs import Lab
from ..training import PROGRESS_ENV, build_base, make_trainer, peft_config, train
from .timing import StepTimer

NAIVE = "naive baseline (seed-002 recipe)"
NAIVE_WIDTH = 512  # the recipe's padding="max_length", max_length=512
NAIVE_DROPOUT = 0.05  # the recipe's lora_dropout
PADDED = "padded to the batch's longest (fp32, dropout 0.05)"
PACKED = "packed, no padding (fp32, dropout 0.05)"
PACKED_FULL = "packed, no padding (fp32)"
BF16 = "+ bf16 autocast (dropout 0.05)"
LAB = "lab (+ LoRA dropout 0)"
LAB_FULL = "lab (+ bf16 autocast)"
FUSED = "lab with TRL's fused LM head"
# The levers in order: each row changes one thing from the row before it (the name says what).
LORA_CHAIN = ((NAIVE, ""), (PADDED, "padding"), (PACKED, "packing"), (BF16, "bf16 autocast"), (LAB, "LoRA dropout 0"))
FULL_CHAIN = ((NAIVE, ""), (PACKED_FULL, "padding + packing"), (LAB_FULL, "bf16 autocast"))


@dataclass
class Setup:
    """What every row shares: the lab (cpu profile with the bench's step count, model, examples), a scratch folder."""
    lab: Lab
    output_dir: Path

    @property
    def env(self) -> Environment:
        return self.lab.env


def recipe_padding(dataset: Dataset, tokenizer, width: int = NAIVE_WIDTH) -> Dataset:
    """The recipe's tokenization on the lab's own tokens: padded to `width`, labels = input_ids, padding included."""
    def pad(batch: dict) -> dict:
        padded = tokenizer.pad({"input_ids": batch["input_ids"]}, padding="max_length", max_length=width)
        return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"],
                "labels": [list(ids) for ids in padded["input_ids"]]}
    return dataset.map(pad, batched=True, remove_columns=dataset.column_names)


def run_recipe(setup: Setup, spec: specs.RunSpec, fixed_width: bool) -> StepTimer:
    """The seed recipe: plain transformers.Trainer, fp32; batch, AdamW, learning rate and schedule as the lab's."""
    lab, profile = setup.lab, setup.lab.profile
    model = load_model(profile.model, "cpu")
    if spec.lora:
        model = get_peft_model(model, peft_config(spec, profile.model))
    if fixed_width:
        data, collator = recipe_padding(lab.data.train, lab.tokenizer), default_data_collator
    else:  # only the padding changes: to the step's longest example, masked out of attention and loss
        data, collator = lab.data.train, DataCollatorForSeq2Seq(lab.tokenizer, padding="longest")
    args = TrainingArguments(
        output_dir=str(setup.output_dir), seed=lab.seeds[0], data_seed=lab.seeds[0], max_steps=profile.max_steps,
        per_device_train_batch_size=profile.batch_size, learning_rate=profile.rate_for(spec),
        lr_scheduler_type="linear", warmup_steps=profile.warmup_steps, max_grad_norm=1.0, weight_decay=0.0,
        optim="adamw_torch", bf16=False, fp16=False, use_cpu=True, save_strategy="no", report_to="none",
        logging_steps=profile.max_steps, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
    trainer.remove_callback(PrinterCallback)  # a quiet bench output; the Trainer still logs as the recipe's did
    timer = StepTimer().attach(trainer)
    trainer.train()
    return timer


def run_lab(setup: Setup, spec: specs.RunSpec, env: Environment, fused_head: bool = False) -> StepTimer:
    """helpers.training as Lab.run_seed calls it; `fused_head` swaps in SFTTrainer's own (fused LM head) loss."""
    lab = setup.lab
    model = build_base(spec, lab.profile, env)
    trainer = make_trainer(model, spec, lab.profile, env, lab.data.train, lab.tokenizer, lab.seeds[0],
                           setup.output_dir, f"bench {spec.run_id}")
    if fused_head:
        trainer.compute_loss = MethodType(SFTTrainer.compute_loss, trainer)
    timer = StepTimer().attach(trainer)
    outcome = train(trainer)
    if [s.tokens for s in trainer.steps] != [s.real_tokens for s in timer.steps]:  # the lab counts the same steps
        raise RuntimeError(f"bench {spec.run_id}: the lab's step records and the bench timer disagree on the tokens")
    timer.lab_rate = outcome.tokens_per_second
    return timer


def plan(setup: Setup) -> list[tuple[str, str, str, Callable[[], StepTimer]]]:
    """(pipeline, method, precision, run) in table order: LoRA r8 lever by lever, then full fine-tuning."""
    lab_env = setup.env
    fp32_env = replace(lab_env, precision=choose_precision("cpu", native_bf16=False))
    lab_precision = lab_env.precision.name
    # The naive LoRA adapts the same 7 projections as the lab (only its dropout is the recipe's): the same adapted
    # layers mean the same work per real token, so the ratio measures the pipeline, not the adapter.
    naive_lora, lab_lora, full = specs.lora(8, dropout=NAIVE_DROPOUT), specs.lora(8), specs.full()
    rows = [
        (NAIVE, "lora-r8", "fp32", lambda: run_recipe(setup, naive_lora, fixed_width=True)),
        (PADDED, "lora-r8", "fp32", lambda: run_recipe(setup, naive_lora, fixed_width=False)),
        (PACKED, "lora-r8", "fp32", lambda: run_lab(setup, naive_lora, fp32_env)),
        (BF16, "lora-r8", lab_precision, lambda: run_lab(setup, naive_lora, lab_env)),
        (LAB, "lora-r8", lab_precision, lambda: run_lab(setup, lab_lora, lab_env)),
        (FUSED, "lora-r8", lab_precision, lambda: run_lab(setup, lab_lora, lab_env, fused_head=True)),
        (NAIVE, "full", "fp32", lambda: run_recipe(setup, full, fixed_width=True)),
        (PACKED_FULL, "full", "fp32", lambda: run_lab(setup, full, fp32_env)),
        (LAB_FULL, "full", lab_precision, lambda: run_lab(setup, full, lab_env)),
        (FUSED, "full", lab_precision, lambda: run_lab(setup, full, lab_env, fused_head=True)),
    ]
    if lab_precision == "fp32":  # a CPU without bf16 matmuls: no bf16 lever, the packed fp32 full run is the lab's
        rows = [r for r in rows if r[0] not in (BF16, PACKED_FULL)]
    return rows


@contextmanager
def headless(progress: Path):
    """The lab path as `make lab` runs it: progress lines to a file instead of progress bars and log dicts."""
    before = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = str(progress)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = before
