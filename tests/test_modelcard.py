"""helpers.modelcard: the card's numbers against the committed reference records, the upload folder written whole or
not at all, and push failing softly (offline, unreachable) or loudly (a bad repo id) without touching the folder."""

import json
import math
import re
import shutil
import statistics as pystats
import time
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, constants

from helpers import modelcard
from helpers.environment import REPO_ROOT
from helpers.formatting import MIB, format_bytes
from helpers.results import read
from helpers.statistics import summarize, t_interval

REFERENCE = REPO_ROOT / "notebooks" / "reference_results"
SEEDS = (42, 1, 2)


def reference(run_id: str, seeds=SEEDS) -> list[dict]:
    return [read(REFERENCE / f"{run_id}-seed{seed}.json") for seed in seeds]


@pytest.fixture(scope="module")
def records() -> list[dict]:
    # Two runs mixed, as notebook 05 holds them: the card must pick its own run's records.
    return reference("lora-r16") + reference("full")


@pytest.fixture(scope="module")
def lora_card(records) -> str:
    return modelcard.card(records, "lora-r16")


def row(text: str, label: str) -> list[str]:
    """The cells after the label of the Markdown table row that starts with `label`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no table row {label!r} in the card")


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)\n```", text, flags=re.S)


# ---------------------------------------------------------------- the card


def test_front_matter_names_the_hub_model_and_peft(lora_card):
    data = ModelCard(lora_card).data  # the Hub's own parser of the YAML front matter
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data.library_name == "peft"
    assert data.license == "apache-2.0"
    assert {"lora", "peft", "finetune-lab"} <= set(data.tags)
    # The bundled base was a Q4_1 GGUF dequantized to fp32, not that checkpoint: the card says so.
    assert "GGUF Q4_1" in lora_card and "dequantized to fp32" in lora_card


def test_card_holds_every_seed_and_the_data(lora_card, records):
    runs = [r for r in records if r["run_id"] == "lora-r16"]
    seed_rows = {int(line.split("|")[1]) for line in lora_card.splitlines() if re.match(r"\| \d+ \|", line)}
    assert seed_rows == set(SEEDS)
    for r in runs:
        assert f"`{r['artifact']['path']}` ({format_bytes(r['artifact']['bytes'])})" in lora_card
    data = runs[0]["data"]
    assert f"fingerprint `{data['fingerprint']}`" in lora_card
    assert f"{data['train_examples']:,} training examples and {data['eval_examples']:,} held-out" in lora_card
    # Only this run's records: the full run's seeds would make six rows and its artifacts would show up.
    assert "artifacts/full-seed" not in lora_card


def test_lora_config_is_the_records(lora_card, records):
    config = next(r for r in records if r["run_id"] == "lora-r16")["lora"]["config"]
    blocks = [json.loads(b) for b in code_blocks(lora_card, "json")]
    assert blocks == [config]
    assert (config["r"], config["lora_alpha"]) == (16, 16)
    training = records[0]["training"]
    assert f"learning rate {training['learning_rate']:g}, optimizer `{training['optimizer']}`" in lora_card
    assert f"{training['steps']:,} optimizer steps of {training['batch_size']} examples: 14,891 real" in lora_card


def test_perplexity_after_is_the_labs_interval_over_seeds(lora_card):
    runs = reference("lora-r16")
    values = {r["seed"]: r["eval"]["perplexity_after"] for r in runs}
    expected = summarize(values).text(2)  # the lab's own rule: mean ± half-width of the 95% t-interval
    assert row(lora_card, "held-out perplexity after training") == [expected]
    # And by hand, so a card that read another field (or another run) fails even if the formatter agreed with it.
    mean = sum(values.values()) / 3
    half = 4.302652729911275 * pystats.stdev(values.values()) / math.sqrt(3)  # t(0.975, df=2)
    assert expected == f"{mean:.2f} ± {half:.2f}" == "13.94 ± 0.28"
    general = {r["seed"]: r["forgetting"]["perplexity_after"] for r in runs}
    assert row(lora_card, "general-text perplexity after training") == [summarize(general).text(2)]
    assert row(lora_card, "held-out perplexity before training") == [f"{runs[0]['eval']['perplexity_before']:.2f}"]


def test_memory_and_speed_are_the_records(lora_card):
    runs = reference("lora-r16")
    memory = t_interval([r["memory"]["step_peak_bytes"] / MIB for r in runs]).text(0)
    speed = t_interval([r["training"]["tokens_per_second_upper_quartile"] for r in runs]).text(0)
    assert row(lora_card, "peak memory of a training step (MiB)") == [memory]
    assert row(lora_card, "training speed (real tokens/s)") == [speed]
    seed42 = row(lora_card, "42")
    assert seed42[0] == f"{runs[0]['eval']['perplexity_after']:.2f}"
    assert seed42[3] == f"{runs[0]['training']['tokens_per_second_upper_quartile']:.0f}"


def test_versions_and_reproduction_command(lora_card):
    env = reference("lora-r16")[0]["environment"]
    for name in ("python", "torch", "transformers", "peft", "trl", "bitsandbytes"):
        assert row(lora_card, name) == [env[name]]
    command = code_blocks(lora_card, "bash")[-1]
    assert command.splitlines()[-1] == "LAB_PROFILE=cpu LAB_SEEDS=3 make lab"
    assert command.startswith("git clone https://github.com/finetune-lab/finetune-lab && cd finetune-lab")


def test_full_run_is_transformers_without_lora(records):
    text = modelcard.card(records, "full")
    data = ModelCard(text).data
    assert data.library_name == "transformers"
    assert data.base_model_relation == "finetune"
    assert "LoraConfig" not in text and "lora_alpha" not in text and not code_blocks(text, "json")
    assert "Full fine-tuning: every weight trains" in text
    values = {r["seed"]: r["eval"]["perplexity_after"] for r in reference("full")}
    assert row(text, "held-out perplexity after training") == [summarize(values).text(2)]


def test_qlora_card_shows_the_quantization():
    text = modelcard.card(reference("qlora"), "qlora")
    record = reference("qlora", (42,))[0]
    assert [json.loads(b) for b in code_blocks(text, "json")] == [record["lora"]["config"],
                                                                 record["quantization"]["config"]]
    assert ModelCard(text).data.library_name == "peft"


def test_hub_model_names_its_own_id_and_needs_the_hub():
    recs = reference("lora-r16")
    for r in recs:
        r["model"] = {**r["model"], "preset": "gpt2", "source": "hub"}
    text = modelcard.card(recs, "lora-r16")
    assert ModelCard(text).data.base_model == "openai-community/gpt2"
    assert ModelCard(text).data.license == "mit"  # GPT-2's own, inherited; SmolLM2's is apache-2.0
    assert "Q4_1" not in text
    assert code_blocks(text, "bash")[-1].endswith("HF_HUB_OFFLINE=0 LAB_PROFILE=cpu LAB_SEEDS=3 make lab")


def test_one_seed_uses_the_bootstrap_and_names_the_seed():
    recs = reference("lora-r16", (1,))
    text = modelcard.card(recs, "lora-r16")
    r = recs[0]
    expected = summarize({1: r["eval"]["perplexity_after"]}, {1: r["eval"]["per_example_after"]}).text(2)
    assert row(text, "held-out perplexity after training") == [expected]
    assert "bootstrap interval over 146 held-out examples" in text
    assert code_blocks(text, "bash")[-1].endswith("LAB_SEEDS=1 make lab")  # seed 1 is not the pool's first


def test_unknown_run_is_named(records):
    with pytest.raises(ValueError, match=r"no results record of run 'lora-r8'.*full, lora-r16"):
        modelcard.card(records, "lora-r8")


EXPORTS = {
    "f16": {"file": "lora-r16-seed42-f16.gguf", "bytes": 270_898_464, "perplexity": 13.8161, "agreement": 0.99951,
            "perplexity_gap": 13.8161 / 13.8156 - 1, "within_bounds": True, "greedy_same": 3, "prompts": 3},
    "q8_0": {"file": "lora-r16-seed42-q8_0.gguf", "bytes": 144_813_088, "perplexity": 13.8402, "agreement": 0.9931,
             "perplexity_gap": 13.8402 / 13.8156 - 1, "within_bounds": False, "greedy_same": 2, "prompts": 3},
    "merged_perplexity": 13.8156, "eval_tokens": 10145, "answers": {"merged": ["a", "b", "c"]},
    "modelfile": "Modelfile",
}


def test_exports_table_and_commands(records):
    text = modelcard.card(records, "lora-r16", EXPORTS)
    # 144,813,088 B = 138.1 MiB; 13.8402 / 13.8156 - 1 = +0.178%
    assert row(text, "`lora-r16-seed42-q8_0.gguf`") == ["q8_0", "138.1 MiB", "13.8402", "+0.178%", "99.31%", "2 of 3",
                                                         "not met"]
    assert row(text, "`lora-r16-seed42-f16.gguf`")[1:5] == ["258.3 MiB", "13.8161", "+0.004%", "99.95%"]
    assert row(text, "merged model (PyTorch)")[2] == "13.8156"
    commands = code_blocks(text, "bash")[0].splitlines()
    assert commands == modelcard.run_commands(EXPORTS, "lora-r16") == [
        "llama-cli -m lora-r16-seed42-f16.gguf --temp 0", "llama-cli -m lora-r16-seed42-q8_0.gguf --temp 0",
        "ollama create finetune-lab-lora-r16 -f Modelfile",
        'ollama run finetune-lab-lora-r16 "What does the Python module heapq do?"']
    assert "GGUF" not in modelcard.card(records, "lora-r16").split("## Seeds")[1]  # no exports: no section


# ---------------------------------------------------------------- the folder


@pytest.fixture
def artifact(tmp_path) -> Path:
    folder = tmp_path / "artifacts" / "lora-r16-seed42"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"\x00weights" * 100)
    (folder / "adapter_config.json").write_text('{"r": 16}')
    (folder / "README.md").write_text("PEFT's own placeholder card")  # what save_pretrained leaves there
    return folder


@pytest.fixture
def gguf(tmp_path) -> Path:
    (tmp_path / "exports").mkdir()
    path = tmp_path / "exports" / "lora-r16-seed42-q8_0.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_write_folder_holds_the_artifact_the_extras_and_the_card(records, artifact, gguf, tmp_path):
    before = snapshot(artifact)
    folder = modelcard.write_folder(records, "lora-r16", artifact, tmp_path / "hub", EXPORTS, [gguf])
    assert folder == tmp_path / "hub"
    assert sorted(snapshot(folder)) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                        gguf.name]
    assert (folder / "README.md").read_text() == modelcard.card(records, "lora-r16", EXPORTS, seed=42)
    assert "The uploaded weights are seed 42's." in (folder / "README.md").read_text()  # the artifact's own seed
    assert (folder / "adapter_model.safetensors").read_bytes() == before["adapter_model.safetensors"]
    assert (folder / gguf.name).samefile(gguf)  # the large file is linked, not copied again
    assert snapshot(artifact) == before  # PEFT's README in the artifact is left alone
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_write_folder_failing_midway_leaves_nothing(records, artifact, gguf, tmp_path, monkeypatch):
    copies = []

    def copy_then_fail(source, target, **kwargs):
        copies.append(source)
        if len(copies) == 2:
            raise OSError("disk full")
        return shutil.copyfile(source, target)

    monkeypatch.setattr(modelcard.shutil, "copy2", copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        modelcard.write_folder(records, "lora-r16", artifact, tmp_path / "hub", None, [gguf])
    assert len(copies) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "exports"]  # no folder, no staging sibling


def test_write_folder_replaces_its_own_folder_but_no_other(records, artifact, tmp_path):
    folder = modelcard.write_folder(records, "lora-r16", artifact, tmp_path / "hub")
    (folder / "stale.gguf").write_bytes(b"old")
    modelcard.write_folder(records, "full", artifact, folder)  # a folder it wrote: replaced whole
    assert "stale.gguf" not in snapshot(folder)
    assert ModelCard((folder / "README.md").read_text()).data.library_name == "transformers"
    other = tmp_path / "my-results"
    other.mkdir()
    (other / "keep.json").write_text("{}")
    with pytest.raises(ValueError, match="was not written by write_folder"):
        modelcard.write_folder(records, "lora-r16", artifact, other)
    assert snapshot(other) == {"keep.json": b"{}"}
    with pytest.raises(ValueError, match="overlap"):
        modelcard.write_folder(records, "lora-r16", artifact, artifact.parent)


# ---------------------------------------------------------------- the push


@pytest.fixture
def folder(records, artifact, gguf, tmp_path) -> Path:
    return modelcard.write_folder(records, "lora-r16", artifact, tmp_path / "hub", EXPORTS, [gguf])


def test_push_offline_returns_the_problem_and_keeps_the_folder(folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once, when huggingface_hub was imported
    before = snapshot(folder)
    result = modelcard.push(folder, "student/smollm2-lora-r16", token="hf_test")
    assert result["pushed"] is False and result["repo_id"] == "student/smollm2-lora-r16"
    assert result["folder"] == str(folder)
    assert "offline" in result["error"] and "HF_HUB_OFFLINE=1" in result["error"]
    assert f"`hf upload student/smollm2-lora-r16 {folder}`" in result["error"]
    assert snapshot(folder) == before


def test_push_to_an_unreachable_hub_fails_fast(folder, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # port 9 (discard) refuses at once
    before = snapshot(folder)
    start = time.perf_counter()
    result = modelcard.push(folder, "student/smollm2-lora-r16", token="hf_test")
    assert time.perf_counter() - start < 10
    assert result["pushed"] is False
    assert "cannot connect to the Hub at http://127.0.0.1:9" in result["error"] and str(folder) in result["error"]
    assert snapshot(folder) == before


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls, answers like the Hub (or raises `error`)."""

    calls: list = []
    error: Exception | None = None

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        if self.error is not None:
            raise self.error
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))


@pytest.fixture
def api(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(RecordingApi, "calls", [])
    monkeypatch.setattr(RecordingApi, "error", None)
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    return RecordingApi


@pytest.mark.parametrize("bad", ["no-slash", "a/b/c", "user/bad name", "/name", "user/", "user/na--me"])
def test_bad_repo_id_fails_before_any_network_call(folder, api, bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))) as err:
        modelcard.push(folder, bad)
    assert '"user/name"' in str(err.value)
    assert api.calls == []


def test_push_creates_the_repo_then_uploads_the_folder(folder, api):
    result = modelcard.push(folder, "student/smollm2-lora-r16", token="hf_test", private=True)
    assert result == {"pushed": True, "repo_id": "student/smollm2-lora-r16",
                      "url": "https://huggingface.co/student/smollm2-lora-r16", "folder": str(folder)}
    assert api.calls[0] == ("init", "hf_test")
    assert api.calls[1] == ("create_repo", "student/smollm2-lora-r16", {"exist_ok": True, "private": True})
    assert api.calls[2][1]["folder_path"] == str(folder) and api.calls[2][1]["repo_id"] == "student/smollm2-lora-r16"


def test_refused_token_is_reported_and_other_errors_raise(folder, api):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    response = httpx2.Response(401, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
    api.error = HfHubHTTPError("401 Unauthorized", response=response)
    result = modelcard.push(folder, "student/smollm2-lora-r16")
    assert result["pushed"] is False and "refused the token (401" in result["error"]
    api.error = RuntimeError("a bug, not the network")
    with pytest.raises(RuntimeError, match="a bug"):
        modelcard.push(folder, "student/smollm2-lora-r16")


def test_uploaded_adapter_names_the_hub_base_not_a_local_cache(records, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    local = {"base_model_name_or_path": "/root/.cache/finetune-lab/smollm2", "r": 16}
    (adapter / "adapter_config.json").write_text(json.dumps(local))
    folder = modelcard.write_folder(records, "lora-r16", adapter, tmp_path / "hub")
    uploaded = json.loads((folder / "adapter_config.json").read_text())
    assert uploaded == {**local, "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    assert json.loads((adapter / "adapter_config.json").read_text()) == local  # the run's own artifact untouched
