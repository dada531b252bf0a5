"""A notebook's session: profile, data, and the run of one (spec, seed) end to end, skipped when already done."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from dataclasses import replace
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Sequence

import torch
from trl import SFTConfig

from . import baseline, memory, profiles, results, specs, tracking
from .data import LabData, longest_examples, prepare_data, prepare_text
from .environment import (ISOLATE_ENV, Environment, Parallel, detect, full_checkpoints_dir, launched_parallel, results_dir,
                          write_directory_atomically)
from .evaluation import generate, perplexity
from .memory import MemoryMeter, release
from .models import (expected_lora_parameters, get_preset, load_config, load_model, load_tokenizer, meta_model,
                     packed_row_limit, parameter_count)
from .profiles import Profile, get_profile
from .specs import RunSpec, check
from .training import (LabTrainer, build_base, complete_checkpoint, make_trainer, save_adapter, save_initial_adapter,
                       sft_config, train)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


class Lab:
    """What one notebook works with. Settings left as None take the profile's value."""

    def __init__(self, profile: str | None = None, results: str | Path | None = None,
                 seeds: int | list[int] | None = None, report_to: str = "none", parallel: Parallel | None = None,
                 **overrides):
        self.report_to = tracking.check_report_to(report_to)
        self.profile: Profile = get_profile(profile, seeds=seeds, **overrides)
        self.env: Environment = detect()
        self.results_dir = Path(results) if results else results_dir()
        # what a fresh process needs to rebuild this Lab for one isolated run (run_seed)
        self._rebuild = {"profile": self.profile.name, "seeds": list(self.profile.seeds), "report_to": report_to,
                         "results": str(self.results_dir.resolve()), **overrides}
        self._detected = (self.env, parallel is None)  # a fresh process rebuilds only a detected env and parallel
        # Under torchrun / accelerate launch: several processes train one run (helpers.tools.distributed)
        parallel = parallel or launched_parallel()
        parallel.per_device_batch(self.profile.batch_size)  # refused now if the batch cannot be split
        # A model whose attention takes only rows up to its context (GPT-Neo) trains each step as several packed
        # rows within it: accumulated micro-batches of the same examples, the loss normalised by the whole step's
        # tokens (as for several processes), so the token budget and the update stay those of one row.
        self.row_limit = self._row_limit(parallel)
        self.parallel: Parallel = parallel if self.row_limit is None else parallel.with_rows_within(
            self.profile.batch_size, self.profile.max_length, self.row_limit)

    def _row_limit(self, parallel: Parallel) -> int | None:
        """The model's packed-row limit (helpers.models.packed_row_limit) where this profile's rows could pass it.
        A limit is the model's max_position_embeddings, which its preset's context records: rows within the context
        need no look at the config."""
        p = self.profile
        if parallel.per_device_batch(p.batch_size) * p.max_length <= get_preset(p.model).context:
            return None
        return packed_row_limit(meta_model(load_config(p.model)))

    def describe(self) -> str:
        p = self.profile
        forgetting = f"; forgetting on {p.forgetting}" if p.forgetting else ""
        rows = (f" (packed rows of at most {self.row_limit} tokens, all this model's attention takes; evaluation "
                "packs too)" if self.row_limit else "")
        return (f"{self.env.describe()}\nprofile {p.name}: model {p.model}, data {p.dataset}, "
                f"{p.max_steps} steps x {p.batch_size} examples (max {p.max_length} tokens), "
                f"held-out up to {p.eval_examples} examples (the split decides; each record has the count)"
                f"{forgetting}; training seeds {list(p.seeds)}; "
                f"{self.parallel.describe()}{rows}\nresults -> {self.results_dir}")

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.profile.seeds

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.profile.model)

    @cached_property
    def data(self) -> LabData:
        p = self.profile
        return prepare_data(p.dataset, self.tokenizer, self.tokenizer.chat_template is not None, p.max_length,
                            p.train_examples, p.eval_examples, p.generation_prompts, p.data_seed,
                            p.validation_examples)

    @cached_property
    def forgetting_set(self):
        p = self.profile
        if not p.forgetting:
            return None
        return prepare_text(p.forgetting, self.tokenizer, p.max_length, p.forgetting_tokens, p.data_seed)

    # ---------------------------------------------------------------- where things live

    @cached_property
    def settings(self) -> dict:
        """This lab's settings set (helpers.results.settings_set): runs compare only with runs of the same set."""
        return results.settings_set(self.profile, self.data.fingerprint)

    def result_path(self, run_id: str, seed: int) -> Path:
        """The results file of (run, seed) under this lab's settings: in the results folder for the profile's standard
        settings, in its set-<id>/ for others (a MAX_STEPS demo), never over a run made under other settings
        (helpers.results.run_folder). The run's checkpoints and saved adapter or model go beside it."""
        name = results.file_name(run_id, seed)
        return results.run_folder(self.results_dir, self.settings, name) / name

    def artifact_path(self, record: dict) -> Path:
        return self.results_dir / record["artifact"]["path"]

    def checkpoint_dir(self, spec: RunSpec, seed: int) -> Path:
        """Where (spec, seed) saves its resumable checkpoints: beside its results file; full fine-tuning's (weights
        and AdamW state, ~12 bytes per parameter each) under $LAB_FULL_CHECKPOINTS_DIR where that is set (on Colab
        the runtime's own disk, so that they never fill Google Drive: helpers.colab)."""
        path = self.result_path(spec.run_id, seed)
        elsewhere = full_checkpoints_dir()
        if spec.method == "full" and elsewhere is not None:  # set-<id>/ kept: settings sets stay apart there too
            return elsewhere / path.parent.relative_to(self.results_dir) / path.stem
        return path.parent / "checkpoints" / path.stem

    # ---------------------------------------------------------------- measuring

    def base_model(self, quantization=None) -> torch.nn.Module:
        """The untouched base model: full precision, or 4-bit when given a BitsAndBytesConfig (computing in this
        device's precision)."""
        config = None if quantization is None else specs.with_compute_dtype(quantization, self.env.precision.dtype)
        return load_model(self.profile.model, self.env.device, config)

    def evaluate(self, model: torch.nn.Module, examples: int | None = None) -> dict:
        """Held-out perplexity; examples=N: over the first N held-out examples only (a quick check)."""
        dataset = self.data.eval if examples is None else self.data.eval.select(range(min(examples, len(self.data.eval))))
        return perplexity(model, dataset, self.profile.eval_batch_tokens, self.tokenizer.pad_token_id)

    def evaluate_forgetting(self, model: torch.nn.Module) -> dict | None:
        if self.forgetting_set is None:
            return None
        return perplexity(model, self.forgetting_set, self.profile.eval_batch_tokens, self.tokenizer.pad_token_id)

    def generate(self, model: torch.nn.Module, prompts: int | None = None, tokens: int | None = None,
                 precision: Precision | None = None) -> list[str]:
        """Greedy answers to the profile's fixed prompts (prompts=N: the first N only; tokens=N: at most N new tokens
        instead of the profile's generation_tokens), in the training precision unless another is given."""
        return generate(model, self.tokenizer, self.data.prompt_ids[:prompts], tokens or self.profile.generation_tokens,
                        precision or self.env.precision)

    def largest_batch(self, processes: int | None = None) -> list[int]:
        """The training examples of the largest micro-batch the data can form: one device's share of a step
        (batch_size / (processes x accumulation) examples), the longest ones. The same for every method and seed,
        so the memory measured and predicted on it answers "will it fit, whatever the order?". processes: for that
        many processes sharing each step (default: this session's layout)."""
        layout = replace(self.parallel, processes=processes or self.parallel.processes)
        return longest_examples(self.data.train, layout.per_device_batch(self.profile.batch_size))

    def largest_batch_tokens(self, processes: int | None = None) -> int:
        """Tokens of largest_batch(): the sum of its examples' lengths (padding-free, they form one row)."""
        lengths = self.data.train.select(self.largest_batch(processes))["input_ids"]
        return sum(len(ids) for ids in lengths)

    def predict_memory(self, spec: RunSpec, tokens: int | None = None, processes: int = 1,
                       sharded: bool = False) -> dict[str, int]:
        """Bytes one training step of `spec` needs on one device, by category, from the spec and the architecture.
        tokens: one device's micro-batch; by default the largest batch's (largest_batch_tokens), which the run
        measures too. processes, sharded: for another layout than this session's (FSDP with sharded=True)."""
        processes = processes if processes > 1 else self.parallel.processes
        sharded = sharded or self.parallel.fsdp
        tokens = tokens or self.largest_batch_tokens(processes)
        return memory.predict(load_config(self.profile.model), spec, self.env.precision.name, self.env.device,
                              tokens, processes, sharded, targets=get_preset(self.profile.model).lora_targets)

    def check_fits(self, spec: RunSpec) -> None:
        """On a GPU, refuse before loading anything a run whose predicted peak exceeds the free memory."""
        if self.env.device != "cuda":
            return  # a CPU run swaps or is killed by the OS; its memory is the machine's, not a fixed card's
        release()  # a trainer a notebook built to inspect and deleted sits in a reference cycle: not free until collected
        free, _ = torch.cuda.mem_get_info()
        preset = get_preset(self.profile.model)
        where = f" on each of {self.parallel.processes} GPUs" if self.parallel.processes > 1 else ""
        memory.check_fits(self.predict_memory(spec), free, f"{spec.run_id} ({spec.method} of {preset.hub_id or preset.name}{where})",
                          memory.cheaper_choices(load_config(self.profile.model), preset.lora_targets,
                                                 self.env.precision.name, self.env.device, self.largest_batch_tokens()))

    def baseline(self, quantization=None) -> dict:
        """The base model's numbers before training, computed once per profile and read back afterwards."""
        if quantization is not None:
            quantization = specs.with_compute_dtype(quantization, self.env.precision.dtype)
        return baseline.get(self, quantization)

    # ---------------------------------------------------------------- the library objects a run uses

    def resolve(self, spec: RunSpec) -> RunSpec:
        """The spec exactly as it trains here: the LoraConfig's target_modules filled in from the model preset, the
        BitsAndBytesConfig's compute dtype from this device's precision (helpers.specs.resolve)."""
        return specs.resolve(spec, self.profile.model, self.env.precision.dtype)

    def sft_config(self, spec: RunSpec, seed: int | None = None) -> SFTConfig:
        """The SFTConfig lab.run(spec) trains `seed` with (default: the profile's first seed)."""
        seed = self.seeds[0] if seed is None else seed
        return sft_config(self.resolve(spec), self.profile, self.env, seed, self.checkpoint_dir(spec, seed),
                          self.report_to, self.parallel)

    def trainer(self, spec: RunSpec, seed: int | None = None) -> LabTrainer:
        """The configured SFTTrainer lab.run(spec) trains `seed` with (default: the profile's first seed): the base
        model loaded (4-bit for QLoRA), wrapped by PEFT in the spec's LoraConfig, the SFTConfig, the tokenized
        training set. Nothing is trained; lab.run builds this same trainer for each seed."""
        check(spec)
        spec = self.resolve(spec)
        seed = self.seeds[0] if seed is None else seed
        label = results.file_name(spec.run_id, seed).removesuffix(".json")
        model = build_base(spec, self.profile, self.env)
        return make_trainer(model, spec, self.profile, self.env, self.data.train, self.tokenizer, seed,
                            self.checkpoint_dir(spec, seed), label, self.fingerprint(spec, seed),
                            self.report_to, self.parallel)

    # ---------------------------------------------------------------- runs

    def fingerprint(self, spec: RunSpec, seed: int) -> str:
        return results.config_fingerprint(self.resolve(spec), self.profile, seed, self.env, self.data.fingerprint,
                                          (self.parallel.processes, self.parallel.accumulation, self.parallel.fsdp))

    def finished(self, spec: RunSpec, seed: int) -> dict | None:
        """The stored result for this exact spec, seed, profile, data, packages and code, if a trustworthy one exists."""
        path = self.result_path(spec.run_id, seed)
        if not path.exists():
            return None
        try:
            record = results.read(path)
        except results.ResultsError as err:
            print(f"{path.name} is unusable ({err}); it will be run again.")
            return None
        if record.get("config_fingerprint") != self.fingerprint(spec, seed):
            print(f"{path.name} was made with other settings, data, packages or code; it will be run again.")
            return None
        artifact = self.artifact_path(record)
        if not artifact.is_dir() or directory_bytes(artifact) != record["artifact"]["bytes"]:
            print(f"{path.name}: its saved {'adapter' if record['lora'] else 'model'} in {artifact} is missing or "
                  "damaged; the run will be repeated.")
            return None
        return record

    def _main_first(self):
        if self.parallel.processes == 1:
            from contextlib import nullcontext
            return nullcontext()
        from accelerate import PartialState
        return PartialState().main_process_first()

    def _memory_block(self, spec: RunSpec, measured: dict[str, int], examples: list[int], meter: MemoryMeter) -> dict:
        """The categories and step peak measured on the largest batch (per device: this process's; every
        process's in per_process), which batch that was, the prediction for the same tokens, and as a check the
        device's own peak over every training step (labelled: CUDA max allocated and reserved, or CPU RSS sampled),
        and the optimizer state a paged optimizer keeps in CUDA managed memory, which neither CUDA peak contains."""
        block = {"device_peak_bytes": meter.peak_bytes, "device_peak_kind": meter.kind,
                 "device_reserved_bytes": meter.reserved, "paged_optimizer_bytes": measured["paged_optimizer"],
                 "categories": {c: measured[c] for c in memory.CATEGORIES}, "step_peak_bytes": measured["step_peak"],
                 "measured_batch": {"train_indices": examples, "tokens": measured["tokens"],
                                    "micro_batches": self.parallel.accumulation},
                 "predicted": self.predict_memory(spec, measured["tokens"])}
        if self.parallel.processes > 1:
            from accelerate.utils import gather_object
            block["per_process"] = gather_object([{"rank": self.parallel.rank, "device_peak_bytes": meter.peak_bytes,
                                                   "step_peak_bytes": measured["step_peak"],
                                                   "categories": {c: measured[c] for c in memory.CATEGORIES}}])
        return block

    def _isolated(self) -> bool:
        """Whether run_seed trains in a fresh process: $LAB_ISOLATE_RUNS=1, one process, and nothing set on this Lab
        that a fresh one would not detect again (a given `parallel`, an `env` replaced after it was built)."""
        env, detected_parallel = self._detected
        return (os.environ.get(ISOLATE_ENV) == "1" and self.parallel.processes == 1 and detected_parallel
                and self.env is env)

    def _run_in_own_process(self, spec: RunSpec, seed: int, force: bool, label: str) -> dict:
        """run_seed in a fresh Python process (helpers.tools.run_one), its output printed here; the record is read
        back from its file. Why: in one process, each run trains on a heap that the runs before it fragmented (glibc
        malloc), which made later runs of the same work up to 15% slower (README, "Speed"); a fresh process gives
        every run the same start. Library warnings and progress bars go where this process's stderr goes."""
        release()  # what this kernel freed (a trainer built to inspect) is not the child's to carry: CUDA's cache too
        root = str(Path(__file__).resolve().parent.parent)  # where `helpers` imports from, whatever the cwd
        env = {**os.environ, ISOLATE_ENV: "child", "PYTHONUNBUFFERED": "1",  # its lines as they come
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        tail: deque[str] = deque(maxlen=40)
        warnings, job = "", None
        try:
            with tempfile.NamedTemporaryFile("wb", suffix=".pkl", delete=False) as job:
                pickle.dump({"lab": self._rebuild, "spec": spec, "seed": seed, "force": force}, job)
            with tempfile.TemporaryFile("w+") as errors:
                with subprocess.Popen([sys.executable, "-m", "helpers.tools.run_one", job.name], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=errors, bufsize=1) as child:
                    try:
                        for line in child.stdout:
                            tail.append(line)
                            print(line, end="", flush=True)
                    except BaseException:  # an interrupted cell stops the run too, not only its printing
                        child.terminate()
                        child.wait()
                        raise
                errors.seek(0)
                warnings = errors.read()
                if sys.__stderr__ is not None:
                    sys.__stderr__.write(warnings)
        finally:
            if job is not None:
                Path(job.name).unlink(missing_ok=True)
        code = child.returncode
        record = self.finished(spec, seed) if code == 0 else None
        if record is None:
            how = (f"was killed by signal {-code} (9: often out of memory)" if code < 0 else
                   f"failed (exit code {code})" if code else "ended without a matching result")
            last = "".join(tail) + "\n".join(warnings.splitlines()[-30:])
            raise RuntimeError(f"{label}: its own training process {how}; its last lines:\n{last}\nTo see the error "
                               f"where it happens, train it in this process: {ISOLATE_ENV}=0 (make lab sets 1).")
        return record

    def run(self, spec: RunSpec | Sequence[RunSpec], force: bool = False) -> list[dict]:
        """Every training seed of the profile for this spec, or for each of several specs (one results file each);
        finished ones are skipped. Every spec is checked, and one that cannot run on this model refused, before
        anything is loaded or written. Several specs run interleaved, seed by seed (every spec's first seed, then
        every spec's second): a machine whose speed varies over minutes then slows every method alike, not whichever
        ran last. The records come back spec by spec."""
        runs = list(spec) if isinstance(spec, (list, tuple)) else [spec]  # anything else: check() says what it takes
        for one in runs:
            check(one)
            specs.check_targets_for_model(one, self.profile.model)
        force = profiles.check_flag("FORCE", force)
        done = {(i, seed): self.run_seed(one, seed, force) for seed in self.seeds for i, one in enumerate(runs)}
        records = (done[(i, seed)] for i in range(len(runs)) for seed in self.seeds)  # back in spec order
        return [r for r in records if r is not None]  # other processes of a distributed run return None

    def run_seed(self, spec: RunSpec, seed: int, force: bool = False) -> dict | None:
        """Build, train, evaluate, save, record one (spec, seed). Skipped when a matching result exists. In a
        distributed run every process trains; the main process evaluates and writes (the others return None)."""
        spec = self.resolve(spec)  # checks it too
        label = results.file_name(spec.run_id, seed).removesuffix(".json")
        if not force and (done := self.finished(spec, seed)) is not None:
            print(f"{label}: already done ({self.result_path(spec.run_id, seed)}), skipped. "
                  "Set FORCE = True to run it again.")
            return done
        if self._isolated():
            return self._run_in_own_process(spec, seed, force, label)
        env, profile, data = self.env, self.profile, self.data
        where = self.result_path(spec.run_id, seed).parent  # the checkpoints and the artifact go beside the file
        if where != self.results_dir:
            print(f"{label}: settings set {self.settings['id']} ({results.describe_settings(self.settings)}): "
                  f"written in {where}, beside the results in {self.results_dir}, never over them.")
        fingerprint = self.fingerprint(spec, seed)
        checkpoints = self.checkpoint_dir(spec, seed)
        if force:
            shutil.rmtree(checkpoints, ignore_errors=True)
        resume = complete_checkpoint(checkpoints, fingerprint) if checkpoints.exists() else None
        self.check_fits(spec)
        with self._main_first():  # the main process measures the base model; the others read its file
            before = self.baseline(spec.quantization)  # also checks the forgetting set before any training
        started = _now()
        meter = MemoryMeter(env.device)  # baseline before the model exists: its weights count
        log_dir = where / tracking.LOG_DIR
        with tracking.tracking_environment(self.report_to, log_dir, label):
            trainer = self.trainer(spec, seed)
            model = trainer.model
            # PiSSA's adapter before training (recomputed identically on a resume: the SVD follows the seed)
            initial = (save_initial_adapter(trainer, checkpoints) if spec.uses("pissa") and self.parallel.is_main
                       else None)
            trainable, total = model.get_nb_trainable_parameters() if spec.lora else parameter_count(model)
            if resume is not None:
                print(f"{label}: resuming from the checkpoint at step {resume.name.split('-')[-1]} ({resume})")
            with meter.measure():  # training only: loading transients and evaluation are not the method's cost
                outcome = train(trainer, resume)
            largest = self.largest_batch()
            measured = trainer.measure_step(largest, memory.StepMemoryProbe())  # every process steps
        memory_block = self._memory_block(spec, measured, largest, meter)  # every process takes part (gather)
        if not self.parallel.is_main:  # one results file per run, written once, by the main process
            del model, trainer
            release()
            return None
        after = self.evaluate(model)
        forgetting_after = self.evaluate_forgetting(model)
        generations_after = self.generate(model)
        artifact_dir = where / "artifacts" / label
        artifact_bytes = directory_bytes(write_directory_atomically(artifact_dir, save_adapter(model, spec, initial)))
        expected = trainable
        if spec.lora:
            expected = expected_lora_parameters(model.get_base_model(), spec.lora.target_modules, spec.lora.r,
                                                spec.lora.use_dora)
        record = results.build_record(
            spec=spec, profile=profile, env=env, seed=seed, started_at=started, finished_at=_now(),
            fingerprint=fingerprint, targets=list(spec.lora.target_modules) if spec.lora else None,
            data=data, params=(trainable, total, expected), outcome=outcome,
            memory=memory_block, parallel=self.parallel,
            before=before, after=after, forgetting_after=forgetting_after, generations_after=generations_after,
            artifact=(str(artifact_dir.relative_to(self.results_dir)), artifact_bytes))
        path = results.write_atomic(record, where / results.file_name(spec.run_id, seed))
        tracking.log_record(record, self.report_to, log_dir)
        shutil.rmtree(checkpoints, ignore_errors=True)
        skipped = "" if not outcome.skipped_at else (
            f"; the fp16 loss scaler skipped {len(outcome.skipped_at)} of {outcome.steps} updates ("
            + ("FLAGGED: its token budget changed" if outcome.budget_changed else "while finding its scale") + ")")
        print(f"{label}: perplexity {before['eval']['perplexity']:.2f} -> {after['perplexity']:.2f}, "
              f"{outcome.tokens_per_second_upper_quartile:.0f} tokens/s (upper-quartile step; median "
              f"{outcome.tokens_per_second_median:.0f}), "
              f"whole-training peak {meter.peak_bytes / 2**20:.0f} MiB "
              f"(the tables' step peak is one measured step){skipped} -> {path}")
        del model, trainer
        release()
        return record
