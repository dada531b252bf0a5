"""Every bad input a student can type ends in a clear error before any heavy work: the message names the place (file,
line, field or parameter) and the fix ("<where>: <what is wrong>. Fix: <how>"), and nothing is written.

One parametrized test per table; each row is one case. The Lab-level rows also check that the results folder stays
empty and that no model load, baseline or training started (those functions are replaced by tripwires).
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, replace
from typing import Callable

import pytest

import helpers
from helpers.data import prepare_data, prepare_text
from helpers.manifests import ManifestError, load_manifest
from helpers.models import get_preset
from helpers.profiles import PROFILES, ProfileError, check_flag, get_profile
from helpers.sources import DataFileError, load_rows, read_data_file
from helpers.tracking import check_report_to
from helpers.profiles import check as check_profile
from helpers.specs import SpecError, check, check_targets, lora_config, lora_runs, nf4_config

MESSAGE = re.compile(r"^\S.*?: .+\. Fix: \S.+", re.DOTALL)  # "<where>: <what is wrong>. Fix: <how>"


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable  # (tmp_path, monkeypatch) -> raises
    error: type[Exception]
    places: tuple[str, ...]  # substrings naming where (file, line, field, parameter) and, often, the fix


def assert_clear(err: Exception, case: Case) -> str:
    message = str(err)
    assert isinstance(err, case.error), f"{type(err).__name__}: {message}"
    for place in case.places:
        assert place in message, f"{place!r} not in: {message}"
    assert "Fix:" in message, message
    assert MESSAGE.match(message), f"not '<where>: <what>. Fix: <how>': {message}"
    return message


def run_case(case: Case, tmp_path, monkeypatch) -> str:
    with pytest.raises(Exception) as info:
        case.make(tmp_path, monkeypatch)
    return assert_clear(info.value, case)


# ---------------------------------------------------------------- files students write

INSTRUCTION_MANIFEST = """\
name = "mine"
format = "instruction"

[source]
kind = "file"
path = "{data}"

[fields]
instruction = "q"
output = "a"

[split]
eval_fraction = 0.3

[generation]
prompts = ["What is a test?"]
"""

CHAT_MANIFEST = INSTRUCTION_MANIFEST.replace('format = "instruction"', 'format = "chat"').replace(
    'instruction = "q"\noutput = "a"', 'messages = "conversation"')


def rows(n: int = 30) -> list[dict]:
    return [{"q": f"What is {i} squared?", "a": f"It is {i * i}."} for i in range(n)]


def jsonl(items) -> str:
    return "".join(json.dumps(r) + "\n" for r in items)


def write(tmp_path, data: str | bytes, data_name: str = "rows.jsonl", manifest: str = INSTRUCTION_MANIFEST,
          extra: str = ""):
    """A manifest mine.toml reading `data` from data_name; returns the manifest's path."""
    if data is not None:
        target = tmp_path / data_name
        target.write_bytes(data if isinstance(data, bytes) else data.encode())
    path = tmp_path / "mine.toml"
    path.write_text(manifest.replace("{data}", data_name) + textwrap.dedent(extra))
    return path


def rows_of(data, data_name="rows.jsonl", manifest=INSTRUCTION_MANIFEST, extra=""):
    """A case body: write the files, then read the rows as prepare_data does."""
    def make(tmp_path, monkeypatch):
        load_rows(load_manifest(write(tmp_path, data, data_name, manifest, extra)))
    return make


def manifest_with(*edits: str):
    """A case body: the instruction manifest with (old, new, old, new, ...) text replacements."""
    text = INSTRUCTION_MANIFEST.replace("{data}", "rows.jsonl")
    for old, new in zip(edits[::2], edits[1::2]):
        assert old in text, old
        text = text.replace(old, new)

    def make(tmp_path, monkeypatch):
        load_manifest(write(tmp_path, jsonl(rows()), manifest=text))
    return make


def chat_rows(conversation) -> str:
    good = [{"conversation": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello"}]}
            for i in range(10)]
    return jsonl(good[:3] + [{"conversation": conversation}] + good[3:])


SPREAD_LIST = json.dumps(rows(3), indent=1)  # a .json list saved under a .jsonl name
UNICODE = "ü".encode("latin-1")

DATA_CASES = [
    Case("data file missing", rows_of(None), ManifestError,
         ("mine.toml", "[source.path]", "rows.jsonl", "does not exist")),
    Case("data path is a folder", lambda t, m: (t.joinpath("rows.jsonl").mkdir(), rows_of(None)(t, m)), ManifestError,
         ("[source.path]", "folder")),
    Case("empty file", rows_of(""), DataFileError, ("rows.jsonl", "empty")),
    Case("only blank lines", rows_of("\n  \n\n"), DataFileError, ("rows.jsonl", "empty")),
    Case("malformed JSONL line", rows_of(jsonl(rows(2)) + '{"q": "x", "a": "y"\n' + jsonl(rows(2))), DataFileError,
         ("rows.jsonl, line 3", "not valid JSON")),
    Case("JSONL line with single quotes", rows_of("{'q': 'x', 'a': 'y'}\n"), DataFileError, ("rows.jsonl, line 1",)),
    Case("JSONL line that is a list", rows_of(jsonl(rows(1)) + '["q", "a"]\n'), DataFileError,
         ("rows.jsonl, line 2", "not a JSON object")),
    Case("JSON list saved as .jsonl", rows_of(SPREAD_LIST), DataFileError,
         ("rows.jsonl, line 1", "name the file .json")),
    Case("JSONL saved as .json", rows_of(jsonl(rows(3)), "rows.json"), DataFileError,
         ("rows.json, line 2", "name the file .jsonl")),
    Case("JSON object instead of a list", rows_of(json.dumps({"data": rows(3)}), "rows.json"), DataFileError,
         ("rows.json", "not a list of rows", "under the key 'data'")),
    Case("JSON number instead of a list", rows_of("42", "rows.json"), DataFileError, ("rows.json", "a number")),
    Case("JSON empty list", rows_of("[]", "rows.json"), DataFileError, ("rows.json", "empty list")),
    Case("rows that are not objects", rows_of(json.dumps(rows(2) + ["just text"]), "rows.json"), DataFileError,
         ("rows.json, row 3", "not a JSON object")),
    Case("not UTF-8", rows_of(jsonl(rows(2)).encode() + b'{"q": "' + UNICODE + b'", "a": "b"}\n'), DataFileError,
         ("rows.jsonl, line 3", "UTF-8")),
    Case("wrong columns", rows_of(jsonl({"question": r["q"], "a": r["a"]} for r in rows())), ManifestError,
         ("mine.toml", "[fields.instruction]", "rows.jsonl has no column 'q'", "question")),
    Case("column name in the wrong case", rows_of(jsonl({"Q": r["q"], "a": r["a"]} for r in rows())), ManifestError,
         ("[fields.instruction]", "did you mean 'Q'")),
    Case("non-text value (object)", rows_of(jsonl(rows(4)) + jsonl([{"q": "x", "a": {"text": "y"}}])), ManifestError,
         ("[fields.output]", "rows.jsonl line 5", "holds an object")),
    Case("non-text value (list) in a .json", rows_of(json.dumps(rows(2) + [{"q": ["x"], "a": "y"}]), "rows.json"),
         ManifestError, ("[fields.instruction]", "rows.json row 3", "holds a list")),
    Case("non-text value (true)", rows_of(jsonl(rows(2) + [{"q": "x", "a": True}])), ManifestError,
         ("[fields.output]", "line 3", "true/false")),
    Case("no usable rows", rows_of(jsonl({"q": f"Q{i}", "a": " "} for i in range(20))), ManifestError,
         ("mine.toml", "[fields]", "zero usable rows", "20 read")),
    Case("one side of the split empty", rows_of(jsonl(dict(r, g="same") for r in rows()),
                                                manifest=INSTRUCTION_MANIFEST.replace(
                                                    "eval_fraction = 0.3", 'eval_fraction = 0.3\ngroup_by = "g"')),
         ManifestError, ("[split]", "zero usable rows in the")),
    Case("group_by column missing", rows_of(jsonl(rows()), manifest=INSTRUCTION_MANIFEST.replace(
        "eval_fraction = 0.3", 'eval_fraction = 0.3\ngroup_by = "topic"')), ManifestError,
         ("[split.group_by]", "no column 'topic'")),
    Case("filter on a missing column", rows_of(jsonl(rows()), extra='[filter]\nlang = "en"\n'), ManifestError,
         ("[filter.lang]", "no column 'lang'")),
    Case("filter keeps no row", rows_of(jsonl(dict(r, lang="EN") for r in rows()), extra='[filter]\nlang = "en"\n'),
         ManifestError, ("[filter.lang]", "no row", "'EN'")),
    Case("chat: messages not a list", rows_of(chat_rows("Hello there"), manifest=CHAT_MANIFEST), ManifestError,
         ("[fields.messages]", "rows.jsonl line 4", "{role, content}")),
    Case("chat: last message from the user", rows_of(chat_rows([{"role": "user", "content": "Hi"}]),
                                                     manifest=CHAT_MANIFEST), ManifestError,
         ("[fields.messages]", "line 4", "last message")),
    Case("chat: unknown role", rows_of(chat_rows([{"role": "human", "content": "Hi"},
                                                  {"role": "assistant", "content": "Yo"}]), manifest=CHAT_MANIFEST),
         ManifestError, ("[fields.messages]", "line 4", "'human'")),
    Case("read_data_file on a missing path", lambda t, m: read_data_file(t / "nope.jsonl"), DataFileError,
         ("nope.jsonl", "does not exist")),
]


@pytest.mark.parametrize("case", DATA_CASES, ids=lambda c: c.id)
def test_bad_data_file(case, tmp_path, monkeypatch):
    run_case(case, tmp_path, monkeypatch)


def test_a_byte_order_mark_and_numbers_are_fine(tmp_path):
    data = b"\xef\xbb\xbf" + jsonl(rows(20) + [{"q": "What is 6 times 7?", "a": 42}]).encode()
    train, evals = load_rows(load_manifest(write(tmp_path, data)))
    assert len(train) + len(evals) == 21
    assert "42" in {r["output"] for r in train + evals}


def test_chat_rows_map(tmp_path):
    train, evals = load_rows(load_manifest(write(tmp_path, chat_rows([{"role": "user", "content": "Hi"},
                                                                      {"role": "assistant", "content": "Hey"}]),
                                                 manifest=CHAT_MANIFEST)))
    assert len(train) + len(evals) == 11 and all(r["messages"][-1]["role"] == "assistant" for r in train + evals)


# ---------------------------------------------------------------- manifests: wrong types (the other cases: test_data)

MANIFEST_CASES = [
    Case("format is a list", manifest_with('format = "instruction"', 'format = ["instruction"]'), ManifestError,
         ("mine.toml", "[format]")),
    Case("format misspelt", manifest_with('format = "instruction"', 'format = "instructions"'), ManifestError,
         ("[format]", "did you mean 'instruction'")),
    Case("source is text", manifest_with('[source]\nkind = "file"\npath = "rows.jsonl"', 'source = "rows.jsonl"'),
         ManifestError, ("[source]", "not a table")),
    Case("source.kind is a number", manifest_with('kind = "file"', "kind = 3"), ManifestError, ("[source.kind]",)),
    Case("source.path is a number", manifest_with('path = "rows.jsonl"', "path = 5"), ManifestError,
         ("[source.path]",)),
    Case("source.path is a .csv", manifest_with('path = "rows.jsonl"', 'path = "rows.csv"'), ManifestError,
         ("[source.path]", ".jsonl")),
    Case("unknown transform", manifest_with('path = "rows.jsonl"', 'path = "rows.jsonl"\ntransform = "pairs"'),
         ManifestError, ("[source.transform]", "oasst_pairs")),
    Case("fields value is a number", manifest_with('output = "a"', "output = 3"), ManifestError, ("[fields.output]",)),
    Case("fields is a list", manifest_with('[fields]\ninstruction = "q"\noutput = "a"', "",
                                           'format = "instruction"', 'format = "instruction"\nfields = ["q", "a"]'),
         ManifestError, ("[fields]", "not a table")),
    Case("filter is text", manifest_with('format = "instruction"', 'format = "instruction"\nfilter = "en"'),
         ManifestError, ("[filter]", "table")),
    Case("filter value is a list",
         lambda t, m: load_manifest(write(t, jsonl(rows()), extra='[filter]\nlang = ["en"]\n')),
         ManifestError, ("[filter.lang]",)),
    Case("max_train as text", manifest_with("eval_fraction = 0.3", 'eval_fraction = 0.3\nmax_train = "500"'),
         ManifestError, ("[split.max_train]", "max_train = 500")),
    Case("max_train zero", manifest_with("eval_fraction = 0.3", "eval_fraction = 0.3\nmax_train = 0"), ManifestError,
         ("[split.max_train]",)),
    Case("split seed negative", manifest_with("eval_fraction = 0.3", "eval_fraction = 0.3\nseed = -1"), ManifestError,
         ("[split.seed]",)),
    Case("split seed as text", manifest_with("eval_fraction = 0.3", 'eval_fraction = 0.3\nseed = "0"'), ManifestError,
         ("[split.seed]",)),
    Case("eval_fraction true", manifest_with("eval_fraction = 0.3", "eval_fraction = true"), ManifestError,
         ("[split.eval_fraction]",)),
    Case("eval_split for a file", manifest_with("eval_fraction = 0.3", 'eval_split = "test"'), ManifestError,
         ("[split.eval_split]", "eval_fraction")),
    Case("group_by is a number", manifest_with("eval_fraction = 0.3", "eval_fraction = 0.3\ngroup_by = 3"),
         ManifestError, ("[split.group_by]",)),
    Case("prompts of numbers", manifest_with('prompts = ["What is a test?"]', "prompts = [1, 2]"), ManifestError,
         ("[generation.prompts]",)),
    Case("description is a number", manifest_with('format = "instruction"', 'format = "instruction"\ndescription = 5'),
         ManifestError, ("[description]",)),
    Case("name is a number", manifest_with('name = "mine"', "name = 5"), ManifestError, ("[name]", "name = 'mine'")),
    Case("misspelt key", manifest_with('format = "instruction"', 'format = "instruction"\ndescripton = "x"'),
         ManifestError, ("[descripton]", "did you mean 'description'")),
    Case("not UTF-8 manifest", lambda t, m: (t.joinpath("mine.toml").write_bytes(b'name = "' + UNICODE + b'"\n'),
                                            load_manifest(t / "mine.toml")), ManifestError, ("mine.toml", "[file]")),
]


@pytest.mark.parametrize("case", MANIFEST_CASES, ids=lambda c: c.id)
def test_bad_manifest_type(case, tmp_path, monkeypatch):
    run_case(case, tmp_path, monkeypatch)


# ---------------------------------------------------------------- datasets, presets, profiles, seeds, parameters


def profile(*args, **kwargs):
    return lambda t, m: get_profile(*args, **kwargs)


def with_env(name, value, body):
    def make(tmp_path, monkeypatch):
        monkeypatch.setenv(name, value)
        body(tmp_path, monkeypatch)
    return make


def prepare(manifest, **kwargs):
    args = dict(tokenizer=None, conversational=False, max_length=128, train_examples=8, eval_examples=4,
                generation_prompts=1, seed=0)
    args.update(kwargs)
    return lambda t, m: prepare_data(manifest, **args)


PARAMETER_CASES = [
    Case("DATASET unknown", profile("cpu", dataset="pyhton_docs"), ManifestError,
         ("DATASET = 'pyhton_docs'", "did you mean 'python_docs'")),
    Case("DATASET in capitals", profile("cpu", dataset="Python_Docs"), ManifestError, ("did you mean 'python_docs'",)),
    Case("DATASET is a data file", profile("cpu", dataset="rows.jsonl"), ManifestError,
         ("DATASET = 'rows.jsonl'", "not a manifest")),
    Case("DATASET is a .csv", profile("cpu", dataset="rows.csv"), ManifestError, ("DATASET = 'rows.csv'", ".toml")),
    Case("DATASET path missing", profile("cpu", dataset="mine/nothing.toml"), ManifestError,
         ("DATASET = 'mine/nothing.toml'", "does not exist")),
    Case("DATASET is a number", profile("cpu", dataset=3), ManifestError, ("DATASET = 3",)),
    Case("DATASET is a text manifest", profile("cpu", dataset="vital_articles"), ProfileError,
         ("DATASET = 'vital_articles'", "'text' manifest")),
    Case("prepare_data on a text manifest", prepare("vital_articles"), ManifestError,
         ("vital_articles.toml", "[format]", "'text' manifest")),
    Case("prepare_text on an instruction manifest", lambda t, m: prepare_text("python_docs", None, 64, 100, 0),
         ManifestError, ("python_docs.toml", "[format]", "forgetting")),
    Case("prepare_data conversational='chat'", prepare("python_docs", conversational="chat"), TypeError,
         ("conversational='chat'",)),
    Case("prepare_data max_length=0", prepare("python_docs", max_length=0), ValueError, ("max_length=0",)),
    Case("forgetting is an instruction manifest", profile("cpu", forgetting="python_docs"), ProfileError,
         ("forgetting = 'python_docs'",)),
    Case("MODEL_PRESET unknown", profile("cpu", model="smollm2"), ProfileError,
         ("MODEL_PRESET = 'smollm2'", "did you mean 'smollm2-135m'")),
    Case("MODEL_PRESET a Hub id", profile("cpu", model="HuggingFaceTB/SmolLM2-135M-Instruct"), ProfileError,
         ("MODEL_PRESET", "'smollm2-135m'")),
    Case("get_preset('GPT2')", lambda t, m: get_preset("GPT2"), ValueError, ("MODEL_PRESET = 'GPT2'", "'gpt2'")),
    Case("PROFILE 'CPU'", profile("CPU"), ProfileError, ("PROFILE = 'CPU'", "did you mean 'cpu'")),
    Case("PROFILE a number", profile(1), ProfileError, ("PROFILE = 1", "smoke, cpu, gpu")),
    Case("$LAB_PROFILE 'GPU '", with_env("LAB_PROFILE", "GPU ", profile()), ProfileError,
         ("$LAB_PROFILE", "did you mean 'gpu'")),
    Case("unknown setting max_step", profile("cpu", max_step=3), ProfileError,
         ("max_step=", "did you mean 'max_steps'")),
    Case("MAX_STEPS = '30'", profile("cpu", max_steps="30"), ProfileError, ("MAX_STEPS = '30'", "MAX_STEPS = 30")),
    Case("MAX_STEPS = 'thirty'", profile("cpu", max_steps="thirty"), ProfileError, ("MAX_STEPS = 'thirty'",)),
    Case("MAX_STEPS = 30.0", profile("cpu", max_steps=30.0), ProfileError, ("MAX_STEPS = 30.0", "MAX_STEPS = 30")),
    Case("MAX_STEPS = 2.5", profile("cpu", max_steps=2.5), ProfileError, ("MAX_STEPS = 2.5",)),
    Case("MAX_STEPS = True", profile("cpu", max_steps=True), ProfileError, ("MAX_STEPS = True",)),
    Case("MAX_STEPS = 0", profile("cpu", max_steps=0), ProfileError, ("MAX_STEPS = 0", "too small")),
    Case("MAX_STEPS = -5", profile("cpu", max_steps=-5), ProfileError, ("MAX_STEPS = -5",)),
    Case("MAX_STEPS = [30]", profile("cpu", max_steps=[30]), ProfileError, ("MAX_STEPS = [30]",)),
    Case("MAX_STEPS = 30_000_000", profile("cpu", max_steps=30_000_000), ProfileError, ("MAX_STEPS", "implausibly")),
    Case("warmup >= steps (MAX_STEPS = 3)", profile("cpu", max_steps=3), ProfileError,
         ("profile 'cpu' with MAX_STEPS = 3", "warmup_steps = 3")),
    Case("warmup_steps = -1", profile("cpu", warmup_steps=-1), ProfileError, ("warmup_steps = -1",)),
    Case("max_length = 8", profile("cpu", max_length=8), ProfileError, ("max_length = 8",)),
    Case("max_length beyond the model", profile("cpu", model="gpt2", max_length=2048), ProfileError,
         ("max_length = 2048", "'gpt2'", "1024")),
    Case("batch_size > train_examples", profile("cpu", train_examples=2), ProfileError,
         ("batch_size = 4", "train_examples = 2")),
    Case("eval_batch_tokens < max_length", profile("cpu", eval_batch_tokens=64), ProfileError,
         ("eval_batch_tokens = 64",)),
    Case("train_examples = None-like 0", profile("cpu", train_examples=0), ProfileError, ("train_examples = 0",)),
    Case("learning_rates missing lora", profile("cpu", learning_rates={"full": 1e-4}), ProfileError,
         ("learning_rates",)),
    Case("learning rate 2", profile("cpu", learning_rates={"full": 2, "lora": 3e-4}), ProfileError,
         ("learning_rates['full'] = 2",)),
    Case("SEEDS = 0", profile("cpu", seeds=0), ProfileError, ("SEEDS = 0", "from 1 to 10")),
    Case("SEEDS = 42", profile("cpu", seeds=42), ProfileError, ("SEEDS = 42", "SEEDS = [42]")),
    Case("SEEDS = [1, 1]", profile("cpu", seeds=[1, 1]), ProfileError, ("SEEDS = [1, 1]", "repeats")),
    Case("SEEDS = ['a']", profile("cpu", seeds=["a"]), ProfileError, ("SEEDS = ['a']", "'a'")),
    Case("SEEDS = '3'", profile("cpu", seeds="3"), ProfileError, ("SEEDS = '3'", "SEEDS = 3")),
    Case("SEEDS = '42,1,2'", profile("cpu", seeds="42,1,2"), ProfileError, ("SEEDS = [42,1,2]",)),
    Case("SEEDS = []", profile("cpu", seeds=[]), ProfileError, ("SEEDS = []", "empty")),
    Case("SEEDS = 3.0", profile("cpu", seeds=3.0), ProfileError, ("SEEDS = 3.0",)),
    Case("SEEDS = True", profile("cpu", seeds=True), ProfileError, ("SEEDS = True",)),
    Case("SEEDS = [-1]", profile("cpu", seeds=[-1]), ProfileError, ("SEEDS = [-1]", "outside")),
    Case("$LAB_SEEDS = 'abc'", with_env("LAB_SEEDS", "abc", profile("cpu")), ProfileError,
         ("$LAB_SEEDS = 'abc'", "LAB_SEEDS=3")),
    Case("$LAB_SEEDS = '0'", with_env("LAB_SEEDS", "0", profile("cpu")), ProfileError, ("$LAB_SEEDS = 0",)),
    Case("$LAB_SEEDS = '1,1'", with_env("LAB_SEEDS", "1,1", profile("cpu")), ProfileError,
         ("$LAB_SEEDS = [1, 1]", "repeats")),
    Case("$LAB_SEEDS = '99'", with_env("LAB_SEEDS", "99", profile("cpu")), ProfileError, ("$LAB_SEEDS = 99",)),
    Case("REPORT_TO = 'tensorbord'", lambda t, m: check_report_to("tensorbord"), ProfileError,
         ("REPORT_TO = 'tensorbord'", "did you mean 'tensorboard'")),
    Case("REPORT_TO = ['wandb']", lambda t, m: check_report_to(["wandb"]), ProfileError, ("REPORT_TO = ['wandb']",)),
    Case("REPORT_TO tracker not installed", lambda t, m: (m.setattr("importlib.util.find_spec", lambda name: None),
                                                          check_report_to("wandb")), ProfileError,
         ("REPORT_TO = 'wandb'", "pip install wandb")),
    Case("FORCE = 'True'", lambda t, m: check_flag("FORCE", "True"), ProfileError, ("FORCE = 'True'", "FORCE = True")),
    Case("FORCE = 'yes'", lambda t, m: check_flag("FORCE", "yes"), ProfileError, ("FORCE = 'yes'",)),
]


@pytest.mark.parametrize("case", PARAMETER_CASES, ids=lambda c: c.id)
def test_bad_parameter(case, tmp_path, monkeypatch):
    monkeypatch.delenv("LAB_SEEDS", raising=False)
    monkeypatch.delenv("LAB_PROFILE", raising=False)
    monkeypatch.chdir(tmp_path)  # relative DATASET paths are looked up from here
    run_case(case, tmp_path, monkeypatch)


def test_good_parameters_still_pass(monkeypatch):
    monkeypatch.delenv("LAB_SEEDS", raising=False)
    assert get_profile("cpu", max_steps=40, seeds=3).seeds == (42, 1, 2)
    assert get_profile("cpu", seeds=[7, 8]).seeds == (7, 8)
    assert get_profile("cpu", dataset="python_docs.toml").dataset == "python_docs.toml"  # a file name works too
    monkeypatch.setenv("LAB_SEEDS", "42, 1 2")
    assert get_profile("cpu").seeds == (42, 1, 2)
    assert check_report_to(None) == check_report_to("none") == "none"
    assert check_flag("FORCE", False) is False and check_flag("FORCE", 1) is True
    for name, table_profile in PROFILES.items():
        assert check_profile(table_profile) == get_profile(name, seeds=list(table_profile.seeds))


# ---------------------------------------------------------------- run specs


def spec_case(make_spec):
    return lambda t, m: make_spec()


def corrupt(spec, obj_name, field, value):
    """A spec edited after it was made (frozen dataclasses can still be forced): lab.run must re-check it."""
    target = spec if obj_name == "spec" else getattr(spec, obj_name)
    object.__setattr__(target, field, value)
    return spec


def lora_with(**changes):
    """helpers.lora(8) with its LoraConfig's fields changed after construction (as a student might edit one)."""
    def make():
        config = lora_config(8)
        for key, value in changes.items():
            setattr(config, key, value)
        return replace(helpers.lora(8), lora=config)
    return make


def qlora_with(**changes):
    def make():
        config = nf4_config()
        for key, value in changes.items():
            setattr(config, key, value)
        return replace(helpers.qlora(), quantization=config)
    return make


SMOL_LAYERS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}

SPEC_CASES = [
    Case("rank 0", spec_case(lambda: helpers.lora(0)), SpecError, ("RANK = 0", "from 1 to")),
    Case("rank 16.0", spec_case(lambda: helpers.lora(16.0)), SpecError, ("RANK = 16.0", "RANK = 16")),
    Case("RANK = '16' (qlora)", spec_case(lambda: helpers.qlora("16")), SpecError, ("RANK = '16'", "RANK = 16")),
    Case("RANK = [8, 16]", spec_case(lambda: helpers.lora([8, 16])), SpecError, ("RANK = [8, 16]", "for r in RANKS")),
    Case("rank 2048", spec_case(lambda: helpers.lora(2048)), SpecError, ("RANK = 2048",)),
    Case("RANKS = 8", spec_case(lambda: lora_runs(8)), SpecError, ("RANKS = 8", "RANKS = [8]")),
    Case("RANKS = '8'", spec_case(lambda: lora_runs("8")), SpecError, ("RANKS = '8'", "RANKS = [8]")),
    Case("RANKS = [8, '16']", spec_case(lambda: lora_runs([8, "16"])), SpecError, ("RANKS = [8, '16']", "'16'")),
    Case("RANKS = [8, 8]", spec_case(lambda: lora_runs([8, 8])), SpecError, ("RANKS = [8, 8]", "RANKS = [8]")),
    Case("RANKS = []", spec_case(lambda: lora_runs([])), SpecError, ("RANKS = []",)),
    Case("negative alpha", spec_case(lambda: helpers.lora(8, alpha=-16)), SpecError, ("'lora-r8'", "lora_alpha=-16")),
    Case("dropout 1.5", spec_case(lambda: helpers.lora(8, dropout=1.5)), SpecError, ("'lora-r8'", "lora_dropout=1.5")),
    Case("target_modules a string", spec_case(lora_with(target_modules="q_proj")), SpecError,
         ("target_modules='q_proj'", "['q_proj']", "regular expression")),
    Case("target_modules empty", spec_case(lora_with(target_modules=())), SpecError, ("target_modules=()",)),
    Case("target modules the model lacks", lambda t, m: check_targets(lora_with(target_modules=("q_porj",))(),
                                                                      ["q_porj"], SMOL_LAYERS), SpecError,
         ("'lora-r8'", "'q_porj'", "did you mean 'q_proj'", "down_proj, gate_proj, k_proj")),
    Case("8-bit quantization", spec_case(qlora_with(_load_in_4bit=False, _load_in_8bit=True)), SpecError,
         ("'qlora'", "load_in_4bit=False", "only a 4-bit base")),
    Case("quant_type 'int4'", spec_case(qlora_with(bnb_4bit_quant_type="int4")), SpecError,
         ("'qlora'", "bnb_4bit_quant_type='int4'", "'nf4'")),
    Case("quant_type 'NF4'", spec_case(qlora_with(bnb_4bit_quant_type="NF4")), SpecError, ("did you mean 'nf4'",)),
    Case("double_quant 'yes'", spec_case(qlora_with(bnb_4bit_use_double_quant="yes")), SpecError,
         ("bnb_4bit_use_double_quant='yes'",)),
    Case("quantization without LoRA", spec_case(lambda: replace(helpers.full(), quantization=nf4_config())), SpecError,
         ("'full'", "cannot be fully fine-tuned", "lora=LoraConfig")),
    Case("lora not a LoraConfig", spec_case(lambda: replace(helpers.lora(8), lora={"r": 8})), SpecError,
         ("lora={'r': 8}", "not a peft.LoraConfig")),
    Case("task_type SEQ_CLS", spec_case(lora_with(task_type="SEQ_CLS")), SpecError, ("task_type='SEQ_CLS'",)),
    Case("learning_rate as text", spec_case(lambda: replace(helpers.lora(8), learning_rate="2e-4")), SpecError,
         ("learning_rate='2e-4'",)),
    Case("learning_rate 0", spec_case(lambda: replace(helpers.full(), learning_rate=0.0)), SpecError,
         ("'full'", "learning_rate=0.0")),
    Case("run_id with a slash", spec_case(lambda: replace(helpers.lora(8), run_id="my run/1")), SpecError,
         ("'my run/1'",)),
    Case("optimizer misspelt", spec_case(lambda: replace(helpers.lora(8), optimizer="adamw")), SpecError,
         ("optimizer 'adamw'",)),
    Case("lab.run('lora') (a string)", lambda t, m: check("lora"), SpecError, ("lab.run('lora')",)),
]


@pytest.mark.parametrize("case", SPEC_CASES, ids=lambda c: c.id)
def test_bad_spec(case, tmp_path, monkeypatch):
    run_case(case, tmp_path, monkeypatch)


def test_target_modules_checked_from_the_config_alone(monkeypatch):
    """helpers.specs.check_targets_for_model: the model's layer names without loading any weight."""
    from helpers import models, specs

    import transformers

    # On a new machine the bundled model's config comes from its one-time GGUF conversion, which does load weights:
    # done first, so what is checked is the check itself (on a fresh CI machine this test can be the first to ask).
    models.bundled_weights_dir()

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    spec = lora_with(target_modules=("q_proj", "attn"))()
    with pytest.raises(SpecError) as info:
        specs.check_targets_for_model(spec, "smollm2-135m-bundled")
    assert_clear(info.value, Case("", None, SpecError, ("'attn'", "q_proj, up_proj, v_proj")))
    specs.check_targets_for_model(helpers.qlora(), "smollm2-135m-bundled")  # the preset's own targets pass


# ---------------------------------------------------------------- the same mistakes through helpers.Lab


HEAVY = ("load_model", "build_base", "make_trainer", "train")


@pytest.fixture
def lab_results(tmp_path, monkeypatch, real_tokenizer):
    """A results folder that must stay empty; tripwires on everything heavy; the tokenizer from the session."""
    import helpers.baseline
    import helpers.runs

    def tripwire(*args, **kwargs):
        raise AssertionError("heavy work started before the bad input was refused")
    for name in HEAVY:
        monkeypatch.setattr(helpers.runs, name, tripwire)
    monkeypatch.setattr(helpers.baseline, "get", tripwire)
    monkeypatch.setattr(helpers.runs, "load_tokenizer", lambda name: real_tokenizer)
    monkeypatch.delenv("LAB_SEEDS", raising=False)
    monkeypatch.delenv("LAB_PROFILE", raising=False)
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path / "default_results"))
    results = tmp_path / "results"
    yield results
    assert not results.exists() or not any(results.rglob("*")), sorted(results.rglob("*"))
    assert not (tmp_path / "default_results").exists() or not any((tmp_path / "default_results").rglob("*"))


def no_data_prep(monkeypatch):
    import helpers.runs

    def tripwire(*args, **kwargs):
        raise AssertionError("data prepared before the bad spec was refused (check it at the top of lab.run)")
    monkeypatch.setattr(helpers.runs, "prepare_data", tripwire)


def lab_init(**kwargs):
    return lambda t, m, results: helpers.Lab(kwargs.pop("profile", "smoke"), results=results, **kwargs)


def lab_run(spec_maker, force=False, report_to="none", **lab_kwargs):
    def make(tmp_path, monkeypatch, results):
        no_data_prep(monkeypatch)
        lab = helpers.Lab("smoke", results=results, report_to=report_to, **lab_kwargs)
        lab.run(spec_maker(), force=force)
    return make


def lab_data(data, data_name="rows.jsonl", manifest=INSTRUCTION_MANIFEST):
    def make(tmp_path, monkeypatch, results):
        path = write(tmp_path, data, data_name, manifest)
        helpers.Lab("smoke", results=results, dataset=str(path)).run(helpers.full())
    return make



LAB_CASES = [
    Case("Lab: PROFILE 'CPU'", lab_init(profile="CPU"), ProfileError, ("PROFILE = 'CPU'", "'cpu'")),
    Case("Lab: MAX_STEPS '30'", lab_init(max_steps="30"), ProfileError, ("MAX_STEPS = '30'",)),
    Case("Lab: MAX_STEPS 0", lab_init(max_steps=0), ProfileError, ("MAX_STEPS = 0",)),
    Case("Lab: warmup >= steps", lab_init(profile="cpu", max_steps=2), ProfileError, ("warmup_steps = 3",)),
    Case("Lab: SEEDS 0", lab_init(seeds=0), ProfileError, ("SEEDS = 0",)),
    Case("Lab: SEEDS [1, 1]", lab_init(seeds=[1, 1]), ProfileError, ("SEEDS = [1, 1]",)),
    Case("Lab: SEEDS ['a']", lab_init(seeds=["a"]), ProfileError, ("SEEDS = ['a']",)),
    Case("Lab: $LAB_SEEDS garbage", lambda t, m, r: (m.setenv("LAB_SEEDS", "4x"), lab_init()(t, m, r)), ProfileError,
         ("$LAB_SEEDS = '4x'",)),
    Case("Lab: MODEL_PRESET unknown", lab_init(model="gpt-2"), ProfileError, ("MODEL_PRESET = 'gpt-2'", "'gpt2'")),
    Case("Lab: DATASET unknown", lab_init(dataset="alpaca"), ManifestError, ("DATASET = 'alpaca'", "alpaca_cleaned")),
    Case("Lab: DATASET text manifest", lab_init(dataset="vital_articles"), ProfileError,
         ("DATASET = 'vital_articles'",)),
    Case("Lab: unknown setting", lab_init(max_step=5), ProfileError, ("max_step", "max_steps")),
    Case("Lab: data file missing", lab_data(None), ProfileError, ("mine.toml", "[source.path]", "does not exist")),
    Case("Lab: malformed JSONL line", lab_data(jsonl(rows(3)) + "{oops\n"), DataFileError, ("rows.jsonl, line 4",)),
    Case("Lab: JSON object", lab_data(json.dumps({"rows": rows()}), "rows.json"), DataFileError, ("rows.json",)),
    Case("Lab: wrong columns", lab_data(jsonl({"x": 1} for _ in range(10))), ManifestError,
         ("[fields.instruction]",)),
    Case("Lab: not UTF-8", lab_data(b'{"q": "' + UNICODE + b'", "a": "b"}\n'), DataFileError,
         ("rows.jsonl, line 1", "UTF-8")),
    Case("Lab: no usable rows", lab_data(jsonl({"q": "", "a": ""} for _ in range(10))), ManifestError,
         ("zero usable rows",)),
    Case("Lab: spec changed to rank 0", lab_run(lambda: corrupt(helpers.lora(8), "lora", "r", 0)), SpecError,
         ("'lora-r8'", "r = 0")),
    Case("Lab: spec changed to NF5", lab_run(lambda: corrupt(helpers.qlora(), "quantization", "bnb_4bit_quant_type",
                                                             "nf5")), SpecError, ("'qlora'", "bnb_4bit_quant_type='nf5'")),
    Case("Lab: lab.run('lora')", lab_run(lambda: "lora"), SpecError, ("lab.run('lora')",)),
    Case("Lab: target modules the model lacks", lab_run(lora_with(target_modules=("q_porj",))), SpecError,
         ("'q_porj'", "q_proj")),
    Case("Lab: REPORT_TO 'tensorbord'", lab_run(helpers.full, report_to="tensorbord"), ProfileError,
         ("REPORT_TO = 'tensorbord'",)),
    Case("Lab: FORCE 'yes'", lab_run(helpers.full, force="yes"), ProfileError, ("FORCE = 'yes'",)),
]


@pytest.mark.parametrize("case", LAB_CASES, ids=lambda c: c.id)
def test_bad_input_through_lab_writes_nothing(case, tmp_path, monkeypatch, lab_results):
    with pytest.raises(Exception) as info:
        case.make(tmp_path, monkeypatch, lab_results)
    assert_clear(info.value, case)
