"""Saved adapters on the real bundled model (smoke budget): reload, merge, switch, count, skip."""

import time

import pytest
import torch

import helpers
from helpers import adapters, specs
from helpers.results import read


@pytest.fixture(scope="module")
def trained(notebook_results):
    """The smoke runs notebooks 02-04 trained (conftest runs this module after them): read, not trained again."""
    lab = helpers.Lab("smoke", results=notebook_results)
    runs = (helpers.lora(8), helpers.lora(16), helpers.qlora(), specs.dora(), specs.pissa())  # + notebook 04's two
    records = {spec.run_id: lab.run(spec)[0] for spec in runs}
    return lab, records


def probe(lab):
    return lab.data.eval.select(range(3)).to_list()


def test_reload_gives_the_end_of_training_loss(trained):
    lab, records = trained
    for run_id in ("lora-r8", "qlora"):
        loss = lab.evaluate(adapters.reload(lab, records[run_id]))["loss"]
        assert loss == pytest.approx(records[run_id]["eval"]["loss_after"], abs=1e-5)
    # and training moved it: otherwise the equality above proves nothing
    assert records["lora-r8"]["eval"]["loss_after"] != pytest.approx(records["lora-r8"]["eval"]["loss_before"], abs=1e-4)


def test_merge_keeps_the_logits(trained):
    lab, records = trained
    with_adapter = adapters.reload(lab, records["lora-r16"])
    merged = adapters.merge(adapters.reload(lab, records["lora-r16"]))
    assert not isinstance(merged, adapters.PeftModel)
    gap = adapters.max_logit_difference(with_adapter, merged, probe(lab), lab.tokenizer.pad_token_id)
    assert gap < 5e-4  # fp32 logits of size ~30: W + s*B@A summed once vs per call differs only by rounding


def test_merge_into_a_4bit_base_is_refused_with_the_way_out(trained):
    lab, records = trained
    with pytest.raises(adapters.MergeError, match="merge_dequantized"):
        adapters.merge(adapters.reload(lab, records["qlora"]))
    merged = adapters.merge_dequantized(lab, records["qlora"])
    assert not adapters.has_4bit_layers(merged) and adapters.has_4bit_layers(adapters.reload(lab, records["qlora"]))
    # The same weights the adapter was trained against, dequantized once instead of at every matmul.
    after = lab.evaluate(merged)["perplexity"]
    # Evaluation computes in fp32 whatever the training precision, the 4-bit layers dequantized into fp32: the same
    # sum W + BA on both sides, up to float rounding.
    assert after == pytest.approx(records["qlora"]["eval"]["perplexity_after"], rel=1e-4)


def test_switching_adapters_changes_the_output(trained):
    lab, records = trained
    several = adapters.load_several(lab, [records["lora-r8"], records["lora-r16"]])
    batch = helpers.data.pad_batch(probe(lab), lab.tokenizer.pad_token_id)
    logits = {}
    with torch.no_grad():
        for run_id in ("lora-r8", "lora-r16"):
            several.set_adapter(adapters.adapter_name(records[run_id]))
            logits[run_id] = several(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (logits["lora-r8"] - logits["lora-r16"]).abs().max() > 1e-3
    # each switched-to adapter is exactly that adapter alone
    alone = adapters.reload(lab, records["lora-r16"])
    with torch.no_grad():
        single = alone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(single, logits["lora-r16"], atol=1e-5)
    several.set_adapter(adapters.adapter_name(records["lora-r8"]))
    assert isinstance(lab.generate(several)[0], str)


def test_trainable_counts_follow_the_rank_and_match_peft(trained):
    lab, records = trained
    counts = {r: records[r]["params"]["trainable"] for r in ("lora-r8", "lora-r16")}
    assert counts["lora-r16"] == 2 * counts["lora-r8"]  # r * (in + out) is linear in r
    check = adapters.parameter_check(list(records.values()))
    assert list(check["run"]) == ["lora-r8", "lora-r16", "qlora", "dora-r16", "pissa-r16"] and check["agree"].all()
    # SmolLM2-135M: 30 layers x r x sum(in + out) over q,k,v,o,gate,up,down
    per_layer = (576 + 576) + (576 + 192) * 2 + (576 + 576) + (576 + 1536) * 3
    assert counts["lora-r8"] == 30 * 8 * per_layer
    assert records["qlora"]["params"]["trainable"] == counts["lora-r16"]
    quant = records["qlora"]["quantization"]
    assert {k: quant[k] for k in ("bits", "quant_type", "double_quant", "compute_dtype")} == {
        "bits": 4, "quant_type": "nf4", "double_quant": True,
        "compute_dtype": str(lab.env.precision.dtype).removeprefix("torch.")}


def test_same_budget_and_data_for_every_method(trained):
    _, records = trained
    for key in ("tokens", "steps"):
        assert len({r["training"][key] for r in records.values()}) == 1, key
    assert len({r["data"]["fingerprint"] for r in records.values()}) == 1
    assert len({r["eval"]["tokens"] for r in records.values()}) == 1


def test_a_finished_run_is_skipped_and_a_changed_one_is_not(trained, capsys):
    lab, records = trained
    start = time.perf_counter()
    again = lab.run(helpers.lora(8))
    assert time.perf_counter() - start < 2
    assert again == [read(lab.result_path("lora-r8", 42))]
    assert "skipped" in capsys.readouterr().out
    other = helpers.Lab("smoke", results=lab.results_dir, max_steps=lab.profile.max_steps + 1)
    assert other.finished(helpers.lora(8), 42) is None  # another budget: the stored result is stale


def test_pissa_adapter_converted_for_the_original_base_reproduces_the_loss(trained):
    """notebook 04's LoRA variants (its runs, read by this module's fixture beside LoRA and QLoRA)."""
    smoke_lab, records = trained
    record = records["pissa-r16"]
    assert adapters.saved_rank(smoke_lab, record) == 2 * specs.VARIANT_RANK, "trained - initial: a rank-2r adapter"
    reloaded = adapters.reload(smoke_lab, record)  # onto the original base, not PiSSA's residual one
    assert not any("pissa" in str(c.init_lora_weights) for c in reloaded.peft_config.values())
    loss = smoke_lab.evaluate(reloaded)["loss"]
    assert abs(loss - record["eval"]["loss_after"]) < 1e-4
    assert abs(record["eval"]["loss_after"] - record["eval"]["loss_before"]) > 1e-2, "training moved it"


def test_dora_merge_keeps_the_logits_and_counts(trained):
    smoke_lab, records = trained
    record = records["dora-r16"]
    assert record["params"]["trainable"] == record["params"]["expected_trainable"]
    with_adapter = adapters.reload(smoke_lab, record)
    assert smoke_lab.evaluate(with_adapter)["loss"] == pytest.approx(record["eval"]["loss_after"], abs=1e-5)
    merged = adapters.merge(adapters.reload(smoke_lab, record))
    probe = smoke_lab.data.eval.select(range(3)).to_list()
    gap = adapters.max_logit_difference(with_adapter, merged, probe, smoke_lab.tokenizer.pad_token_id)
    assert gap < 5e-4


def test_the_memory_prediction_covers_the_variants(trained):
    _, records = trained
    for record in (records["dora-r16"], records["pissa-r16"]):
        memory = record["memory"]
        assert abs(memory["predicted"]["peak"] / memory["step_peak_bytes"] - 1) <= 0.15, record["run_id"]
        assert record["training"]["setup_seconds"] > 0
    dora, pissa = records["dora-r16"]["memory"], records["pissa-r16"]["memory"]
    assert dora["categories"]["activations"] > pissa["categories"]["activations"], "DoRA's extra saved outputs"
