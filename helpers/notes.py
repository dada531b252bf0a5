"""Sentences read from results records: what was loaded, A-vs-B verdicts, and the reading notes of notebook 05.

Every number comes from the records, and every direction word from an interval: "beats" only when the 95% interval of
the paired difference excludes zero (with the margin also as a percentage), "rose"/"fell" only when the interval of
after − before does; otherwise the sentence says "within noise".
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .formatting import decimals_for, format_bytes, format_count, format_interval, format_percent, format_ratio
from .measures import (MEASURES, PARETO_PAIRS, Frontier, by_run, change, difference, flagged, flags, interval, mean,
                       mean_of, missing_runs, pareto, trained_tokens, usable)
from .results import VARIANT_RUNS, Loaded, record_skips_note
from .statistics import Interval, compare_runs

# Which notebook writes which run: a missing run is reported together with how to produce it.
PRODUCED_BY = {"full": "01_full_finetune", "lora-r8": "02_lora_ranks", "lora-r16": "02_lora_ranks",
               "lora-r32": "02_lora_ranks", "qlora": "03_qlora", **dict.fromkeys(VARIANT_RUNS, "04_lora_variants")}


def _how_to_produce(run_ids: Iterable[str]) -> str:
    notebooks = sorted({PRODUCED_BY[run] for run in run_ids if run in PRODUCED_BY}) or ["01 to 03"]
    return "run notebook " + ", ".join(notebooks)


def verdict(records: list[dict], run_a: str, run_b: str, key: str) -> str | None:
    """'A beats B on ... by x = y% of B's mean (95% CI ...)' or '... within noise ...', from the paired difference;
    None if the runs share no seed."""
    measure = MEASURES[key]
    diff = difference(records, run_a, run_b, measure)
    if diff is None:
        return None
    means = {run: mean_of(records, run, measure.value) for run in (run_a, run_b)}
    return compare_runs(run_a, run_b, diff, measure.title, measure.lower_is_better,
                        measure.decimals if measure.decimals is not None else decimals_for(diff.mean),
                        means={run: m for run, m in means.items() if m is not None})


def direction(change_: Interval) -> str:
    """'rose' / 'fell' when the interval of after − before excludes 0, else a phrase that claims no direction."""
    if change_.method == "single":
        return "no direction claimed (one seed, no interval)"
    if not change_.excludes(0.0):
        return "did not move beyond noise"
    return "fell" if change_.high < 0 else "rose"


def change_sentence(run_records: list[dict], before: str, after: str, decimals: int = 2, unit: str = "") -> str | None:
    """'18.09 -> 17.12 ± 0.07: fell by 5.4% (change -0.97, 95% CI -1.05 to -0.90, paired over 3 seeds)' for one
    run; None when the run lacks the measure. With a `unit` (" points" for a rate already in %), the size is the
    change in that unit instead of a percentage of the starting value."""
    recs = usable(run_records)
    first = mean(MEASURES[before].value(r) for r in recs)
    last = interval(recs, MEASURES[after])
    moved = change(recs, before, after)
    if first is None or last is None or moved is None:
        return None
    how = {"t": f"paired over {moved.n} seeds", "bootstrap": f"paired bootstrap over {moved.n} examples, one seed",
           "single": "one seed"}[moved.method]
    word = direction(moved)
    size = ""
    if word in ("rose", "fell"):
        size = (f" by {abs(moved.mean):.{decimals}f}{unit}" if unit else
                f" by {format_percent(abs(100 * moved.mean / first))}" if first else "")
    ci = (f", 95% CI {moved.low:+.{decimals}f} to {moved.high:+.{decimals}f}" if moved.method != "single" else "")
    return (f"{first:.{decimals}f} -> {format_interval(last, decimals)}: {word}{size} "
            f"(change {moved.mean:+.{decimals}f}{unit}{ci}, {how})")


def compare_sentence(records: list[dict], run_a: str, run_b: str) -> str:
    """How run_a compares with run_b in memory, speed, perplexity and artifact size, or what is missing."""
    runs = by_run(usable(records))
    absent = [run for run in (run_a, run_b) if run not in runs]
    if absent:
        return f"Cannot compare {run_a} with {run_b}: no valid results for {', '.join(absent)} ({_how_to_produce(absent)})."
    parts = []
    for key, unit in (("peak memory MiB", " MiB"), ("tokens/s", " tokens/s"), ("perplexity after", "")):
        measure = MEASURES[key]
        a, b = interval(runs[run_a], measure), interval(runs[run_b], measure)
        if a is None or b is None:
            continue
        ratio = f" ({format_ratio(a.mean / b.mean)})" if b.mean else ""
        parts.append(f"{measure.title} {format_interval(a, measure.decimals)} vs "
                     f"{format_interval(b, measure.decimals)}{unit}{ratio}")
    art_a = mean_of(records, run_a, lambda r: r["artifact"]["bytes"])
    art_b = mean_of(records, run_b, lambda r: r["artifact"]["bytes"])
    parts.append(f"saved {format_bytes(art_a)} vs {format_bytes(art_b)}")
    return f"{run_a} vs {run_b}: " + "; ".join(parts) + "."


def _why_flagged(record: dict) -> str:
    """What a flagged record did: 'ended worse than it started (a -> b)', what its skipped updates did, or both."""
    why = []
    if "worse_than_before" in flags(record):
        why.append(f"ended worse than it started ({record['eval']['perplexity_before']:.2f} -> "
                   f"{record['eval']['perplexity_after']:.2f})")
    if "budget_changed" in flags(record):
        why.append(record_skips_note(record))
    return " and ".join(why)


def loading_report(records: list[dict], left_out: list[tuple[str, str]], directory: Path | str) -> str:
    """What load_all found: the runs read (with their seeds), and every file left out with its reason."""
    lines = [f"Results folder: {directory}"]
    if records:
        lines.append("Read " + ", ".join(f"{run} ({len(recs)} seed{'s' if len(recs) > 1 else ''})"
                                         for run, recs in by_run(records).items()) + ".")
    else:
        lines.append("No valid results yet.")
    missing = missing_runs(records)
    if missing:
        lines.append(f"Not there (yet): {', '.join(missing)} — {_how_to_produce(missing)} to produce them.")
    for r in flagged(records):
        lines.append(f"Flagged: {r['run_id']} seed {r['seed']}: {_why_flagged(r)}; it is shown but not averaged in.")
    if left_out:
        older = [name for name, reason in left_out if reason.startswith("older schema")]
        if older:
            lines.append(f"Older schema ({len(older)} file(s), from an earlier version of the lab; re-run their "
                         f"notebooks): {', '.join(older)}")
        others = [(name, reason) for name, reason in left_out if not reason.startswith("older schema")]
        if others:
            lines.append(f"Left out {len(others)} file(s):")
            lines += [f"  {name}: {reason}" for name, reason in others]
    return "\n".join(lines)


def settings_report(loaded: Loaded) -> str:
    """Which settings set the comparison shows and what else the results folder holds (never mixed in)."""
    if loaded.shown is None:
        return "No settings set to compare: no valid run in this folder."
    lines = [f"Comparing {loaded.shown.describe()}. Only runs made under the same settings (profile, budget, data, "
             "model) are compared; runs with other settings are listed here, never mixed in."]
    if loaded.others:
        lines.append(f"Also in this folder, not compared ({len(loaded.others)} other settings set"
                     f"{'s' if len(loaded.others) > 1 else ''}):")
        lines += [f"  {found.describe()}" for found in loaded.others]
        lines.append(f'To compare one of them instead, set SETTINGS_SET = "{loaded.others[0].id}" (its id) in the '
                     "parameters cell.")
    else:
        lines.append("No other settings set in this folder.")
    return "\n".join(lines)


def _notes_about_the_set(records: list[dict]) -> list[str]:
    notes = []
    missing = missing_runs(records)
    if missing:
        notes.append(f"Missing from this comparison: {', '.join(missing)} ({_how_to_produce(missing)}); "
                     "the sentences below use the runs that are there.")
    for field, what in (("profile", "profiles"), ("device", "devices"), ("dtype", "precisions")):
        values = sorted({r["environment"][field] for r in records})
        if len(values) > 1:
            notes.append(f"The runs come from different {what} ({', '.join(values)}): their numbers are not "
                         "comparable; re-run them with the same settings.")
    tokens = sorted({trained_tokens(r) for r in records})  # the updates applied: skipped ones trained nothing
    if len(tokens) == 1:
        notes.append(f"Every run trained on the same {format_count(tokens[0])} real tokens, so the differences come "
                     "from the method.")
    else:
        notes.append(f"The runs trained on different numbers of tokens ({', '.join(map(format_count, tokens))}): "
                     "the comparison is not like for like.")
    seeds = sorted({len(recs) for recs in by_run(usable(records)).values()})
    if seeds == [1]:
        notes.append("One training seed per run: intervals on perplexity are bootstraps over the held-out examples "
                     "(they do not include seed-to-seed variation); speed, memory and repetition have none. Run with "
                     "LAB_SEEDS=3 for intervals over seeds.")
    else:
        notes.append(f"Intervals are 95% t-intervals over {', '.join(map(str, seeds))} training seeds per run; "
                     "differences are paired by seed.")
    if any(r["environment"]["profile"] == "smoke" for r in records):
        notes.append("These are smoke-profile numbers (a couple of training steps): they check that everything "
                     "works, not which method is better.")
    for r in flagged(records):
        if "worse_than_before" in flags(r):
            notes.append(f"{r['run_id']} (seed {r['seed']}) ended worse than it started on held-out perplexity "
                         f"({r['eval']['perplexity_before']:.2f} -> {r['eval']['perplexity_after']:.2f}): it is not a "
                         "result, and is left out of every mean and comparison (try a lower learning rate).")
        if "budget_changed" in flags(r):
            notes.append(f"{r['run_id']} (seed {r['seed']}): {record_skips_note(r)}; it is left out of every mean and "
                         "comparison.")
    for r in records:
        if r["training"].get("skipped_at") and "budget_changed" not in flags(r):
            notes.append(f"{r['run_id']} (seed {r['seed']}): {record_skips_note(r)}.")
    return notes


def _category(runs: dict[str, list[dict]], run_id: str, name: str) -> float | None:
    return mean((r.get("memory") or {}).get("categories", {}).get(name) for r in runs.get(run_id, []))


def weights_share(records: list[dict], run_id: str) -> float | None:
    """The weights' share of a run's measured step peak, in percent: mean weights / mean step peak over its usable
    records (the two numbers the sentence prints next to it)."""
    runs = by_run(usable(records))
    weights = _category(runs, run_id, "weights")
    peak = mean((r.get("memory") or {}).get("step_peak_bytes") for r in runs.get(run_id, []))
    return 100 * weights / peak if weights is not None and peak else None


def weights_share_sentence(records: list[dict], run_ids: Iterable[str] = ("lora-r16", "qlora")) -> str:
    """How large the weights are next to the whole step, per run, as measured ('no measurement' when absent)."""
    runs = by_run(usable(records))
    parts = []
    for run in run_ids:
        share = weights_share(records, run)
        if share is not None:
            peak = mean((r.get("memory") or {}).get("step_peak_bytes") for r in runs[run])
            parts.append(f"{format_percent(share)} of {run}'s step peak ({format_bytes(_category(runs, run, 'weights'))}"
                         f" of {format_bytes(peak)})")
    if not parts:
        return "No measured step memory for " + ", ".join(run_ids) + " yet."
    return "The weights are " + "; ".join(parts) + "."


def _memory_notes(records: list[dict]) -> list[str]:
    runs = by_run(usable(records))
    notes = []
    full = [_category(runs, "full", c) for c in ("gradients", "optimizer")]
    for run in ("lora-r8", "lora-r16", "lora-r32"):
        small = [_category(runs, run, c) for c in ("gradients", "optimizer")]
        if None not in full + small:
            notes.append(f"Full fine-tuning pays {format_bytes(full[0])} for gradients and {format_bytes(full[1])} for "
                         f"AdamW state (4 + 8 bytes per trainable parameter); {run} pays {format_bytes(small[0])} and "
                         f"{format_bytes(small[1])}: {format_bytes(sum(full) - sum(small))} less.")
            break
    w_lora, w_q = _category(runs, "lora-r16", "weights"), _category(runs, "qlora", "weights")
    if w_lora and w_q:
        notes.append(f"The 4-bit base stores the weights in {format_bytes(w_q)} instead of {format_bytes(w_lora)} "
                     f"(QLoRA vs LoRA r16): {format_bytes(w_lora - w_q)} saved. "
                     + weights_share_sentence(records))
    acts = {run: _category(runs, run, "activations") for run in runs}
    if acts.get("full") and any(acts.get(r) for r in ("lora-r8", "lora-r16")):
        lora_run = "lora-r8" if acts.get("lora-r8") else "lora-r16"
        notes.append(f"Activations (what autograd keeps for the backward pass) are about the same size for every "
                     f"method: {format_bytes(acts['full'])} for full fine-tuning, {format_bytes(acts[lora_run])} for "
                     f"{lora_run}. They depend on the tokens per step, not on how many weights train.")
    return notes


def _per_token_losses(per_example: list) -> np.ndarray:
    arr = np.asarray(per_example, dtype=float)
    return arr[:, 0] / np.maximum(arr[:, 1], 1)


def _general_text_falls(recs: list[dict]) -> np.ndarray | None:
    """Per text, the loss per token before − after, averaged over the run's seeds (None without per-text data)."""
    falls = [_per_token_losses(r["forgetting"]["per_example_before"])
             - _per_token_losses(r["forgetting"]["per_example_after"])
             for r in recs if (r.get("forgetting") or {}).get("per_example_after")]
    if not falls or len({len(f) for f in falls}) > 1:
        return None
    return np.mean(falls, axis=0)


def general_text_notes(records: list[dict]) -> list[str]:
    """Which way general-text perplexity moved per run (with its interval), how broad the move is over the texts,
    and, where QLoRA and a full-precision LoRA run are both there, how much of QLoRA's extra move follows the damage
    NF4 did to each text."""
    runs = by_run(usable(records))
    moves = {run: change_sentence(recs, "general-text before", "general-text after") for run, recs in runs.items()}
    moves = {run: s for run, s in moves.items() if s}
    if not moves:
        return []
    notes = ["General-text perplexity (text outside the training domain: a rise would be forgetting), each run from "
             "its own base, before -> after: " + "; ".join(f"{run} {s}" for run, s in moves.items()) + "."]
    words = {run: direction(change(runs[run], "general-text before", "general-text after")) for run in moves}
    for word in ("rose", "fell"):
        which = [run for run, w in words.items() if w == word]
        if which:
            notes.append(f"General-text perplexity {word} for {len(which)} of {len(words)} runs ({', '.join(which)})"
                         + (": these runs forgot something outside the training domain." if word == "rose" else
                            ": on this text, none of them shows forgetting."))
    counts = []  # (texts whose loss per token fell, rose, all) per record
    for recs in runs.values():
        for r in recs:
            f = r.get("forgetting") or {}
            if f.get("per_example_after"):
                fall = _per_token_losses(f["per_example_before"]) - _per_token_losses(f["per_example_after"])
                counts.append((int((fall > 0).sum()), int((fall < 0).sum()), len(fall)))
    if counts:
        def span(values: list[int]) -> str:
            return f"{min(values)}–{max(values)}" if min(values) != max(values) else f"{min(values)}"
        n = counts[0][2]
        most = next((word for word, i in (("fell", 0), ("rose", 1)) if all(c[i] > c[2] / 2 for c in counts)), None)
        notes.append(f"Per general text, the loss per token fell on {span([c[0] for c in counts])} and rose on "
                     f"{span([c[1] for c in counts])} of the {n} texts in each record"
                     + (f": most texts {most}, so it is the whole distribution that moved, not a few texts."
                        if most else "."))
    full_precision = next((run for run in ("lora-r16", "lora-r8", "lora-r32", "full") if run in runs), None)
    if "qlora" in runs and full_precision:
        q, fp = runs["qlora"], runs[full_precision]
        q_fall, fp_fall = _general_text_falls(q), _general_text_falls(fp)
        # a correlation over a handful of texts (the smoke profile's 3) says nothing
        if q_fall is not None and fp_fall is not None and len(q_fall) == len(fp_fall) >= 10:
            damage = (_per_token_losses(q[0]["forgetting"]["per_example_before"])
                      - _per_token_losses(fp[0]["forgetting"]["per_example_before"]))
            extra = q_fall - fp_fall
            if extra.std() == 0 or damage.std() == 0:  # nothing varies from text to text: no link to measure
                return notes
            r = float(np.corrcoef(extra, damage)[0, 1])
            q_before, fp_before = q[0]["forgetting"]["perplexity_before"], fp[0]["forgetting"]["perplexity_before"]
            notes.append(f"QLoRA starts from a 4-bit base that is {format_percent(100 * (q_before / fp_before - 1))} "
                         f"worse on general text ({fp_before:.2f} -> {q_before:.2f}). Per text, how much more its loss "
                         f"fell than {full_precision}'s follows how much NF4 had hurt that text (correlation "
                         f"r = {r:.2f} over {len(damage)} texts): "
                         + ("part of what QLoRA's adapter learns is to undo the quantization damage." if r >= 0.5 else
                            "no clear sign (r below 0.5) that QLoRA's adapter undoes the quantization damage."))
    return notes


def repetition_notes(records: list[dict]) -> list[str]:
    """Per run, the repeated-3-gram rate of the greedy answers before -> after training, and which runs' answers
    repeat more than their base's (the loops a reader sees, which perplexity does not show)."""
    runs = by_run(usable(records))
    # One decimal: the before, after and change then agree as printed (4 -> 30 read as "rose by 25" at 0 decimals).
    moves = {run: change_sentence(recs, "repeated 3-grams % before", "repeated 3-grams % after", 1, " points")
             for run, recs in runs.items()}
    moves = {run: s for run, s in moves.items() if s}
    if not moves:
        return []
    notes = ["Repeated word 3-grams in the greedy answers (of each answer's word 3-grams, the share, in %, that "
             "repeat an earlier 3-gram of the same answer; mean over the prompts), each run from its own base, "
             "before -> after: " + "; ".join(f"{run} {s}" for run, s in moves.items()) + "."]
    words = {run: direction(change(runs[run], "repeated 3-grams % before", "repeated 3-grams % after"))
             for run in moves}
    more = [run for run, w in words.items() if w == "rose"]
    untested = [run for run, w in words.items() if w.startswith("no direction claimed")]  # one seed: no interval
    if len(untested) == len(words):
        notes.append("With one seed there is no interval for these changes: no run is said to repeat itself more "
                     "(train with SEEDS = 3 to test it).")
    elif more:
        notes.append(f"The answers of {_and(more)} repeat themselves more after training than their base's: "
                     "a lower perplexity did not make them better answers to read (see the answers below).")
    else:
        notes.append("No run's answers repeat themselves more after training beyond noise"
                     + (f" ({_and(untested)}: one seed, not tested)." if untested else "."))
    return notes


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


# What others found for each variant (issue trackers, papers), printed next to this lab's own finding, which may
# differ: they trained 3B-7B models for thousands of steps, the lab a 135M model for 30.
ANCHORS = {
    "dora": "huggingface/peft method_comparison (Llama-3.2-3B, MetaMathQA -> GSM8K, one seed): DoRA r32 0.469 "
            "accuracy vs LoRA r32 0.478, +26% time, +2.0 GiB peak; the DoRA paper: +3.7 points on commonsense tasks "
            "at LLaMA-7B, about 20% slower (up to 2x in peft #1474)",
    "rslora": "huggingface/peft method_comparison: rsLoRA r64 0.513 vs LoRA r64 0.474 accuracy; rsLoRA's scaling "
              "matters at high rank (with the lab's alpha 16 it multiplies LoRA's update by sqrt(r), 4 at r16, which the "
              "swept learning rate can absorb)",
    "pissa": "PiSSA (Meng et al. 2024): adapters started from W's principal singular vectors converge faster than "
             "LoRA's zero-B start",
    "loraplus": "LoRA+ (Hayou et al. 2024; PEFT's docs): B at ~16x A's learning rate, up to 2x faster convergence",
}


def variant_notes(records: list[dict], rank: int | None = None) -> list[str]:
    """For each LoRA variant present at `rank` (run ids dora-r16, ...; None: every rank a variant was trained at) with
    LoRA at that rank: its held-out perplexity, how fast its training loss fell (the mean of the logged losses, same
    batches per seed), speed and step-peak memory against LoRA's ("beats" only beyond noise), its extra trainable
    parameters and set-up time, and the published anchor."""
    runs = by_run(usable(records))
    if rank is None:
        split = [run.rpartition("-r") for run in runs]  # "dora-r16" -> ("dora", "-r", "16")
        ranks = sorted({int(r) for name, _, r in split if name in ANCHORS and r.isdigit()})
        return [note for r in ranks for note in variant_notes(records, r)]
    baseline = f"lora-r{rank}"
    present = [(f"{name}-r{rank}", anchor) for name, anchor in ANCHORS.items() if f"{name}-r{rank}" in runs]
    if not present:
        return []
    if baseline not in runs:
        return [f"The LoRA variants ({_and([run for run, _ in present])}) are compared with {baseline}, which is "
                f"missing ({_how_to_produce([baseline])})."]
    base = runs[baseline][0]
    notes = []
    for run, anchor in present:
        said = [verdict(records, run, baseline, key)
                for key in ("perplexity after", "mean training loss", "tokens/s", "peak memory MiB")]
        extra = runs[run][0]["params"]["trainable"] - base["params"]["trainable"]
        setup = [mean_of(records, r, lambda rec: rec["training"].get("setup_seconds")) for r in (run, baseline)]
        cost = f"{format_count(extra)} more trainable parameters" if extra else "the same trainable parameters"
        if None not in setup:
            cost += f"; its trainer was built in {setup[0]:.1f} s ({baseline}: {setup[1]:.1f} s)"
        notes.append(f"{run} vs {baseline}: " + " ".join(s for s in said if s) + f" It trains {cost}. "
                     f"Published: {anchor}.")
    return notes


def pareto_notes(records: list[dict]) -> list[str]:
    """Per Pareto panel (measures.PARETO_PAIRS): the runs on the frontier, then each dominated run with the runs that
    dominate it, their means, and "within noise" where the 95% interval of their paired difference includes zero (or
    there is none) on a measure."""
    notes = []
    for keys in PARETO_PAIRS:
        frontier = pareto(records, keys)
        if len(frontier.intervals) < 2:
            continue
        x, y = keys
        where = (f"{y} against {x} ({'lower' if MEASURES[x].lower_is_better else 'higher'} is better for {x}, "
                 f"{'lower' if MEASURES[y].lower_is_better else 'higher'} for {y})")
        notes.append(f"Pareto frontier of {where}, on the means: {_and(frontier.front)} (no other run is at least as "
                     f"good on both and better on one).")
        for run in dict.fromkeys(d.run for d in frontier.dominated):
            parts = []
            for d in (d for d in frontier.dominated if d.run == run):
                means = ", ".join(f"{k} {' vs '.join(_means_text(frontier, (d.by, run), k))}" for k in keys)
                if d.unresolved or d.no_interval:
                    why = "; ".join(
                        ([f"the paired difference's 95% interval includes 0 on {_and(list(d.unresolved))}"]
                         if d.unresolved else [])
                        + ([f"one seed, no interval on {_and(list(d.no_interval))}"] if d.no_interval else []))
                    parts.append(f"{d.by} ({means}; within noise: {why})")
                else:
                    parts.append(f"{d.by} ({means}; beyond noise on both)")
            notes.append(f"On {y} against {x}, {run} is dominated by " + _and(parts) + ".")
        if not frontier.dominated:
            notes.append(f"On {y} against {x}, no run is dominated: none is beaten on both.")
    return notes


def _means_text(frontier: Frontier, runs: tuple[str, str], key: str) -> tuple[str, str]:
    """Two runs' means on `key` at the measure's decimals, with more (up to 4) where they would print alike: "13.94 vs
    13.94" would say they are equal when one dominates the other."""
    values = [frontier.intervals[run][frontier.keys.index(key)].mean for run in runs]
    decimals = MEASURES[key].decimals
    decimals = decimals if decimals is not None else decimals_for(values[0])
    texts = [f"{v:.{decimals}f}" for v in values]
    while texts[0] == texts[1] and values[0] != values[1] and decimals < 4:
        decimals += 1
        texts = [f"{v:.{decimals}f}" for v in values]
    return texts[0], texts[1]


def reading_notes(records: list[dict], directory: Path | str | None = None) -> list[str]:
    """Sentences that read the comparison figure, every number taken from the records, and "A beats B" only when the
    95% interval of the paired difference excludes zero. Each sentence needs only the runs it names."""
    where = f" in {directory}" if directory else ""
    if not records:
        return [f"There are no valid results{where} yet. Run notebooks 01_full_finetune, 02_lora_ranks, 03_qlora and "
                "04_lora_variants (each writes one results file per run and seed), then run this notebook again."]
    notes = _notes_about_the_set(records)
    runs = by_run(usable(records))
    ppl = {run: interval(recs, MEASURES["perplexity after"]) for run, recs in runs.items()}
    ppl = {run: i for run, i in ppl.items() if i is not None}
    if ppl:
        best = min(ppl, key=lambda run: ppl[run].mean)
        before = runs[best][0]["eval"]["perplexity_before"]
        notes.append(f"Lowest mean held-out perplexity after training: {best} ({ppl[best].text(2)}, from "
                     f"{before:.2f} before).")
        for a, b in (("full", "lora-r32"), ("lora-r32", "lora-r16"), ("lora-r16", "lora-r8"), ("qlora", "lora-r16")):
            if a in ppl and b in ppl and (sentence := verdict(records, a, b, "perplexity after")):
                notes.append(sentence)
    if "full" in runs:
        full = runs["full"][0]
        for run in ("lora-r8", "lora-r16", "lora-r32", "qlora"):
            if run in runs and runs[run][0]["params"]["trainable"]:
                other = runs[run][0]
                notes.append(f"{run} trains {format_ratio(full['params']['trainable'] / other['params']['trainable'])} "
                             f"fewer parameters than full fine-tuning ({format_count(other['params']['trainable'])} vs "
                             f"{format_count(full['params']['trainable'])}) and saves "
                             f"{format_bytes(mean_of(records, run, lambda r: r['artifact']['bytes']))} instead of "
                             f"{format_bytes(mean_of(records, 'full', lambda r: r['artifact']['bytes']))}.")
                break  # the smallest rank present makes the point; the table has the rest
    notes += _memory_notes(records)
    if "qlora" in runs and "lora-r16" in runs:
        notes.append("QLoRA vs LoRA r16 (same rank, same optimizer, 4-bit base): "
                     + compare_sentence(records, "qlora", "lora-r16").split(": ", 1)[1])
        for key in ("peak memory MiB", "tokens/s"):
            if sentence := verdict(records, "qlora", "lora-r16", key):
                notes.append(sentence)
    else:
        notes.append("QLoRA vs LoRA r16 needs both runs: "
                     f"{', '.join(r for r in ('lora-r16', 'qlora') if r not in runs)} missing.")
    notes += variant_notes(records)
    notes += general_text_notes(records)
    if "full" in runs and "lora-r8" in runs and (s := verdict(records, "full", "lora-r8", "general-text after")):
        notes.append(s)
    notes += repetition_notes(records)
    speed = {run: interval(recs, MEASURES["tokens/s"]) for run, recs in runs.items()}
    speed = {run: i for run, i in speed.items() if i is not None and i.mean > 0}
    if len(speed) > 1:
        fast, slow = max(speed, key=lambda r: speed[r].mean), min(speed, key=lambda r: speed[r].mean)
        single = [run for run, i in speed.items() if i.method == "single"]
        notes.append(("One seed, so no interval: the speeds are one measurement each. " if len(single) == len(speed)
                      else f"{_and(single)}: one seed, no interval. " if single else "")
                     + f"Fastest: {fast} ({speed[fast].text(0)} tokens/s); slowest: {slow} ({speed[slow].text(0)} "
                     f"tokens/s), {format_ratio(speed[fast].mean / speed[slow].mean)} apart.")
    notes += pareto_notes(records)
    return notes


__all__ = ["ANCHORS", "PRODUCED_BY", "change_sentence", "compare_sentence", "direction", "general_text_notes", "loading_report",
           "pareto_notes", "reading_notes", "repetition_notes", "settings_report", "verdict", "weights_share",
           "variant_notes", "weights_share_sentence"]
