"""helpers.data and helpers.sources: label masking (pad == EOS), tokenization as SFTTrainer's own, padding, prompt
layout, manifest validation, reading rows, data preparation, the reference results' data."""

import json
import textwrap
from pathlib import Path

import pytest
import torch

import helpers
from helpers.data import (IGNORE_INDEX, chunk_text, explain_labels, held_out_rule, pad_batch, prepare_data,
                          render_instruction_prompt, target_tokens, to_example, tokenize)
from helpers.manifests import ManifestError, all_manifests, load_manifest
from helpers.sources import load_rows

REFERENCE_RESULTS = Path(__file__).parents[1] / "notebooks" / "reference_results"


def tokenize_one(row: dict, tokenizer, conversational: bool = False) -> dict:
    """One instruction row as training sees it: {"input_ids", "labels"} lists."""
    example = tokenize([to_example(row, "instruction", conversational)], tokenizer)[0]
    return {"input_ids": list(example["input_ids"]), "labels": list(example["labels"])}


def instruction(text: str, output: str, input_text: str = "") -> dict:
    return {"instruction": text, "input": input_text, "output": output}


# ---------- label masking on the real tokenizer ----------


def test_real_tokenizer_pads_with_eos(real_tokenizer):
    # the premise of the masking tests: masking "pad" by value would also mask every EOS
    assert real_tokenizer.pad_token_id == real_tokenizer.eos_token_id == 2
    assert real_tokenizer.eos_token == "<|im_end|>"


def test_tokenize_masks_exactly_the_prompt(real_tokenizer):
    prompt = render_instruction_prompt("Say hello to the class.", "twenty students")
    response = "Hello, everyone! Welcome."
    ex = tokenize_one(instruction("Say hello to the class.", response, "twenty students"), real_tokenizer)
    prompt_ids = real_tokenizer(prompt).input_ids
    response_ids = real_tokenizer(response, add_special_tokens=False).input_ids
    n = len(prompt_ids)
    assert n > 5 and len(response_ids) > 3
    assert ex["input_ids"] == prompt_ids + response_ids + [2]
    assert len(ex["labels"]) == len(ex["input_ids"])
    assert ex["labels"][:n] == [IGNORE_INDEX] * n
    assert ex["labels"][n:] == ex["input_ids"][n:]
    assert IGNORE_INDEX not in ex["labels"][n:]
    assert ex["labels"][-1] == real_tokenizer.eos_token_id == real_tokenizer.pad_token_id
    assert real_tokenizer.decode(ex["input_ids"][n:]) == response + "<|im_end|>"


def test_tokenize_conversational_learns_the_end_of_turn(real_tokenizer):
    ex = tokenize_one(instruction("Say hello.", "Hello!"), real_tokenizer, conversational=True)
    learned = [t for t, label in zip(ex["input_ids"], ex["labels"]) if label != IGNORE_INDEX]
    assert real_tokenizer.decode(learned).startswith("Hello!<|im_end|>")
    context = real_tokenizer.decode([t for t, label in zip(ex["input_ids"], ex["labels"]) if label == IGNORE_INDEX])
    assert "Say hello." in context and context.endswith("<|im_start|>assistant\n")


# ---------- tokenization is SFTTrainer's own: TRL, through its public constructor, is the oracle ----------

ORACLE_ROWS = [instruction("Say hello to the class.", "Hello, everyone!", "twenty students"),
               instruction("What is a tuple?", "An immutable sequence."),
               instruction("Show a loop.", "```python\nfor i in range(3):\n    print(i)\n```")]
CHAT = [{"role": "system", "content": "You answer in one line."}, {"role": "user", "content": "What is a dict?"},
        {"role": "assistant", "content": "A mapping."}, {"role": "user", "content": "And a set?"},
        {"role": "assistant", "content": "An unordered collection of unique items."}]


@pytest.mark.parametrize("conversational", [True, False], ids=["chat template", "instruction text"])
def test_tokenize_is_what_sfttrainer_trains_on(conversational, real_tokenizer, tiny_llama, sft_prepared):
    raw = ([to_example(r, "instruction", conversational) for r in ORACLE_ROWS]
           + [to_example({"messages": CHAT}, "chat", conversational)])
    ours = tokenize(raw, real_tokenizer).to_list()
    assert ours == sft_prepared(raw, real_tokenizer, tiny_llama)
    assert all(e["labels"][0] == IGNORE_INDEX and e["labels"][-1] != IGNORE_INDEX for e in ours)
    assert all(real_tokenizer.eos_token_id in e["labels"] for e in ours), "the end of turn is learned"


def test_tokenize_is_what_sfttrainer_trains_on_at_the_edges(real_tokenizer, tiny_llama, sft_prepared):
    merged = {"prompt": "### Response:\n", "completion": "\n\nindented"}  # "\n" + "\n\n" tokenize as one "\n\n\n"
    ended = {"prompt": "### Response:\n", "completion": "Done.<|im_end|>"}  # an EOS already there is not doubled
    ours = tokenize([merged, ended], real_tokenizer).to_list()
    assert ours == sft_prepared([merged, ended], real_tokenizer, tiny_llama)
    prompt_ids = real_tokenizer(merged["prompt"]).input_ids
    assert ours[0]["input_ids"][:len(prompt_ids)] != prompt_ids, "control: the prompt's last token merged"
    assert ours[0]["labels"][:len(prompt_ids) - 1] == [IGNORE_INDEX] * (len(prompt_ids) - 1)
    assert ours[0]["labels"][len(prompt_ids) - 1] != IGNORE_INDEX, "the merged token belongs to the completion"
    assert ours[1]["input_ids"].count(real_tokenizer.eos_token_id) == 1

    text = [{"text": "Python is a programming language."}, {"text": "Ada Lovelace wrote the first program."}]
    ours = tokenize(text, real_tokenizer).to_list()
    assert ours == sft_prepared(text, real_tokenizer, tiny_llama)
    assert all(e["labels"] == e["input_ids"] and e["input_ids"][-1] == real_tokenizer.eos_token_id for e in ours)


def test_explain_labels_reports_the_end_of_turn(real_tokenizer):
    ex = tokenize_one(instruction("Count to three.", "1 2 3"), real_tokenizer)
    text = explain_labels(ex, real_tokenizer)
    assert "ends with the end of turn '<|im_end|>': yes" in text
    broken = {"input_ids": ex["input_ids"][:-1], "labels": ex["labels"][:-1]}
    assert "ends with the end of turn '<|im_end|>': NO" in explain_labels(broken, real_tokenizer)


def test_pad_batch_pads_with_ignore_and_keeps_eos_labels(real_tokenizer):
    short = tokenize_one(instruction("Hi", "Yes."), real_tokenizer)
    long = tokenize_one(instruction("Explain lists", "A list is an ordered, mutable sequence."), real_tokenizer)
    pad = real_tokenizer.pad_token_id
    batch = pad_batch([short, long], pad)
    n_short, width = len(short["input_ids"]), len(long["input_ids"])
    assert n_short < width
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, width)
    gap = width - n_short
    assert batch["input_ids"][0].tolist() == short["input_ids"] + [pad] * gap
    assert batch["labels"][0].tolist() == short["labels"] + [IGNORE_INDEX] * gap
    assert batch["attention_mask"][0].tolist() == [1] * n_short + [0] * gap
    assert batch["labels"][1].tolist() == long["labels"]
    assert batch["attention_mask"][1].tolist() == [1] * width
    # the shorter example's EOS (same id as the padding right after it) is still a target
    assert batch["labels"][0, n_short - 1].item() == real_tokenizer.eos_token_id
    assert batch["labels"][1, -1].item() == real_tokenizer.eos_token_id
    assert batch["input_ids"].dtype == torch.long


def test_chunk_text_windows_and_drops_single_tokens():
    ids = list(range(10, 21))  # 11 tokens
    chunks = chunk_text(ids, 4)
    assert [c["input_ids"] for c in chunks] == [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19, 20]]
    assert all(c["labels"] == c["input_ids"] for c in chunks)
    assert [c["input_ids"] for c in chunk_text(list(range(9)), 4)] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # [8] dropped


# ---------- prompt layout ----------


def test_render_instruction_prompt_with_input():
    assert render_instruction_prompt("  Sort the list. ", " [3, 1, 2]\n") == (
        "### Instruction:\nSort the list.\n\n### Input:\n[3, 1, 2]\n\n### Response:\n")


@pytest.mark.parametrize("empty", ["", "   \n"])
def test_render_instruction_prompt_omits_empty_input(empty):
    prompt = render_instruction_prompt("Name a prime.", empty)
    assert prompt == "### Instruction:\nName a prime.\n\n### Response:\n"
    assert "### Input:" not in prompt
    assert render_instruction_prompt("Name a prime.") == prompt


# ---------- manifests ----------


@pytest.mark.parametrize("path", all_manifests(), ids=lambda p: p.name)
def test_every_shipped_manifest_loads(path):
    m = load_manifest(path)
    assert m.name == path.stem
    assert m.format in {"instruction", "chat", "text"}
    assert len(m.prompts) >= 1
    assert load_manifest(path.stem) == m  # by name too


def test_the_shipped_manifests_are_the_known_ones():
    assert {p.stem for p in all_manifests()} >= {"python_docs", "alpaca_cleaned", "oasst1", "wikitext2"}


def test_unknown_manifest_name_lists_the_known_ones():
    with pytest.raises(ManifestError, match="python_docs"):
        load_manifest("no_such_dataset")


VALID = """\
name = "{name}"
description = "test rows"
format = "instruction"

[source]
kind = "file"
path = "rows.json"

[fields]
instruction = "q"
input = "ctx"
output = "a"

[split]
eval_fraction = 0.3
seed = 0

[generation]
prompts = ["What is a test?"]
"""


def write_manifest(tmp_path, text, name="mine"):
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(text).replace("{name}", name))
    return path


def write_rows(tmp_path, rows, name="rows.json"):
    (tmp_path / name).write_text(json.dumps(rows))


def good_rows(n=40):
    return [{"q": f"Question number {i}: what is {i} squared?", "ctx": "" if i % 3 else f"i = {i}",
             "a": f"It is {i * i}."} for i in range(n)]


def assert_names(err: ManifestError, field: str, filename: str = "mine.toml"):
    message = str(err)
    assert filename in message, message
    assert field in message, message
    assert "Fix:" in message, message


def test_valid_file_manifest_loads(tmp_path):
    m = load_manifest(write_manifest(tmp_path, VALID))
    assert (m.name, m.format, m.fields) == ("mine", "instruction", {"instruction": "q", "input": "ctx", "output": "a"})
    assert m.prompts == ("What is a test?",)


BAD_MANIFESTS = {
    "unknown top-level key": (VALID.replace('format = "instruction"', 'format = "instruction"\nepochs = 3'),
                              "epochs"),
    "unknown key in [source]": (VALID.replace('path = "rows.json"', 'path = "rows.json"\nrevision = "main"'),
                                "source.revision"),
    "missing required field": (VALID.replace('output = "a"\n', ""), "fields.output"),
    "field the format does not read": (VALID.replace('output = "a"', 'output = "a"\ntext = "a"'), "fields.text"),
    "unknown format": (VALID.replace('format = "instruction"', 'format = "qa"'), "format"),
    "eval_fraction and eval_split": (VALID.replace("eval_fraction = 0.3", 'eval_fraction = 0.3\neval_split = "test"'),
                                     "split"),
    "neither eval_fraction nor eval_split": (VALID.replace("eval_fraction = 0.3\n", ""), "split"),
    "eval_fraction out of range": (VALID.replace("eval_fraction = 0.3", "eval_fraction = 1.5"), "split.eval_fraction"),
    "unknown source kind": (VALID.replace('kind = "file"', 'kind = "s3"'), "source.kind"),
    "file kind without path": (VALID.replace('path = "rows.json"\n', ""), "source.path"),
    "name differs from the file": (VALID.replace('name = "{name}"', 'name = "other"'), "name"),
    "no generation prompts": (VALID.replace('prompts = ["What is a test?"]', "prompts = []"), "generation.prompts"),
    "not TOML": (VALID.replace("[split]", "[split"), "file"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_bad_manifest_names_file_field_and_fix(tmp_path, case):
    text, field = BAD_MANIFESTS[case]
    path = write_manifest(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert_names(info.value, f"[{field}]")


def test_fields_column_missing_from_the_data(tmp_path):
    write_rows(tmp_path, [{"question": "What?", "ctx": "", "a": "That."}] * 5)
    m = load_manifest(write_manifest(tmp_path, VALID))  # the manifest itself is fine
    with pytest.raises(ManifestError) as info:
        load_rows(m)
    assert_names(info.value, "[fields.instruction]")
    assert "'q'" in str(info.value) and "question" in str(info.value)  # what is missing and what exists


def test_zero_usable_rows(tmp_path):
    write_rows(tmp_path, [{"q": f"Question {i}", "ctx": "", "a": "   " if i % 2 else ""} for i in range(20)])
    m = load_manifest(write_manifest(tmp_path, VALID))
    with pytest.raises(ManifestError) as info:
        load_rows(m)
    assert "zero usable rows" in str(info.value)
    assert_names(info.value, "[fields]")


def test_missing_data_file(tmp_path):
    m = load_manifest(write_manifest(tmp_path, VALID))
    with pytest.raises(ManifestError) as info:
        load_rows(m)
    assert_names(info.value, "[source.path]")


def test_load_rows_maps_fields_and_splits_deterministically(tmp_path):
    rows = good_rows(40)
    write_rows(tmp_path, rows)
    m = load_manifest(write_manifest(tmp_path, VALID))
    train, evals = load_rows(m)
    assert train and evals
    assert len(train) + len(evals) == 40
    assert set(train[0]) == {"instruction", "input", "output", "group"}
    key = lambda r: r["instruction"]  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in evals}
    assert {key(r) for r in train + evals} == {r["q"] for r in rows}
    # the split depends on content, not on row order
    write_rows(tmp_path, rows[::-1])
    train2, evals2 = load_rows(m)
    assert sorted(map(key, evals2)) == sorted(map(key, evals))


def test_jsonl_rows(tmp_path):
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in good_rows(30)) + "\n\n")
    m = load_manifest(write_manifest(tmp_path, VALID.replace("rows.json", "rows.jsonl")))
    train, evals = load_rows(m)
    assert len(train) + len(evals) == 30


def test_rows_missing_the_optional_input_column(tmp_path):
    rows = good_rows(20)
    for r in rows[1:]:
        del r["ctx"]  # JSONL often leaves an empty optional column out
    write_rows(tmp_path, rows)
    m = load_manifest(write_manifest(tmp_path, VALID))
    try:
        train, evals = load_rows(m)
    except ManifestError as err:
        assert_names(err, "ctx")
    else:
        assert len(train) + len(evals) == 20
        assert all(r["input"] == "" for r in train + evals if r["instruction"] != rows[0]["q"])


def test_eval_fraction_as_a_string(tmp_path):
    path = write_manifest(tmp_path, VALID.replace("eval_fraction = 0.3", 'eval_fraction = "0.3"'))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert_names(info.value, "split.eval_fraction")


def test_prompts_as_a_string(tmp_path):
    path = write_manifest(tmp_path, VALID.replace('prompts = ["What is a test?"]', 'prompts = "Hello"'))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert_names(info.value, "generation.prompts")


# ---------- prepare_data end to end (real tokenizer) ----------


def _prepare(path, tokenizer, seed, max_length=128, conversational=False, train_examples=1000, eval_examples=1000):
    return prepare_data(str(path), tokenizer, conversational, max_length=max_length, train_examples=train_examples,
                        eval_examples=eval_examples, generation_prompts=1, seed=seed)


def test_prepare_data_end_to_end(tmp_path, real_tokenizer):
    rows = good_rows(40) + [{"q": "Write a long essay.", "ctx": "", "a": "word " * 400}]  # too long: dropped
    write_rows(tmp_path, rows)
    path = write_manifest(tmp_path, VALID)
    first = _prepare(path, real_tokenizer, seed=42)
    again = _prepare(path, real_tokenizer, seed=42)
    other = _prepare(path, real_tokenizer, seed=7)

    train = {tuple(x) for x in first.train["input_ids"]}
    evals = {tuple(x) for x in first.eval["input_ids"]}
    assert len(train) == len(first.train) and len(evals) == len(first.eval)  # all distinct
    assert train and evals and not train & evals  # disjoint
    assert len(first.train) + len(first.eval) == 40 and first.dropped_too_long == 1
    assert all(len(x) <= 128 for x in list(first.train["input_ids"]) + list(first.eval["input_ids"]))
    all_labels = list(first.train["labels"]) + list(first.eval["labels"])
    assert all(labels[-1] == real_tokenizer.eos_token_id for labels in all_labels)

    assert len(first.fingerprint) == 16
    assert first.fingerprint == again.fingerprint
    assert first.fingerprint != other.fingerprint
    assert evals == {tuple(x) for x in other.eval["input_ids"]}  # same held-out rows, other order

    assert first.instructions == ["What is a test?"]
    assert first.prompt_ids == [real_tokenizer("### Instruction:\nWhat is a test?\n\n### Response:\n").input_ids]
    assert first.conversational is False
    stats = first.describe()
    assert stats["held_out"] == "30% by a stable hash of each row's content"
    assert stats["description"] == "test rows"
    assert stats["train"]["examples"] == len(first.train)
    assert stats["eval"]["target_tokens"] == sum(sum(1 for t in lab[1:] if t != IGNORE_INDEX)
                                                 for lab in first.eval["labels"])


def test_prepare_data_conversational_prompts_use_the_chat_template(tmp_path, real_tokenizer):
    write_rows(tmp_path, good_rows(20))
    data = _prepare(write_manifest(tmp_path, VALID), real_tokenizer, seed=0, max_length=192, conversational=True)
    prompt = real_tokenizer.decode(data.prompt_ids[0])
    assert "<|im_start|>user\nWhat is a test?<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert data.describe()["template"] == "chat template"


def test_prepare_data_caps_after_shuffling(tmp_path, real_tokenizer):
    write_rows(tmp_path, good_rows(40))
    path = write_manifest(tmp_path, VALID)
    full = _prepare(path, real_tokenizer, seed=0)
    capped = _prepare(path, real_tokenizer, seed=0, train_examples=5, eval_examples=3)
    assert (len(capped.train), len(capped.eval)) == (5, 3)
    assert {tuple(x) for x in capped.train["input_ids"]} <= {tuple(x) for x in full.train["input_ids"]}


def test_prepare_data_nothing_fits(tmp_path, real_tokenizer):
    write_rows(tmp_path, good_rows(20))
    with pytest.raises(ManifestError, match="max_length") as info:
        _prepare(write_manifest(tmp_path, VALID), real_tokenizer, seed=0, max_length=4)
    assert_names(info.value, "[split]")


# ---------- the reference results' data ----------

def test_the_cpu_profile_builds_the_data_of_the_reference_results(tmp_path):
    """notebooks/reference_results were measured on this data: the same ids and labels (fingerprint), the same held-out
    target tokens and the same general-text windows. A change to reading or tokenization that voids them fails here."""
    records = [json.loads(p.read_text()) for p in sorted(REFERENCE_RESULTS.glob("*-seed*.json"))]
    assert len(records) == 27  # 9 runs x 3 seeds
    [recorded] = {(r["data"]["fingerprint"], r["data"]["train_examples"], r["data"]["eval_examples"],
                   r["eval"]["tokens"], r["forgetting"]["tokens"]) for r in records}
    assert recorded[0] == "52ee9d58d86b7ca4"
    lab = helpers.Lab("cpu", results=tmp_path)
    windows = [len(w) - 1 for w in lab.forgetting_set["input_ids"]]
    assert (lab.data.fingerprint, len(lab.data.train), len(lab.data.eval), target_tokens(lab.data.eval),
            sum(windows)) == recorded
    assert windows == [n for _, n in records[0]["forgetting"]["per_example_before"]]


def test_the_held_out_rule_is_said_for_each_shipped_manifest():
    """The notebooks print this instead of assuming the offline data: on Colab the gpu profile holds out by hash."""
    rules = {name: held_out_rule(load_manifest(name).split) for name in ("python_docs", "alpaca_cleaned", "wikitext2")}
    assert rules["python_docs"] == "10% by whole 'group' groups: no group appears on both sides"
    assert rules["alpaca_cleaned"] == "5% by a stable hash of each row's content"
    assert rules["wikitext2"].startswith("the source's own ")
