"""GGUF export on the real bundled model (smoke budget): the file read back by transformers' own GGUF loader is the
merged model (next token, perplexity), the tokenizer and chat template travel inside it, an unsupported architecture
is refused before anything is written, and the Modelfile's turns are the model's own template."""

import gguf
import numpy as np
import pytest
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

import helpers
from helpers import export
from helpers.results import read


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    lab = helpers.Lab("smoke", results=tmp_path_factory.mktemp("results"), max_steps=3)
    found = {}
    # LoRA in both kinds; full fine-tuning (the same writer, no adapter to merge) in F16: each read back costs ~11 s
    for spec, kinds in ((helpers.lora(16), ("f16", "q8_0")), (helpers.full(), ("f16",))):
        record = lab.run(spec)[0]
        folder = lab.results_dir / "export" / spec.run_id
        found[spec.run_id] = (record, folder, export.export_run(lab, record, folder, kinds, prompts=1))
    return lab, found


@pytest.mark.parametrize("run_id", ["lora-r16", "full"])
def test_the_file_read_back_is_the_merged_model(exported, run_id):
    lab, found = exported
    record, folder, result = found[run_id]
    # the merged model is the trained one: its perplexity is the one the run measured at the end of training
    assert result["merged_perplexity"] == pytest.approx(record["eval"]["perplexity_after"], rel=1e-5)
    for kind in [k for k in export.KINDS if k in result]:
        got, bound = result[kind], export.BOUNDS[kind]
        assert abs(got["perplexity"] / result["merged_perplexity"] - 1) <= bound["perplexity"], (kind, got)
        assert got["bytes"] == (folder / got["file"]).stat().st_size
        # a rounded weight flips the next token only where the merged model nearly tied its top two
        assert got["widest_flipped_lead"] < 0.5, (kind, got)
    f16 = result["f16"]
    assert f16["agreement"] >= export.BOUNDS["f16"]["agreement"] and f16["within_bounds"], f16
    assert f16["greedy_same"] == f16["prompts"]  # fp32 greedy answers: F16 rounding does not change them
    assert saved_export_matches(lab, run_id, record, result)
    if run_id == "full":
        return
    # Q8_0 is held to >= 99% agreement and does not always reach it on this 135M model: 98.97% of the smoke set's 292
    # positions and 98.51% of the cpu profile's 10,145 (2026-12-07), every flip at a near tie. The test keeps a floor
    # that catches a broken file (a wrong permutation or scale gives agreement near chance) and the flag's honesty.
    q8 = result["q8_0"]
    assert q8["agreement"] >= 0.97 and q8["within_bounds"] == (q8["agreement"] >= export.BOUNDS["q8_0"]["agreement"])
    # Q8_0 holds a weight in 8.5 bits, F16 in 16: about half the file, and a larger perplexity gap
    assert 0.45 < result["q8_0"]["bytes"] / result["f16"]["bytes"] < 0.6
    assert abs(result["f16"]["perplexity_gap"]) < abs(result["q8_0"]["perplexity_gap"])


def saved_export_matches(lab, run_id: str, record: dict, result: dict) -> bool:
    """The numbers are kept in the run's results file, its training and evaluation numbers untouched."""
    saved = read(lab.result_path(run_id, record["seed"]))
    kinds = [k for k in export.KINDS if k in result]
    return (all(saved["export"][k]["bytes"] == result[k]["bytes"] and saved["export"][k]["agreement"] ==
                result[k]["agreement"] for k in kinds)
            and saved["eval"] == record["eval"] and saved["training"] == record["training"])


def test_tokenizer_and_chat_template_travel_inside_the_file(exported):
    lab, found = exported
    _, folder, result = found["lora-r16"]
    path = folder / result["q8_0"]["file"]
    theirs = AutoTokenizer.from_pretrained(folder, gguf_file=path.name)
    for example in lab.data.eval.to_list():
        text = lab.tokenizer.decode(example["input_ids"])
        assert theirs(text, add_special_tokens=False)["input_ids"] == lab.tokenizer(text, add_special_tokens=False)[
            "input_ids"]
    assert theirs.chat_template == lab.tokenizer.chat_template
    reader = gguf.GGUFReader(path)
    eos = reader.fields["tokenizer.ggml.eos_token_id"].contents()
    assert reader.fields["tokenizer.ggml.tokens"].contents(eos) == "<|im_end|>" == lab.tokenizer.eos_token
    assert reader.fields["general.architecture"].contents() == "llama"
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied embeddings: llama.cpp reads the output projection from token_embd


def test_modelfile_holds_the_models_own_turns(exported):
    lab, found = exported
    _, folder, result = found["lora-r16"]
    text = (folder / "Modelfile").read_text()
    assert text.startswith(f"FROM ./{result['q8_0']['file']}\n")
    assert 'PARAMETER stop "<|im_end|>"' in text
    prefix, middle, end, system = export.chat_turns(lab.tokenizer)
    # Ollama's template filled in by hand for one user turn equals the tokenizer's own rendering
    ollama = (f"{prefix}system{middle}{system}{end}" + f"{prefix}user{middle}Hi{end}" + f"{prefix}assistant{middle}")
    assert ollama == lab.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                                        add_generation_prompt=True)
    assert f'SYSTEM """{system}"""' in text and "{{ range .Messages }}" in text


def test_a_template_that_is_not_per_turn_is_refused(real_tokenizer):
    tokenizer = real_tokenizer
    saved = tokenizer.chat_template
    try:
        tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}|{% endfor %}"
        with pytest.raises(export.ExportError, match="by hand"):
            export.modelfile("x.gguf", tokenizer)
    finally:
        tokenizer.chat_template = saved


def test_an_unsupported_architecture_is_refused_before_writing(tmp_path, real_tokenizer):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32))
    with pytest.raises(export.ExportError, match=r"GPT2LMHeadModel \(model_type 'gpt2'\).*Llama.*convert_hf_to_gguf"):
        export.write_gguf(gpt2, real_tokenizer, tmp_path / "gpt2.gguf", "f16")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(export.ExportError, match="choose one of"):
        export.write_gguf(gpt2, real_tokenizer, tmp_path / "gpt2.gguf", "q4_k")


def test_a_failed_write_leaves_nothing(tmp_path, tiny_llama, real_tokenizer, monkeypatch):
    tiny_llama.resize_token_embeddings(len(real_tokenizer))

    def fail(self, *args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(OSError, match="disk full"):
        export.write_gguf(tiny_llama, real_tokenizer, tmp_path / "tiny.gguf", "f16")
    assert list(tmp_path.iterdir()) == []


def test_q_and_k_rows_are_in_llama_cpp_order():
    """transformers' GGUF loader undoes exactly this reordering (a wrong one would still load, with scrambled
    attention); it is not the identity, so a missing one would be caught too."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    undo = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    q, k = np.random.default_rng(0).normal(size=(576, 576)), np.random.default_rng(1).normal(size=(192, 576))
    stored_q, stored_k = export._permute(q, 9), export._permute(k, 3)
    assert not np.array_equal(stored_q, q) and not np.array_equal(stored_k, k)
    assert np.array_equal(undo.process(stored_q, "blk.0.attn_q.weight").weights, q)
    assert np.array_equal(undo.process(stored_k, "blk.0.attn_k.weight").weights, k)
