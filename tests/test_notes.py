"""helpers.measures / helpers.notes: the repeated-n-gram rate, and direction words that match the numbers, on the
committed reference set and on a fixture where general-text perplexity rises; the decoding demo leaves greedy alone."""

import copy
import json
import math
from pathlib import Path

import pytest

from helpers import decoding, measures, notes
from helpers.environment import choose_precision
from helpers.evaluation import generate
from records import make_record

REFERENCE = Path(__file__).resolve().parent.parent / "notebooks" / "reference_results"


@pytest.fixture(scope="module")
def reference() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(REFERENCE.glob("*-seed*.json"))]


def _with_general_text_scaled(records: list[dict], factor: float | dict[int, float]) -> list[dict]:
    """Copies whose general-text NLLs after training are `factor` (or factor[seed]) times the before ones."""
    out = []
    for r in copy.deepcopy(records):
        f = r["forgetting"]
        scale = factor[r["seed"]] if isinstance(factor, dict) else factor
        f["per_example_after"] = [[n * scale, t] for n, t in f["per_example_before"]]
        loss = sum(n for n, _ in f["per_example_after"]) / sum(t for _, t in f["per_example_after"])
        f["loss_after"], f["perplexity_after"] = loss, math.exp(loss)
        out.append(r)
    return out


# ---------------------------------------------------------------- the repeated-n-gram rate

@pytest.mark.parametrize("text, rate", [
    ("a b c a b c", 1 / 4),  # 3-grams abc bca cab abc: the last repeats the first
    ("the cat sat on the mat", 0.0),
    ("one two", None),  # no 3-gram to judge
    ("Return the process name.\n\n" * 13, 46 / 50),  # 52 words, 50 3-grams, only the first 4 are new
    ("Go, go. GO go go", 2 / 3),  # case and punctuation do not hide a repeat: go go go x3
])
def test_repeated_ngram_rate(text, rate):
    got = measures.repeated_ngram_rate(text)
    assert got == (None if rate is None else pytest.approx(rate))


def test_answer_repetition_is_the_mean_over_answers_in_percent():
    record = make_record("lora-r8", generations=[{"prompt": "p", "before": "a b c d", "after": "a b c a b c"},
                                                 {"prompt": "q", "before": "x y", "after": "x y z"}])
    assert measures.answer_repetition(record, "after") == pytest.approx(100 * (0.25 + 0.0) / 2)
    assert measures.answer_repetition(record, "before") == pytest.approx(0.0)  # "x y" is too short: left out


def test_reference_qlora_loop_shows_in_the_rate(reference):
    qlora = next(r for r in reference if r["run_id"] == "qlora" and r["seed"] == 42)
    loop = next(g for g in qlora["generations"] if "heap-like data structure" in g["after"])
    assert loop["after"].count("heap-like data structure") >= 3
    assert measures.repeated_ngram_rate(loop["after"]) > 0.6 > 0.25 > measures.repeated_ngram_rate(loop["before"])


# ---------------------------------------------------------------- direction words on the reference set

def test_reference_general_text_fell_for_every_run(reference):
    """In the reference set general-text perplexity fell in all 27 runs (9 runs x 3 seeds), most for QLoRA."""
    falls = {(r["run_id"], r["seed"]): r["forgetting"]["perplexity_after"] / r["forgetting"]["perplexity_before"] - 1
             for r in reference}
    assert len(falls) == 27 and all(f < 0 for f in falls.values())
    assert max(f for (run, _), f in falls.items() if run == "qlora") < min(
        f for (run, _), f in falls.items() if run != "qlora")
    text = " ".join(notes.reading_notes(reference))
    assert "General-text perplexity fell for 9 of 9 runs" in text and ": rose" not in text.split("Repeated")[0]
    assert "perplexity rose" not in text
    for run in ("full", "lora-r8", "lora-r16", "lora-r32", "qlora"):
        assert f"{run} 18.08 -> " in text or (run == "qlora" and "qlora 23.12 -> 20.98 ± 0.08: fell by 9.3%" in text)
    assert "full 18.08 -> 17.07 ± 0.12: fell by 5.6%" in text
    assert "correlation r = 0.77 over 38 texts" in text and "undo the quantization damage" in text
    assert "fell on 21–32 and rose on 6–17 of the 38 texts in each record: most texts fell" in text


def test_reference_beats_carry_their_size(reference):
    sentences = notes.reading_notes(reference)
    beats = [s for s in sentences if " beats " in s]
    assert beats and all("%" in s.split(" beats ")[1].split("(95% CI")[0] for s in beats)
    qlora = next(s for s in beats if s.startswith("lora-r16 beats qlora"))
    assert "= 10% of qlora's 15.52" in qlora and "small" not in qlora
    memory = next(s for s in beats if s.startswith("qlora beats lora-r16 on peak memory"))
    assert "by 353 = 18% of lora-r16's 1921" in memory
    assert any(s.startswith("lora-r16 and lora-r8 are within noise") for s in sentences)
    assert any(s.startswith("full and lora-r32 are within noise") for s in sentences)


def test_reference_repetition_rose_beyond_noise_for_four_runs(reference):
    text = " ".join(notes.reading_notes(reference))
    assert "full 4.8 -> 33.3 ± 15.9: rose by 28.5 points" in text
    assert "qlora 16.8 -> 40.9 ± 43.1: did not move beyond noise" in text  # one seed's loop, two seeds' none
    assert "The answers of full, lora-r16, rslora-r16 and pissa-r16 repeat themselves more after training" in text
    assert "lora-r8 4.8 -> 29.2 ± 36.2: did not move beyond noise" in text


def test_reference_pareto_means_that_round_alike_get_more_decimals(reference):
    """lora-r32 set 0.004 above lora-r16 in every seed: dominated on memory (1991 vs 1921 MiB) by a mean that reads
    13.94 against 13.94 at two decimals, as if equal, so the note gives three."""
    records = copy.deepcopy(reference)
    r16 = {r["seed"]: r["eval"]["perplexity_after"] for r in records if r["run_id"] == "lora-r16"}
    for r in records:
        if r["run_id"] == "lora-r32":
            r["eval"]["perplexity_after"] = r16[r["seed"]] + 0.004
    text = " ".join(notes.pareto_notes(records))
    assert "lora-r32 is dominated by lora-r16 (peak memory MiB 1921 vs 1991, perplexity after 13.939 vs 13.943;" in text
    assert "13.94 vs 13.94" not in text and "perplexity after 14.01 vs 14.05" in text


def test_reference_weights_share_of_the_step(reference):
    assert notes.weights_share(reference, "lora-r16") == pytest.approx(27.7, abs=0.1)
    assert notes.weights_share(reference, "qlora") == pytest.approx(11.4, abs=0.1)
    assert notes.weights_share_sentence(reference).startswith("The weights are 28% of lora-r16's step peak")


# ---------------------------------------------------------------- a fixture where general text rises

def test_rising_general_text_reads_rose(reference):
    risen = _with_general_text_scaled(reference, 1.05)
    text = " ".join(notes.reading_notes(risen))
    assert "General-text perplexity rose for 9 of 9 runs" in text and "forgot something" in text
    assert "fell on 0 and rose on 38 of the 38 texts in each record: most texts rose" in text
    assert ": fell" not in text and "perplexity fell" not in text
    moved = measures.change(measures.by_run(risen)["full"], "general-text before", "general-text after")
    assert moved.low > 0 and notes.direction(moved) == "rose"


def test_unmoved_general_text_reads_within_noise(reference):
    same = _with_general_text_scaled(reference, {1: 1.01, 2: 0.99, 42: 1.0})  # seeds disagree: no direction
    full = measures.by_run(same)["full"]
    moved = measures.change(full, "general-text before", "general-text after")
    assert notes.direction(moved) == "did not move beyond noise"
    assert "did not move beyond noise" in notes.change_sentence(full, "general-text before", "general-text after")


def test_one_seed_general_text_change_is_a_paired_bootstrap(reference):
    one = [r for r in _with_general_text_scaled(reference, 1.05) if r["seed"] == 42]
    moved = measures.change(measures.by_run(one)["lora-r8"], "general-text before", "general-text after")
    assert moved.method == "bootstrap" and moved.low > 0


def test_one_seed_claims_no_speed_order_and_no_repetition_direction(reference):
    """One seed gives one measurement per run: no interval, so no "fastest" without saying so, no "repeat more"."""
    text = " ".join(notes.reading_notes([r for r in reference if r["seed"] == 42]))
    assert "One seed, so no interval: the speeds are one measurement each. Fastest:" in text
    assert "no run is said to repeat itself more" in text and "No run's answers" not in text
    three = " ".join(notes.reading_notes(reference))
    assert "One seed, so no interval" not in three and "no run is said to repeat" not in three


# ---------------------------------------------------------------- the decoding demo

def test_penalty_leaves_greedy_unchanged(tiny_llama, real_tokenizer):
    precision = choose_precision("cpu")
    prompts = [[5, 9, 11, 40], [7, 7, 3]]
    greedy = generate(tiny_llama, real_tokenizer, prompts, 12, precision)
    penalised = generate(tiny_llama, real_tokenizer, prompts, 12, precision, repetition_penalty=1.3)
    assert generate(tiny_llama, real_tokenizer, prompts, 12, precision) == greedy
    assert generate(tiny_llama, real_tokenizer, prompts, 12, precision, repetition_penalty=None) == greedy
    assert penalised != greedy  # the penalty does change what a random model loops on
    with pytest.raises(ValueError, match="repetition_penalty"):
        generate(tiny_llama, real_tokenizer, prompts, 4, precision, repetition_penalty=0)


def test_penalty_frame_shows_the_stored_greedy_answers_untouched(tmp_path):
    record = make_record("lora-r16")
    kept = copy.deepcopy(record)
    frame = decoding.penalty_frame(record, ["x y z"] * len(record["generations"]), 1.3)
    assert record == kept
    assert frame["greedy (as compared)"].tolist() == [g["after"] for g in record["generations"]]
    assert frame["penalised repeated 3-grams %"].tolist() == [0.0] * len(record["generations"])
    with pytest.raises(ValueError, match="one answer per stored prompt"):
        decoding.penalty_frame(record, ["only one"], 1.3)


def test_penalty_demo_without_artifacts_says_so(reference, tmp_path):
    assert decoding.saved_adapter(reference, REFERENCE) is None
    frame = decoding.penalty_demo(reference, tmp_path)
    assert list(frame.columns) == ["note"] and "no saved adapter" in frame.iloc[0, 0]
    (tmp_path / "artifacts" / "lora-r8-seed1").mkdir(parents=True)
    assert decoding.saved_adapter(reference, tmp_path)["run_id"] == "lora-r8"


def test_weight_split_adds_up_to_the_qlora_prediction(reference):
    """00's line on what stays fp32 in a 4-bit base uses the same count as the prediction the runs recorded."""
    from helpers.memory import weight_split
    from helpers.models import load_config

    qlora = next(r for r in reference if r["run_id"] == "qlora")
    split = weight_split(load_config(qlora["model"]["preset"]))
    predicted = qlora["memory"]["predicted"]["weights"]
    assert split["nf4_bytes"] + split["fp32_bytes"] + 4 * qlora["params"]["trainable"] == predicted
    assert split["fp32_params"] + split["nf4_params"] == qlora["model"]["total_params"]
    assert split["nf4_bytes"] < split["fp32_bytes"]  # the fp32 embeddings outweigh the 4-bit blocks
