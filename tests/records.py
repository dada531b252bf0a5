"""Schema-valid results records built by hand, with distinct, easy-to-check numbers per run (tests import this)."""

from __future__ import annotations

import copy

from helpers import results

MIB = 2**20
TOTAL = 134_515_008
LORA_TRAINABLE = {8: 2_442_240, 16: 4_884_480, 32: 9_768_960}
PROMPTS = ["What does a list comprehension return?", "How do I open a file?"]

# (step peak MiB, tokens/s, perplexity after, artifact MiB) per run
NUMBERS = {
    "full": (2400.0, 40.0, 3.0, 513.0),
    "lora-r8": (760.0, 125.0, 4.5, 9.5),
    "lora-r16": (800.0, 120.0, 4.2, 19.0),
    "lora-r32": (880.0, 110.0, 4.0, 38.0),
    "qlora": (600.0, 80.0, 4.4, 19.0),
}
# Memory categories (MiB) per run: weights, gradients, optimizer, activations, other
CATEGORIES = {
    "full": (513.0, 513.0, 1026.0, 700.0, 170.0),
    "lora-r8": (522.0, 9.3, 18.6, 660.0, 170.0),
    "lora-r16": (532.0, 18.6, 37.3, 662.0, 170.0),
    "lora-r32": (550.0, 37.3, 74.5, 665.0, 170.0),
    "qlora": (170.0, 18.6, 37.3, 660.0, 170.0),
}
EVAL_EXAMPLES = 20


def _merge(base: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def per_example(perplexity: float, n: int = EVAL_EXAMPLES, tokens: int = 25, spread: float = 0.05,
                offset: float = 0.0) -> list[list[float]]:
    """n examples whose token-weighted perplexity is exactly `perplexity` (their NLLs alternate around the mean)."""
    import math
    mean = math.log(perplexity) * tokens
    out = []
    for i in range(n):
        delta = (spread if i % 2 == 0 else -spread) * tokens if n % 2 == 0 or i < n - 1 else 0.0
        out.append([mean + delta + offset, tokens])
    return out


def make_record(run_id: str, seed: int = 42, **overrides) -> dict:
    """A schema-valid record for one of the lab's runs; nested dict overrides are merged, others replace."""
    peak, speed, ppl_after, artifact = NUMBERS.get(run_id, (500.0, 100.0, 5.0, 10.0))
    method = "full" if run_id == "full" else "qlora" if run_id == "qlora" else "lora"
    rank = None if method == "full" else 16 if method == "qlora" else int(run_id.rsplit("r", 1)[1])
    trainable = TOTAL if rank is None else LORA_TRAINABLE.get(rank, 1000 * rank)
    total = TOTAL if rank is None else TOTAL + trainable
    ppl_before = 7.5 if method == "qlora" else 7.0
    cats = dict(zip(("weights", "gradients", "optimizer", "activations", "other"),
                    (int(v * MIB) for v in CATEGORIES.get(run_id, (100.0, 1.0, 2.0, 300.0, 50.0)))))
    predicted = {**{k: int(v * 1.02) for k, v in cats.items()}, "trainable_params": trainable}
    predicted["total"] = sum(predicted[k] for k in cats)
    predicted["peak"] = predicted["total"] - min(predicted["gradients"], predicted["activations"])
    record = {
        "schema_version": results.SCHEMA_VERSION, "run_id": run_id, "method": method, "seed": seed,
        "started_at": "2026-11-20T10:00:00+00:00", "finished_at": "2026-11-20T10:05:00+00:00",
        "config_fingerprint": f"fp-{run_id}-{seed}", "code_version": "code",
        "lora": None if rank is None else {"r": rank, "alpha": 16, "dropout": 0.0,
                                            "target_modules": ["q_proj", "v_proj"]},
        "quantization": None if method != "qlora" else {"bits": 4, "quant_type": "nf4", "double_quant": True,
                                                        "compute_dtype": "bfloat16"},
        "model": {"preset": "smollm2-135m-bundled", "source": "bundled", "total_params": TOTAL},
        "data": {"manifest": "python_docs", "fingerprint": "abc", "train_examples": 64, "eval_examples": EVAL_EXAMPLES,
                 "data_seed": 0, "template": "chat"},
        "params": {"trainable": trainable, "total": total, "trainable_pct": 100 * trainable / total,
                   "expected_trainable": trainable},
        "training": {"steps": 3, "tokens": 3000, "target_tokens": 1500, "seconds": 3000 / speed,
                     "seconds_total": 3000 / speed + 2, "tokens_per_second": speed, "learning_rate": 1e-4,
                     "optimizer": "adamw_torch", "batch_size": 4, "precision": "bf16", "gradient_checkpointing": False,
                     "loss_head": "full logits", "trainable_dtypes": ["float32"], "resumed_from_step": None,
                     "processes": 1, "accumulation": 1, "sharded": False, "global_batch": 4, "per_device_batch": 4,
                     "step_seconds": {"forward_backward": 1.0, "data": 0.01, "optimizer_and_rest": 0.1},
                     "log": [{"step": s, "loss": ppl_after + 1.0 / s, "lr": 1e-4, "grad_norm": 1.0} for s in (1, 2, 3)]},
        "memory": {"device_peak_bytes": int(peak * MIB * 1.1), "device_peak_kind": "cpu_rss_sampled",
                   "device_reserved_bytes": None, "categories": cats, "step_peak_bytes": int(peak * MIB),
                   "measured_batch": {"train_indices": [5, 17, 2, 40], "tokens": 1000, "micro_batches": 1},
                   "predicted": predicted},
        "eval": {"precision": "fp32", "tokens": EVAL_EXAMPLES * 25, "loss_before": 1.9, "perplexity_before": ppl_before,
                 "bits_per_token_before": 2.8, "loss_after": 1.1, "perplexity_after": ppl_after,
                 "bits_per_token_after": 1.6, "per_example_before": per_example(ppl_before),
                 "per_example_after": per_example(ppl_after)},
        "forgetting": {"manifest": "vital_articles", "tokens": 300, "loss_before": 2.5, "perplexity_before": 12.0,
                       "loss_after": 2.6, "perplexity_after": 12.0 + (1.0 if method == "full" else 0.2),
                       "per_example_before": per_example(12.0, 10, 30),
                       "per_example_after": per_example(12.0 + (1.0 if method == "full" else 0.2), 10, 30)},
        "status": {"worse_than_before": False, "notes": []},
        "generations": [{"prompt": p, "before": f"base answer {i}", "after": f"answer {i} written by {run_id}"}
                        for i, p in enumerate(PROMPTS)],
        "artifact": {"path": f"artifacts/{run_id}-seed{seed}", "bytes": int(artifact * MIB)},
        "environment": {"device": "CPU (2 cores, x86_64)", "device_kind": "cpu", "dtype": "bf16", "profile": "cpu",
                        "python": "3.11.7", "torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2",
                        "trl": "1.16.0", "bitsandbytes": "0.50.2", "datasets": "5.2.0", "accelerate": "1.15.0"},
    }
    record = _merge(record, copy.deepcopy(overrides))
    record.setdefault("settings", results.settings_of(record))  # as the lab writes it: the set its settings make
    return results.validate(record)
