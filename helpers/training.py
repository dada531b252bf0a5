"""One training path for every method: TRL's SFTTrainer, with each of its defaults that matters set on purpose.

TRL 1.16 defaults that would silently change the comparison, and what the lab sets instead (tests check each):
- `bf16` is on unless `fp16` is set: a T4 has no bf16. The precision comes from helpers.environment.choose_precision.
- `gradient_checkpointing` is on (transformers 5 calls it activation_checkpointing): it trades speed for memory. Off
  for every method, recorded in the results.
- `max_length` is 1024 and truncates: a cut example loses its end of turn. The data is filtered to the profile's
  max_length before training (dropped, never cut), so TRL is given None.
- A QLoRA adapter is cast to bf16: trainable weights stay fp32 here, for every method alike.
- `logging_steps` is 10: the profile sets it.
- The loss goes through a fused LM head (log-probabilities in chunks, recomputed in backward). It saves the memory
  of the full-vocabulary logits, and on CUDA scores only the completion tokens; on a CPU it scores every position
  and `make bench` measured it slower there (notebooks/reference_results/bench.json), so CPU runs take the model's own loss on
  the full logits. Both are the same objective: summed token NLL / completion tokens in the step.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from peft import prepare_model_for_kbit_training
from transformers import PrinterCallback, Trainer, TrainerCallback
from trl import SFTConfig, SFTTrainer

from .environment import Environment, Parallel, heap_reuse
from .models import expected_lora_parameters, get_preset, linear_layer_names, load_model  # noqa: F401 (re-exported)
from .profiles import Profile
from .specs import RunSpec, check_targets, ordered_targets, resolve

PROGRESS_ENV = "LAB_PROGRESS"  # set by helpers.tools.execute: a file to append one progress line per logged step to


class DivergedError(RuntimeError):
    """The loss became NaN or infinite: nothing this run would record is a result."""


def loss_head_for(device: str) -> str:
    """The loss head LabTrainer uses on `device` (module docstring): "full logits" on a CPU, TRL's "fused" elsewhere."""
    return "full logits" if device == "cpu" else "fused"


def target_modules(spec: RunSpec, preset_name: str) -> list[str]:
    """The layers LoRA adapts, in the preset's order: the spec's own, or the preset's projections when it names none."""
    preset = get_preset(preset_name)
    return ordered_targets(spec.lora.target_modules or preset.lora_targets, preset.lora_targets)


def peft_config(spec: RunSpec, preset_name: str):
    """The spec's LoraConfig as it trains on this model (None for full fine-tuning)."""
    return None if spec.lora is None else resolve(spec, preset_name, torch.float32).lora


def build_base(spec: RunSpec, profile: Profile, env: Environment) -> torch.nn.Module:
    """The base model a resolved spec trains on: full precision, or loaded with the spec's BitsAndBytesConfig and
    prepared for k-bit training (QLoRA)."""
    spec = resolve(spec, profile.model, env.precision.dtype)
    quant = spec.quantization
    model = load_model(profile.model, env.device, quant)
    if spec.lora:
        check_targets(spec, target_modules(spec, profile.model), linear_layer_names(model))
    if quant is not None:
        # Freezes every base weight and casts 16-bit norms and embeddings to fp32 (the lab loads fp32, so there is
        # nothing to cast); checkpointing stays off for every method alike. What it changed is kept for notebook 03.
        before = parameter_states(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model.kbit_changes = kbit_changes(before, model)
    return model


def parameter_states(model: torch.nn.Module) -> dict[str, tuple[str, bool]]:
    return {name: (str(p.dtype).removeprefix("torch."), p.requires_grad) for name, p in model.named_parameters()}


def kbit_changes(before: dict[str, tuple[str, bool]], model: torch.nn.Module) -> list[dict]:
    """What prepare_model_for_kbit_training changed: parameters grouped by (dtype, trainable) before -> after."""
    groups: dict[tuple, list[str]] = {}
    for name, after in parameter_states(model).items():
        if before.get(name) != after:
            groups.setdefault((before.get(name), after), []).append(name)
    return [{"before": f"{b[0]}, {'trainable' if b[1] else 'frozen'}" if b else "absent",
             "after": f"{a[0]}, {'trainable' if a[1] else 'frozen'}", "tensors": len(names),
             "layers": ", ".join(sorted({n.split('.')[-2] if n.count('.') else n for n in names})[:6])}
            for (b, a), names in groups.items()]


def sft_settings(spec: RunSpec, profile: Profile, env: Environment, seed: int, output_dir: Path,
                 report_to: str = "none", parallel: Parallel = Parallel()) -> dict:
    """Every SFTConfig field the lab sets on purpose (a dict, so a test can check a T4's settings on a CPU).

    The profile's batch_size is the global batch: with K processes and A accumulation steps each process takes
    batch_size / (K * A) examples per micro-batch, and the loss is normalised by the tokens of the whole step on every
    process (average_tokens_across_devices), so the update is the one a single process would make.
    """
    spec = resolve(spec, profile.model, env.precision.dtype)
    distributed = {}
    if parallel.processes > 1:
        distributed = {"ddp_backend": "gloo" if env.device == "cpu" else None, "ddp_find_unused_parameters": False,
                       "average_tokens_across_devices": True}
    if parallel.fsdp:
        # Shards weights, gradients and optimizer state over the processes; each decoder layer is one unit
        # (transformers wraps the model's _no_split_modules).
        distributed.update(fsdp="full_shard auto_wrap", fsdp_config={"use_orig_params": True})
    return dict(
        output_dir=str(output_dir), run_name=Path(output_dir).name, seed=seed, data_seed=seed, **distributed,
        max_steps=profile.max_steps, per_device_train_batch_size=parallel.per_device_batch(profile.batch_size),
        gradient_accumulation_steps=parallel.accumulation,
        learning_rate=profile.rate_for(spec), lr_scheduler_type="linear",
        warmup_steps=profile.warmup_steps, max_grad_norm=1.0, weight_decay=0.0, optim=spec.optimizer,
        bf16=env.precision.bf16, fp16=env.precision.fp16,  # both explicit: TRL turns bf16 on when neither is set
        # TRL's default turns checkpointing on (through the deprecated gradient_checkpointing alias); off for every
        # method, so speed and memory compare.
        activation_checkpointing=False,
        max_length=None, padding_free=True, packing=False,  # examples already fit max_length; packed, no padding
        completion_only_loss=True, loss_type="nll",
        logging_strategy="steps", logging_steps=profile.logging_steps, logging_first_step=True,
        save_strategy="steps" if profile.checkpoint_steps else "no", save_steps=profile.checkpoint_steps or 1,
        save_total_limit=None, save_only_model=False,  # LabTrainer removes the older checkpoint once the new is whole
        eval_strategy="no", report_to=report_to,
        use_cpu=env.device == "cpu", dataloader_num_workers=0, disable_tqdm=bool(os.environ.get(PROGRESS_ENV)),
    )


# Why each SFTConfig field is set (notebook 01 shows them beside TRL's default; a test checks every chosen field has one).
REASONS = {
    "max_steps": "the token budget: the same number of optimizer steps for every method",
    "per_device_train_batch_size": "the same examples per step for every method (the profile's batch)",
    "learning_rate": "per method, from the profile (where its rates came from: printed with the spec)",
    "lr_scheduler_type": "linear decay after warm-up, the same for every method",
    "warmup_steps": "a few steps of rising learning rate, so AdamW's statistics settle before full steps",
    "max_grad_norm": "clip rare large gradients, the same for every method",
    "weight_decay": "no decay: a few hundred steps need no regulariser, and LoRA and full would decay other weights",
    "optim": "plain AdamW for every method, so the optimizer is never a hidden difference",
    "seed": "the training seed: data order and the adapters' initial weights",
    "data_seed": "the data order follows the training seed",
    "bf16": "set explicitly: TRL turns bf16 on when neither is set, and a T4 has no bf16",
    "fp16": "fp16 autocast with a loss scaler on a T4, off elsewhere",
    "activation_checkpointing": "TRL turns it on by default; off for every method, so speed and memory compare",
    "max_length": "None: examples longer than the profile's max_length were dropped, never cut (a cut loses the end of turn)",
    "padding_free": "the step's examples packed into one row without padding: no compute on pad tokens",
    "packing": "no: examples are not merged into fixed-length blocks, each keeps its own positions",
    "completion_only_loss": "the loss is on the answer and its end-of-turn token only, not on the prompt",
    "loss_type": "token-level NLL summed over the step's completion tokens / their count",
    "logging_steps": "the loss curve's resolution",
    "save_steps": "checkpoints to resume from after a disconnect",
    "save_only_model": "no: a checkpoint keeps the optimizer state too, so a resumed run equals an uninterrupted one",
    "eval_strategy": "no evaluation during training: the lab evaluates before and after, identically for every method",
    "use_cpu": "train where the lab found no GPU",
    "dataloader_num_workers": "the data is tokenized already: no worker processes to start",
}


def explain_settings(args: SFTConfig) -> list[dict]:
    """The SFTConfig fields the lab sets on purpose: the value the trainer holds, TRL's default, and why."""
    defaults = SFTConfig.__dataclass_fields__
    rows = []
    for name, reason in REASONS.items():
        value = getattr(args, name)
        default = defaults[name].default
        rows.append({"field": name, "value": getattr(value, "value", value), "TRL default": getattr(default, "value", default),
                     "why": reason})
    return rows


def sft_config(spec: RunSpec, profile: Profile, env: Environment, seed: int, output_dir: Path,
               report_to: str = "none", parallel: Parallel = Parallel()) -> SFTConfig:
    return SFTConfig(**sft_settings(spec, profile, env, seed, output_dir, report_to, parallel))


@dataclass
class StepRecord:
    step: int
    seconds: float  # wall time of the optimizer step: data, forward, backward, optimizer (checkpoint saves excluded)
    tokens: int  # real (non-pad) tokens trained in this step
    targets: int  # completion tokens the loss predicted in this step
    forward_backward: float  # seconds in forward + backward
    data: float  # seconds between the previous step's end and this step's forward
    warmup: bool  # the first step of a process pays for lazy initialisation: left out of the throughput
    # The fp16 loss scaler found inf/NaN gradients and skipped the update: forward and backward ran (the step counts in
    # the throughput), but its tokens were not trained. Default: markers of checkpoints written before it existed.
    skipped: bool = False


CHECKPOINT_DONE = "lab_checkpoint.json"  # written last: a checkpoint folder without it is incomplete and ignored


class LabTrainer(SFTTrainer):
    """SFTTrainer plus what none of the libraries records: the tokens each optimizer step really trained (counted
    from the batch the model saw, not from what the data loader fetched ahead), whether the fp16 loss scaler skipped
    its update, time per step, a stop on NaN, checkpoints that count only once complete, and one more step after
    training, measured for memory."""

    def __init__(self, *args, fingerprint: str = "", loraplus_lr_ratio: float | None = None, **kwargs):
        self.loraplus_lr_ratio = loraplus_lr_ratio  # before super().__init__: create_optimizer may run inside it
        start = time.perf_counter()
        super().__init__(*args, **kwargs)
        # PEFT wraps the base in here: PiSSA's SVD, DoRA's first weight norms; the same for every method's record
        self.setup_seconds = time.perf_counter() - start
        self.fingerprint = fingerprint
        self.steps: list[StepRecord] = []
        self.probe = None  # a helpers.memory.StepMemoryProbe while measure_step runs
        self._pending = [0, 0, 0.0]  # tokens, targets, forward+backward seconds of the step being accumulated
        self._last_end: float | None = None
        self._fetched: float | None = None
        self._closed_here = 0  # steps closed in this process: its first pays for lazy initialisation (warm-up)
        self.synced = 0  # leading step records whose counts are already summed over processes

    def create_optimizer(self, model=None):
        """Trainer's AdamW, or for LoRA+ PEFT's create_loraplus_optimizer with that same AdamW class and arguments
        (betas, eps, no decay), B's group at loraplus_lr_ratio times A's rate. The schedule scales every group alike."""
        if self.loraplus_lr_ratio is None or self.optimizer is not None:
            return super().create_optimizer(model)
        from peft.optimizers import create_loraplus_optimizer

        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
        self.optimizer = create_loraplus_optimizer(self.model if model is None else model, optimizer_cls,
                                                   loraplus_lr_ratio=self.loraplus_lr_ratio,
                                                   loraplus_weight_decay=self.args.weight_decay, **kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with self.probe.forward() if self.probe is not None and self.probe.active else nullcontext():
            if self.loss_head == "full logits" and not return_outputs:  # faster on a CPU (module docstring)
                batch = {k: inputs[k] for k in ("input_ids", "labels", "position_ids") if k in inputs}
                return Trainer.compute_loss(self, model, batch, False, num_items_in_batch)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    @property
    def loss_head(self) -> str:
        return loss_head_for("cpu" if self.args.use_cpu else self.args.device.type)

    def training_step(self, model, inputs, num_items_in_batch=None):
        start = time.perf_counter()
        if self._fetched is None:
            self._fetched = start
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise DivergedError(
                f"the training loss became {loss.item()} at step {self.state.global_step + 1}: the run diverged and "
                "records nothing. Fix: lower the learning rate (a typical range is 1e-5 to 1e-3), or on a T4 check "
                "that the precision is fp16 with a loss scaler (helpers.environment.choose_precision).")
        self._pending[0] += int(inputs["input_ids"].numel())  # padding-free: one row, no padding
        self._pending[1] += int((inputs["labels"][:, 1:] != -100).sum())
        self._pending[2] += time.perf_counter() - start
        return loss

    def close_step(self) -> StepRecord:
        end = time.perf_counter()
        last = self._last_end if self._last_end is not None else end
        data = max(0.0, (self._fetched or last) - last)
        # Trainer still counts a step whose update the loss scaler skipped (global_step, max_steps); accelerate says
        # which ones (the same on every process: the scaler checks gradients already reduced over them).
        record = StepRecord(self.state.global_step, end - last, self._pending[0], self._pending[1], self._pending[2],
                            data, warmup=self._closed_here == 0,
                            skipped=bool(self.accelerator.optimizer_step_was_skipped))
        self.steps.append(record)
        self._closed_here += 1
        self._pending, self._last_end, self._fetched = [0, 0, 0.0], end, None
        return record

    def measure_step(self, examples: Sequence[int], probe) -> dict[str, int]:
        """One more optimizer step, after training, with the training examples `examples` as every micro-batch,
        measured by `probe` (a helpers.memory.StepMemoryProbe); its result.

        It runs what Trainer's loop runs for a step: forward and backward of each micro-batch (all but the last
        without gradient sync), gradient clipping, the optimizer step, zero_grad. After training, because the
        optimizer state then exists as in every step after the first (AdamW creates it in the first), and because a
        step placed in training would change the data order or the updates. It changes nothing the run keeps: the
        trainable weights are copied to the CPU before and written back after, the RNG is forked (dropout), the
        learning-rate schedule is not stepped, and no step record, token or second is counted. The optimizer state
        it updates is not kept: a run saves its model, and its checkpoints are already written.
        """
        model = self.model_wrapped  # what the training loop steps (DDP/FSDP wrapped when distributed)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        kept = [p.detach().to("cpu", copy=True) for p in trainable]
        batch = self.data_collator([self.train_dataset[i] for i in examples])
        micro_batches = [batch] * self.args.gradient_accumulation_steps
        num_items = self._get_num_items_in_batch(micro_batches, self.args.device)  # the loop's loss normaliser
        cuda = [self.args.device] if self.args.device.type == "cuda" else []
        self.probe = probe
        try:
            with torch.random.fork_rng(devices=cuda):
                probe.start(self.model, self.optimizer)
                for k, inputs in enumerate(micro_batches):
                    last = k == len(micro_batches) - 1
                    with nullcontext() if last else self.accelerator.no_sync(model):
                        super().training_step(model, inputs, num_items)  # not counted as training
                if self.args.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)
                probe.before_optimizer_step(self.model)
                self.optimizer.step()
                probe.after_optimizer_step(self.optimizer)
                model.zero_grad()
                return probe.stop()
        finally:
            probe.close()  # stops the CPU profiler if the step raised
            self.probe = None
            with torch.no_grad():
                for param, saved in zip(trainable, kept):
                    param.copy_(saved)

    def _save_checkpoint(self, model, trial):
        """The library's checkpoint, then a completion marker with this run's step records; only then the older
        checkpoint is removed, so an interruption at any moment leaves one complete checkpoint to resume from."""
        super()._save_checkpoint(model, trial)
        self.sync_counts()
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        if self.args.should_save:  # the main process, once every process has written its part
            from .results import write_json_atomic
            write_json_atomic({"fingerprint": self.fingerprint, "step": self.state.global_step,
                               "steps": [asdict(s) for s in self.steps]}, folder / CHECKPOINT_DONE)
            for older in Path(self.args.output_dir).glob("checkpoint-*"):
                if older != folder:
                    shutil.rmtree(older, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._last_end = time.perf_counter()  # the save is not training: the next step's clock starts after it

    def sync_counts(self) -> None:
        """With several processes each counted its own share of a step: sum the shares (all processes call this)."""
        if self.accelerator.num_processes == 1:
            return
        from accelerate.utils import gather_object
        new = self.steps[self.synced:]
        shares = gather_object([[(s.tokens, s.targets) for s in new]])
        for k, s in enumerate(new):
            s.tokens, s.targets = sum(r[k][0] for r in shares), sum(r[k][1] for r in shares)
        self.synced = len(self.steps)

    def resume_records(self, checkpoint: Path) -> None:
        saved = json.loads((checkpoint / CHECKPOINT_DONE).read_text())
        self.steps = [StepRecord(**s) for s in saved["steps"]]
        self.synced = len(self.steps)


def complete_checkpoint(folder: Path, fingerprint: str) -> Path | None:
    """The latest complete checkpoint of this exact run in `folder`, or None (incomplete ones are deleted)."""
    found = None
    for path in sorted(Path(folder).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])):
        marker = path / CHECKPOINT_DONE
        try:
            ok = json.loads(marker.read_text()).get("fingerprint") == fingerprint
        except (OSError, json.JSONDecodeError):
            ok = False
        if ok:
            found = path
        else:
            shutil.rmtree(path, ignore_errors=True)  # half-written (interrupted while saving) or another run's
    return found


class StepClock(TrainerCallback):
    """Closes each optimizer step on the trainer (after the optimizer ran), skips the useless checkpoint at the very
    last step (the run saves its result right after), and prints progress when asked."""

    def __init__(self, trainer: LabTrainer, label: str):
        self.trainer, self.label = trainer, label

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._last_end = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.trainer.close_step()
        if state.global_step >= state.max_steps:
            control.should_save = False
        progress = os.environ.get(PROGRESS_ENV)
        if progress and (state.global_step % args.logging_steps == 0 or state.global_step == state.max_steps):
            rate, seconds = _rate(self.trainer.steps)
            timed = max(1, len(_timed(self.trainer.steps)))
            left = (state.max_steps - state.global_step) * seconds / timed
            with open(progress, "a") as handle:
                handle.write(f"[{self.label}] step {state.global_step}/{state.max_steps} · {rate:.0f} tokens/s · "
                             f"about {left:.0f} s left\n")


def _timed(steps: list[StepRecord]) -> list[StepRecord]:
    """The steps throughput is measured on: not the warm-up (all steps when none is left)."""
    return [s for s in steps if not s.warmup] or steps


def _rate(steps: list[StepRecord]) -> tuple[float, float]:
    """(real tokens/s, seconds) over the timed steps."""
    timed = _timed(steps)
    seconds = sum(s.seconds for s in timed)
    return (sum(s.tokens for s in timed) / seconds if seconds > 0 else 0.0), seconds


def skips_change_budget(skipped_at: Sequence[int], steps: int) -> bool:
    """Whether the loss scaler's skipped updates change a run's token budget enough to flag it (README, "fp16
    skipped updates").

    Skips before the first applied update are the scaler finding its scale (it starts at 2**16 and halves on each
    overflow): no weight has moved yet and the learning-rate schedule does not advance on a skipped step, so the run
    starts its schedule at its first applied update and stops those steps short of its end, where the linear decay
    has the rate near zero; they are recorded, not flagged. A skip after an applied update loses a batch in the middle
    of training (the lab's profiles train far fewer steps than the 2,000 clean steps after which the scaler tries a
    larger scale), and a run with no applied update trained nothing: both are flagged."""
    skipped = set(skipped_at)
    applied = [step for step in range(1, steps + 1) if step not in skipped]
    return not applied or any(step > applied[0] for step in skipped)


def _step_rates(steps: list[StepRecord]) -> list[float]:
    """Real tokens/s of each step (a step timed at zero seconds has no rate)."""
    return [s.tokens / s.seconds for s in steps if s.seconds > 0]


def _median_rate(steps: list[StepRecord]) -> float:
    """Real tokens/s of the median step."""
    rates = _step_rates(steps)
    return statistics.median(rates) if rates else 0.0


def _upper_quartile_rate(steps: list[StepRecord]) -> float:
    """Real tokens/s of the step at the upper quartile of rates (linear interpolation, as numpy's percentile)."""
    rates = _step_rates(steps)
    if len(rates) < 2:
        return rates[0] if rates else 0.0
    return statistics.quantiles(rates, n=4, method="inclusive")[2]


@dataclass
class TrainingOutcome:
    steps: int  # optimizer steps, skipped ones included (the Trainer counts them)
    tokens: int  # real tokens of every step (forward and backward ran; the throughput counts them)
    target_tokens: int  # completion tokens predicted, all steps
    seconds: float  # the timed steps: not the first (the same steps as tokens_per_second)
    tokens_per_second: float
    # The median step's rate: a burst of load on a shared machine (a few slow steps) moves the mean, not the median.
    # Fair across methods because a seed fixes the data order, so every method sees the same steps.
    tokens_per_second_median: float
    seconds_total: float  # wall time of trainer.train(), warm-up step and checkpoint saves included
    optimizer: str
    learning_rate: float
    gradient_checkpointing: bool
    loss_head: str  # "fused" (TRL's chunked LM head) | "full logits"
    trainable_dtypes: list[str]  # after training: fp32 under every autocast precision
    resumed_from_step: int | None
    step_seconds: dict[str, float]  # mean seconds per step: forward+backward, optimizer and the rest, data
    log: list[dict] = field(default_factory=list)
    skipped_at: list[int] = field(default_factory=list)  # steps whose update the fp16 loss scaler skipped
    trained_tokens: int = 0  # real tokens of the steps whose update was applied: the token budget actually trained
    # [step, real tokens, seconds] of each timed step: the rates above recomputable, and a slow stretch (machine load)
    # or a slow start (a warm-up beyond the first step) visible in the record itself.
    step_times: list[list[float]] = field(default_factory=list)
    # The upper quartile of the step rates: other work on the machine only ever slows a step, so the faster steps show
    # the method's own speed; a slow stretch over up to three quarters of the steps leaves it unchanged (the median
    # moves once it covers half). What the tables, figures and intervals use (README, "Throughput").
    tokens_per_second_upper_quartile: float = 0.0
    setup_seconds: float = 0.0  # building the trainer: PEFT's wrapping and initialisation (PiSSA's SVD) included

    @property
    def budget_changed(self) -> bool:
        return skips_change_budget(self.skipped_at, self.steps)


def make_trainer(model: torch.nn.Module, spec: RunSpec, profile: Profile, env: Environment, train_set, tokenizer,
                 seed: int, output_dir: Path, label: str, fingerprint: str = "", report_to: str = "none",
                 parallel: Parallel = Parallel()) -> LabTrainer:
    """The trainer for one (spec, seed): PEFT wraps the base inside SFTTrainer, after TRL seeds the RNG, so the
    adapter's initial weights depend on the seed alone."""
    spec = resolve(spec, profile.model, env.precision.dtype)  # a no-op for Lab.trainer's already resolved spec
    trainer = LabTrainer(model=model, args=sft_config(spec, profile, env, seed, output_dir, report_to, parallel),
                         train_dataset=train_set, peft_config=spec.lora,
                         processing_class=tokenizer, fingerprint=fingerprint,
                         loraplus_lr_ratio=spec.loraplus_lr_ratio)
    for param in trainer.model.parameters():  # undo TRL's bf16 cast of QLoRA adapters: trainable weights stay fp32
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    trainer.add_callback(StepClock(trainer, label))
    if os.environ.get(PROGRESS_ENV):  # headless: StepClock prints one line per logged step instead of the log dicts
        trainer.remove_callback(PrinterCallback)
    return trainer


PISSA_INITIAL = "pissa-initial"  # in a PiSSA run's checkpoint folder: its adapter before training


def save_initial_adapter(trainer: LabTrainer, folder: Path) -> Path:
    """A PiSSA adapter as initialised, before any step: what PEFT needs to convert the trained one into a plain LoRA
    adapter for the original base (save_adapter). PiSSA moved W's principal part into A and B and left W minus it in
    the base, so the trained adapter alone is only right on that residual base."""
    path = Path(folder) / PISSA_INITIAL
    trainer.model.save_pretrained(str(path))
    return path


def save_adapter(model, spec: RunSpec, initial: Path | None):
    """The function that saves a run's model into a folder: PEFT's save_pretrained, which for PiSSA, given the
    initial adapter, saves the difference trained - initial as a rank-2r LoRA adapter that applies to the original
    base (path_initial_model_for_weight_conversion), like every other run's."""
    if not spec.uses("pissa"):
        return model.save_pretrained
    if initial is None:
        raise ValueError(f"{spec.run_id}: a PiSSA adapter needs its initial adapter (save_initial_adapter, before "
                         "training) to be saved for the original base.")
    return lambda folder: model.save_pretrained(folder, path_initial_model_for_weight_conversion=str(initial))


def train(trainer: LabTrainer, resume_from: Path | None = None) -> TrainingOutcome:
    """Train to the profile's last step, from a complete checkpoint when given one (same data order, RNG and
    optimizer state: the result matches an uninterrupted run)."""
    if resume_from is not None:
        trainer.resume_records(resume_from)
    start = time.perf_counter()
    with heap_reuse():  # outside it, every step page-faults fresh memory on a CPU (measured in heap_reuse's docstring)
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    total = time.perf_counter() - start
    steps = trainer.steps
    trainer.sync_counts()
    rate, seconds = _rate(steps)
    timed = _timed(steps)
    per_step = {"forward_backward": sum(s.forward_backward for s in timed) / len(timed),
                "data": sum(s.data for s in timed) / len(timed)}
    per_step["optimizer_and_rest"] = max(0.0, seconds / len(timed) - per_step["forward_backward"] - per_step["data"])
    log = [{"step": e["step"], "loss": e["loss"], "lr": e.get("learning_rate"), "grad_norm": e.get("grad_norm")}
           for e in trainer.state.log_history if "loss" in e and math.isfinite(e["loss"])]
    optim = trainer.args.optim
    return TrainingOutcome(
        steps=trainer.state.global_step, tokens=sum(s.tokens for s in steps), target_tokens=sum(s.targets for s in steps),
        seconds=seconds, tokens_per_second=rate, tokens_per_second_median=_median_rate(timed), seconds_total=total,
        optimizer=getattr(optim, "value", str(optim)),
        learning_rate=trainer.args.learning_rate, gradient_checkpointing=bool(trainer.args.activation_checkpointing),
        loss_head=trainer.loss_head,
        trainable_dtypes=sorted({str(p.dtype).removeprefix("torch.") for p in trainer.model.parameters()
                                 if p.requires_grad}),
        resumed_from_step=int(resume_from.name.split("-")[-1]) if resume_from else None,
        step_seconds=per_step, log=log, skipped_at=[s.step for s in steps if s.skipped],
        trained_tokens=sum(s.tokens for s in steps if not s.skipped),
        step_times=[[s.step, s.tokens, float(f"{s.seconds:.6g}")] for s in timed],
        tokens_per_second_upper_quartile=_upper_quartile_rate(timed), setup_seconds=trainer.setup_seconds)
