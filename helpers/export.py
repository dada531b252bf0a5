"""GGUF export of a fine-tuned model for llama.cpp and Ollama, with the proof that the file is the model.

The lab's offline base arrives as a GGUF file; this closes the circle: GGUF in, fine-tune, GGUF out. Written with
the official `gguf` package (llama.cpp's own Python writer, vocabulary readers and quantizers); what it does not
do is map a transformers model onto its writer, which llama.cpp keeps in a script (convert_hf_to_gguf.py) that is
not an installable package, so the few lines of that mapping for the Llama architecture are here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from .adapters import has_4bit_layers, merge, merge_dequantized, reload
from .environment import Precision
from .evaluation import ExampleScore, generate, per_example_scores, summarize_nll
from .results import write_atomic

# What llama.cpp calls each preset's pre-tokenizer (its regex split before BPE); it identifies SmolLM2's as "smollm".
PRE_TOKENIZER = {"smollm2-135m-bundled": "smollm", "smollm2-135m": "smollm"}
# name -> (the type 2-D weights are stored in, the file type llama.cpp reads from the header)
KINDS = {"f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
         "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}
# What the read-back check must show (issue "Use your model"): next-token agreement and perplexity gap per kind.
BOUNDS = {"f16": {"agreement": 0.999, "perplexity": 0.001}, "q8_0": {"agreement": 0.99, "perplexity": 0.01}}
SUPPORTED = ("Llama-architecture models (LlamaForCausalLM: SmolLM2, TinyLlama) without rope scaling or biases, "
             "with a byte-level BPE tokenizer (SmolLM2) or a byte-fallback BPE one (TinyLlama, Llama 2)")


class ExportError(ValueError):
    pass


def check_exportable(model: torch.nn.Module) -> None:
    """Refuse, before any file is written, what this exporter cannot write faithfully."""
    config = model.config
    if config.model_type != "llama":
        raise ExportError(f"{type(model).__name__} (model_type {config.model_type!r}) cannot be exported to GGUF "
                          f"here: this exporter writes {SUPPORTED}. Fix: pick a Llama preset (MODEL_PRESET = "
                          "'smollm2-135m-bundled'), or convert the saved model folder with llama.cpp's "
                          "convert_hf_to_gguf.py, which knows other architectures.")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default" or getattr(config, "attention_bias", False) \
            or getattr(config, "mlp_bias", False):
        raise ExportError(f"{config.model_type} with rope {rope.get('rope_type')!r}, attention_bias "
                          f"{config.attention_bias}, mlp_bias {config.mlp_bias}: this exporter writes {SUPPORTED}. "
                          "Fix: convert the saved model folder with llama.cpp's convert_hf_to_gguf.py.")
    if has_4bit_layers(model):
        raise ExportError("The model still has 4-bit layers: a GGUF file of it would hold NF4 weights no GGUF reader "
                          "knows. Fix: export helpers.adapters.merge_dequantized(lab, record), the QLoRA adapter "
                          "merged into its dequantized base (merged_model does this for a QLoRA record).")


def merged_model(lab, record: dict) -> PreTrainedModel:
    """A run's trained model as one plain fp32 model: the saved full model, or the adapter merged into its base
    (a QLoRA adapter into its dequantized 4-bit base: the weights it learned to correct)."""
    if record["lora"] is None:
        return AutoModelForCausalLM.from_pretrained(lab.artifact_path(record), dtype=torch.float32)
    if record.get("quantization"):
        return merge_dequantized(lab, record)
    return merge(reload(lab, record))


def _vocabulary(tokenizer) -> tuple[gguf.vocab.Vocab, gguf.SpecialVocab]:
    """llama.cpp's own readers of a saved tokenizer: byte-level BPE (gpt2) or byte-fallback BPE (llama)."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        for reader in (gguf.vocab.BpeVocab, gguf.vocab.LlamaHfVocab):
            try:
                vocab = reader(Path(folder))
                break
            except (FileNotFoundError, TypeError):
                continue
        else:
            raise ExportError(f"{type(tokenizer).__name__}: neither a byte-level BPE nor a byte-fallback BPE "
                              f"tokenizer; this exporter writes {SUPPORTED}.")
        special = gguf.SpecialVocab(folder, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=vocab.vocab_size)
    return vocab, special


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order for q_proj/k_proj (its rotary embedding pairs rows differently from transformers');
    transformers' GGUF loader undoes exactly this."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tensors(model: torch.nn.Module, kind: str):
    """(GGUF name, array, raw type or None) for every weight: 1-D norms in F32 as llama.cpp keeps them, 2-D weights
    in the kind's type (Q8_0 blocks hold 32 values, so a row length that 32 does not divide stays F16)."""
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    qtype = KINDS[kind][0]
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: llama.cpp reads the output projection from token_embd
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"No GGUF name for {hf_name}: this exporter writes {SUPPORTED}.")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, config.num_key_value_heads)
        if data.ndim == 1:
            yield name, data, None
        elif qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32 == 0:
            yield name, gguf.quants.quantize(data, qtype), qtype
        else:
            yield name, data.astype(np.float16), None


def write_gguf(model: torch.nn.Module, tokenizer, path: Path, kind: str = "q8_0", preset: str = "",
               name: str = "") -> Path:
    """The model and its tokenizer (tokens, merges, special ids, chat template) as one GGUF file, written under a
    temporary name and renamed when complete. kind: "f16" or "q8_0"."""
    if kind not in KINDS:
        raise ExportError(f"kind {kind!r}: choose one of {sorted(KINDS)}.")
    check_exportable(model)
    vocab, special = _vocabulary(tokenizer)
    config, path = model.config, Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        writer.add_name(name or path.stem)
        writer.add_file_type(KINDS[kind][1])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(config.head_dim)
        tokens, scores, types = zip(*vocab.all_tokens())
        writer.add_tokenizer_model(vocab.tokenizer_model)
        writer.add_tokenizer_pre(PRE_TOKENIZER.get(preset, "default"))
        writer.add_token_list(tokens)
        if vocab.tokenizer_model == "llama":  # SentencePiece-style merging ranks pieces by score
            writer.add_token_scores(scores)
        writer.add_token_types(types)
        special.add_to_gguf(writer, quiet=True)  # merges, bos/eos/pad ids, add-bos flag, chat template
        for tensor_name, data, raw in _tensors(model, kind):
            writer.add_tensor(tensor_name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, path)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def _tensor_name_map_built_once() -> Iterator[None]:
    """transformers' GGUF loader asks gguf for the same (architecture, layers) name map once per module, 397 times
    for SmolLM2: 6 of a load's 17 s here. The map is a pure function of its arguments, so it is cached for one load."""
    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def load_gguf(path: Path, tokenizer: bool = True) -> tuple[PreTrainedModel, object]:
    """(model, tokenizer or None) read back by transformers' own GGUF loader, the model dequantized to fp32."""
    from transformers import AutoTokenizer
    path = Path(path)
    with _tensor_name_map_built_once():
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name) if tokenizer else None


@dataclass
class Scores:
    """One model's held-out scores (helpers.evaluation.per_example_scores)."""
    per_example: list[ExampleScore]

    @property
    def perplexity(self) -> float:
        return summarize_nll(sum(s.nll for s in self.per_example), sum(s.tokens for s in self.per_example))[
            "perplexity"]

    def positions(self) -> list[tuple[int, float]]:
        return [pair for s in self.per_example for pair in zip(s.predicted, s.lead)]


def scores(lab, model: torch.nn.Module) -> Scores:
    return Scores(per_example_scores(model, lab.data.eval, lab.profile.eval_batch_tokens, lab.tokenizer.pad_token_id))


def compare(reference: Scores, exported: Scores, kind: str) -> dict:
    """The read-back check of one file against the merged model: the share of held-out target positions where both
    pick the same next token, the perplexity gap, and the issue's bounds. A rounded weight can only flip a position
    where the merged model's two best tokens were nearly tied, so the largest lead (in logits) the merged model had
    at a flipped position is kept too, with the share of positions that were at least that close."""
    mine, theirs = reference.positions(), exported.positions()
    flips = [lead for (a, lead), (b, _) in zip(mine, theirs) if a != b]
    agreement = 1 - len(flips) / len(mine)
    gap = exported.perplexity / reference.perplexity - 1
    widest = max(flips, default=0.0)
    bound = BOUNDS[kind]
    return {"agreement": agreement, "positions": len(mine), "flips": len(flips), "widest_flipped_lead": widest,
            "near_ties": sum(lead <= widest for _, lead in mine) / len(mine) if flips else 0.0,
            "perplexity": exported.perplexity, "perplexity_gap": gap,
            "within_bounds": agreement >= bound["agreement"] and abs(gap) <= bound["perplexity"]}


def chat_turns(tokenizer) -> tuple[str, str, str, str | None]:
    """(turn prefix, between role and content, turn end, default system prompt) of a per-turn chat template such as
    ChatML, read off the tokenizer's own template by rendering placeholder messages, then checked by rebuilding a
    whole conversation from the pieces. Raises ExportError for a template that is not of that form."""
    def render(messages, prompt=False):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    if not getattr(tokenizer, "chat_template", None):
        raise ExportError("The tokenizer has no chat template, so there is no turn format to write into a Modelfile.")
    said = [{"role": "system", "content": "\x01S"}, {"role": "user", "content": "\x01U"},
            {"role": "assistant", "content": "\x01A"}]
    whole = render(said)
    end = whole[whole.index("\x01A") + 2:]
    between = whole[whole.index("\x01S") + 2:whole.index("\x01U")]
    if not between.startswith(end) or "user" not in between[len(end):]:
        raise ExportError("The chat template is not one turn format repeated per message; write the Modelfile's "
                          "TEMPLATE by hand (the GGUF file holds the template itself).")
    prefix, middle = between[len(end):].split("user", 1)

    def turn(role, content):
        return f"{prefix}{role}{middle}{content}{end}"
    rebuilt = "".join(turn(m["role"], m["content"]) for m in said)
    if rebuilt != whole or render(said, True) != whole + f"{prefix}assistant{middle}":
        raise ExportError("The chat template's turns differ by role; write the Modelfile's TEMPLATE by hand.")
    alone = render([{"role": "user", "content": "\x01U"}])
    default_system = None
    if alone != turn("user", "\x01U") and alone.endswith(turn("user", "\x01U")):
        head = alone[:-len(turn("user", "\x01U"))]
        if head.startswith(f"{prefix}system{middle}") and head.endswith(end):
            default_system = head[len(f"{prefix}system{middle}"):-len(end)]
    return prefix, middle, end, default_system


def modelfile(gguf_name: str, tokenizer) -> str:
    """An Ollama Modelfile for a GGUF file beside it: the turn format from the model's own chat template as Ollama's
    Go template, its default system prompt, greedy decoding like the lab's answers, and the end-of-turn stop."""
    prefix, middle, end, system = chat_turns(tokenizer)
    # Plain {{ }} actions: a trimming {{- would eat the newline that ends each turn.
    template = (f"{{{{ if .System }}}}{prefix}system{middle}{{{{ .System }}}}{end}{{{{ end }}}}"
                f"{{{{ range .Messages }}}}{prefix}{{{{ .Role }}}}{middle}{{{{ .Content }}}}{end}{{{{ end }}}}"
                f"{prefix}assistant{middle}")
    stops = dict.fromkeys([tokenizer.eos_token, end.strip()])  # ordered, no repeats
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in stops if stop]
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def file_name(record: dict, kind: str) -> str:
    return f"{record['run_id']}-seed{record['seed']}-{kind}.gguf"


def greedy(lab, model: torch.nn.Module, prompts: int | None = None) -> list[str]:
    """The lab's greedy answers computed in fp32, like the perplexities: in 16 bits a rounding difference far below
    the file's own would flip the greedy path, and the comparison would show the arithmetic, not the file."""
    return generate(model, lab.tokenizer, lab.data.prompt_ids[:prompts], lab.profile.generation_tokens,
                    Precision("fp32", fp16=False, bf16=False))


def export_run(lab, record: dict, folder: Path, kinds: tuple[str, ...] = ("f16", "q8_0"),
               prompts: int | None = None) -> dict:
    """Export one run's merged model as GGUF files of each kind into `folder`, with a Modelfile for the last kind,
    read each back with transformers' GGUF loader and compare it with the merged model on the whole held-out set
    (next token and perplexity) and on the lab's greedy prompts. Returns what the model card and the record keep."""
    merged = merged_model(lab, record)
    check_exportable(merged)
    reference = scores(lab, merged)
    answers = greedy(lab, merged, prompts)
    found: dict = {"merged_perplexity": reference.perplexity, "answers": {"merged": answers},
                   "eval_tokens": sum(s.tokens for s in reference.per_example)}
    for kind in kinds:
        path = write_gguf(merged, lab.tokenizer, Path(folder) / file_name(record, kind), kind,
                          preset=record["model"]["preset"], name=f"{record['run_id']} (seed {record['seed']})")
        back, _ = load_gguf(path, tokenizer=False)
        theirs = greedy(lab, back, prompts)
        found[kind] = {"file": path.name, "bytes": path.stat().st_size, **compare(reference, scores(lab, back), kind),
                       "greedy_same": sum(a == b for a, b in zip(answers, theirs)), "prompts": len(answers)}
        found["answers"][kind] = theirs
        del back
    name = file_name(record, kinds[-1])
    (Path(folder) / "Modelfile").write_text(modelfile(name, lab.tokenizer))
    found["modelfile"] = "Modelfile"
    keep_in_record(lab, record, found, Path(folder))
    return found


def keep_in_record(lab, record: dict, found: dict, folder: Path) -> None:
    """The export's sizes and checks go into the run's results file (its training numbers untouched)."""
    record["export"] = {key: value for key, value in found.items() if key != "answers"}
    record["export"]["folder"] = str(folder.resolve().relative_to(lab.results_dir.resolve())) \
        if folder.resolve().is_relative_to(lab.results_dir.resolve()) else str(folder)
    write_atomic(record, lab.result_path(record["run_id"], record["seed"]))


def size_note(found: dict) -> str:
    """One line per exported file: size, perplexity against the merged model's, agreement, greedy answers."""
    lines = [f"merged model: held-out perplexity {found['merged_perplexity']:.4f} over {found['eval_tokens']:,} "
             "target tokens"]
    for kind in KINDS:
        if kind not in found:
            continue
        f, bound = found[kind], BOUNDS[kind]
        flips = ("none differ" if not f["flips"] else
                 f"{f['flips']:,} of {f['positions']:,} differ, each where the merged model's top two tokens were "
                 f"within {f['widest_flipped_lead']:.2f} logits: {100 * f['near_ties']:.1f}% of positions are that close")
        lines.append(f"{f['file']}: {f['bytes'] / 2**20:,.1f} MiB, perplexity {f['perplexity']:.4f} "
                     f"({100 * f['perplexity_gap']:+.3f}%), next token as the merged model's at "
                     f"{100 * f['agreement']:.2f}% of positions ({flips}); greedy answers identical "
                     f"{f['greedy_same']}/{f['prompts']}. Bounds >= {100 * bound['agreement']:g}% and "
                     f"{100 * bound['perplexity']:g}%: {'met' if f['within_bounds'] else 'NOT met'}")
    return "\n".join(lines)
