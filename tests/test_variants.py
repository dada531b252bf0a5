"""LoRA variants (notebook 04): DoRA, rsLoRA, PiSSA and LoRA+ as one argument each on LoRA r16, through the one
training path: PEFT's parameter counts, LoRA+'s two learning rates read back from the optimizer, PiSSA's adapter
converted for the original base, DoRA's merge."""

import copy
import dataclasses

import pytest
from conftest import make_tiny_llama, tiny_llama_config
from peft import get_peft_model

import helpers
from helpers import adapters, specs
from helpers.memory import predict
from helpers.models import LLAMA_TARGETS, expected_lora_parameters
from helpers.profiles import PROFILES, ProfileError, check
from helpers.specs import SpecError

RANK = specs.VARIANT_RANK


def test_each_variant_is_one_argument_on_lora():
    plain = specs.lora(RANK)
    differs = {"dora-r16": {"use_dora": True}, "rslora-r16": {"use_rslora": True},
               "pissa-r16": {"init_lora_weights": f"pissa_niter_{specs.PISSA_NITER}"}, "loraplus-r16": {}}
    for spec in specs.variant_runs():
        mine, base = spec.as_dict(), plain.as_dict()
        assert {k: v for k, v in mine["lora"].items() if base["lora"].get(k) != v} == differs[spec.run_id]
        assert spec.variant == spec.run_id.split("-")[0] == spec.rate_key
        assert specs.from_run_id(spec.run_id) == spec
        assert mine["variant"] == spec.variant
    assert specs.loraplus().loraplus_lr_ratio == 16 and plain.loraplus_lr_ratio is None
    # Nothing new in what a standard run records of its spec.
    assert set(plain.as_dict()) == {"run_id", "method", "learning_rate", "optimizer", "lora", "quantization"}
    assert plain.variant is None and specs.qlora().variant is None and specs.full().rate_key == "full"


@pytest.mark.parametrize("spec", specs.variant_runs(), ids=lambda s: s.run_id)
def test_trainable_parameters_equal_peft_count(spec):
    """The spec's count (r*(in+out) per adapted layer, + out for DoRA's magnitudes) and the memory prediction's both
    equal what PEFT builds."""
    model = make_tiny_llama()
    config = copy.deepcopy(spec.lora)
    config.target_modules = list(LLAMA_TARGETS)
    expected = expected_lora_parameters(model, LLAMA_TARGETS, RANK, config.use_dora)
    peft_model = get_peft_model(model, config)
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert trainable == expected == predict(tiny_llama_config(), spec, "fp32", "cpu", 64,
                                            targets=LLAMA_TARGETS)["trainable_params"]
    lora_only = sum(RANK * (m.in_features + m.out_features) for n, m in make_tiny_llama().named_modules()
                    if n.split(".")[-1] in LLAMA_TARGETS)
    assert (trainable > lora_only) == (spec.variant == "dora")


@pytest.fixture(scope="module")
def smoke_lab(tmp_path_factory):
    return helpers.Lab("smoke", results=tmp_path_factory.mktemp("results"))


def test_loraplus_trains_b_at_ratio_times_a_rate(smoke_lab):
    spec = specs.loraplus(RANK)
    trainer = smoke_lab.trainer(spec)
    optimizer = trainer.create_optimizer()
    rate = smoke_lab.profile.learning_rate(spec.rate_key)
    assert trainer.args.learning_rate == rate
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    rates = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            kind = "B" if "lora_B" in names[id(p)] else "A" if "lora_A" in names[id(p)] else "other"
            rates.setdefault(kind, set()).add(group["lr"])
    assert rates == {"A": {rate}, "B": {rate * spec.loraplus_lr_ratio}}
    held = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(held) == sorted(id(p) for p in trainer.model.parameters() if p.requires_grad)  # each once
    # the same AdamW the Trainer builds for every other run: class, betas, eps, no decay
    plain = smoke_lab.trainer(specs.lora(RANK)).create_optimizer()
    assert type(optimizer) is type(plain)
    for key in ("betas", "eps", "weight_decay"):
        assert {g[key] for g in optimizer.param_groups if g["params"]} == {g[key] for g in plain.param_groups}
    assert {g["lr"] for g in plain.param_groups} == {smoke_lab.profile.learning_rate("lora")}


@pytest.mark.parametrize("make, message", [
    (lambda: specs.variant_specs("dora"), "non-empty list"),
    (lambda: specs.variant_specs(["dora", "qdora"]), "'qdora' is not a variant"),
    (lambda: specs.variant_specs(["dora", "dora"]), "repeats"),
    (lambda: specs.RunSpec("x", lora=specs.lora_config(8), loraplus_lr_ratio=0.5), "at least 1"),
    (lambda: specs.RunSpec("x", loraplus_lr_ratio=16.0), "full fine-tuning has none"),
    (lambda: dataclasses.replace(specs.pissa(8), quantization=specs.nf4_config()), "4-bit base"),
], ids=["not a list", "unknown", "repeated", "ratio below 1", "full", "pissa on 4-bit"])
def test_bad_variant_settings_are_refused_with_the_fix(make, message):
    with pytest.raises(SpecError, match=message) as err:
        make()
    assert "Fix:" in str(err.value)


def test_a_profile_may_give_each_variant_its_own_rate():
    rates = {"full": 1e-4, "lora": 1e-3, "rslora": 2e-4}
    profile = check(dataclasses.replace(PROFILES["smoke"], learning_rates=rates))
    assert profile.learning_rate("rslora") == 2e-4 and profile.learning_rate("dora") == 1e-3
    assert profile.learning_rate("qlora") == 1e-3 and profile.learning_rate("full") == 1e-4
    with pytest.raises(ProfileError, match="dora"):
        check(dataclasses.replace(PROFILES["smoke"], learning_rates={**rates, "doraa": 1e-3}))


def test_a_variants_sweep_point_trains_through_the_same_path():
    from helpers.tools.sweep import GRIDS, grid
    for spec in specs.variant_runs():
        assert grid(spec) == GRIDS[spec.variant] and len(grid(spec)) >= 4
    assert grid(specs.lora(16)) == GRIDS["lora"] and grid(specs.full()) == GRIDS["full"]
    assert max(GRIDS["rslora"]) < max(GRIDS["dora"])  # 4x the step at r16


def test_the_comparison_reads_each_variant_against_lora_r16():
    """Notebooks 04 and 05 say, per variant, which way it went against LoRA r16 (beyond noise or not), what it costs,
    and the published anchor; the variants sort after the five runs, each with a colour of its own."""
    from records import make_record, per_example

    from helpers import notes, plots, results, tables

    def seeds(run_id, ppls, variant=None, trainable=4_884_480):
        return [make_record(run_id, seed, variant=variant, params={"trainable": trainable},
                            eval={"perplexity_after": p, "per_example_after": per_example(p, offset=k * 0.01)},
                            training={"setup_seconds": 0.5 if variant != "pissa" else 2.5})
                for k, (seed, p) in enumerate(zip((42, 1, 2), ppls))]

    records = (seeds("lora-r16", [4.20, 4.22, 4.21]) + seeds("dora-r16", [4.00, 4.01, 4.02], "dora", 5_040_000)
               + seeds("pissa-r16", [4.21, 4.20, 4.22], "pissa"))
    said = notes.variant_notes(records)
    assert len(said) == 2
    dora, pissa = said
    assert dora.startswith("dora-r16 vs lora-r16: dora-r16 beats lora-r16 on held-out perplexity")
    assert "156k more trainable parameters" in dora and "peft method_comparison" in dora
    assert "within noise" in pissa and "built in 2.5 s (lora-r16: 0.5 s)" in pissa and "Meng et al." in pissa
    assert any(s.startswith("dora-r16 vs lora-r16") for s in notes.reading_notes(records))
    assert notes.variant_notes([r for r in records if r["run_id"] != "lora-r16"])[0].endswith(
        "which is missing (run notebook 02_lora_ranks).")
    other_rank = seeds("lora-r8", [4.30, 4.31, 4.32], trainable=2_442_240) + seeds("rslora-r8", [4.3, 4.3, 4.3], "rslora",
                                                                                 2_442_240)
    assert [n.split(":")[0] for n in notes.variant_notes(records + other_rank)] == [
        "rslora-r8 vs lora-r8", "dora-r16 vs lora-r16", "pissa-r16 vs lora-r16"], "every rank a variant trained at"
    frame = tables.summary_frame(records)
    assert list(frame.index) == ["lora-r16", "dora-r16", "pissa-r16"]
    assert list(frame["method"]) == ["lora", "lora + dora", "lora + pissa"]
    colours = [plots.run_color(run) for run in results.RUN_ORDER]
    assert len(set(colours)) == len(colours) and plots.FALLBACK_COLOR not in colours
