"""GGUF export of a fine-tuned model for llama.cpp and Ollama, with the proof that the file is the model.

The lab's offline base arrives as a GGUF file; this closes the circle: GGUF in, fine-tune, GGUF out. Written with
the official `gguf` package (llama.cpp's own Python writer, vocabulary readers and quantizers); what it does not
do is map a transformers model onto its writer, which llama.cpp keeps in a script (convert_hf_to_gguf.py) that is
not an installable package, so the few lines of that mapping for the Llama architecture are here.
"""

from __future__ import annotations

import json
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
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .adapters import adapter_name, has_4bit_layers, merge, merge_dequantized, reload
from .environment import FP32
from .evaluation import ExampleScore, per_example_scores, summarize_nll
from .formatting import format_bytes, format_count
from .models import load_config
from .results import write_atomic

# What llama.cpp calls each preset's pre-tokenizer (its regex split before BPE); it identifies SmolLM2's as "smollm".
PRE_TOKENIZER = {"smollm2-135m-bundled": "smollm", "smollm2-135m": "smollm"}
# name -> (the type 2-D weights are stored in, the file type llama.cpp reads from the header)
KINDS = {"f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
         "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}
# The read-back check's bounds: next-token agreement and perplexity gap per kind. F16 rounds each weight by about
# 2^-11 of itself, Q8_0 by up to 2^-8 of its block's largest value: Q8_0's bounds are ten times looser.
BOUNDS = {"f16": {"agreement": 0.999, "perplexity": 0.001}, "q8_0": {"agreement": 0.99, "perplexity": 0.01}}
# A flipped next token where the merged model led its runner-up by less than this many logits is a near tie: rounding
# can flip it. A broken layout or scale flips positions the model was sure of (its median lead is above 1 logit here).
NEAR_TIE = 0.5
SUPPORTED = ("Llama-architecture models (LlamaForCausalLM: SmolLM2, TinyLlama) without rope scaling or biases, "
             "with a byte-level BPE tokenizer (SmolLM2) or a byte-fallback BPE one (TinyLlama, Llama 2)")


class ExportError(ValueError):
    pass


def check_kinds(kinds: object) -> tuple[str, ...]:
    """KINDS from notebook 06's parameters: a non-empty list of distinct kinds this exporter writes."""
    fix = f"Fix: KINDS = {list(KINDS)} (a list; any of {', '.join(repr(k) for k in KINDS)})"
    if isinstance(kinds, str) or not isinstance(kinds, (list, tuple)) or not kinds:
        raise ExportError(f"KINDS = {kinds!r}: must be a non-empty list of GGUF types. {fix}")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or len(set(kinds)) != len(kinds):
        what = f"{unknown} not written here" if unknown else "repeats a type"
        raise ExportError(f"KINDS = {kinds!r}: {what}. {fix}")
    return tuple(kinds)


def check_config(config, name: str = "") -> None:
    """Refuse, before any weight is loaded or file written, an architecture this exporter cannot write faithfully:
    the check reads the model's config only, so a notebook fails in its first cells, not after training."""
    if config.model_type != "llama":
        name = name or (config.architectures or [config.model_type])[0]
        raise ExportError(f"{name} (model_type {config.model_type!r}) cannot be exported to GGUF "
                          f"here: this exporter writes {SUPPORTED}. Fix: pick a Llama preset (MODEL_PRESET = "
                          "'smollm2-135m-bundled'), or convert the saved model folder with llama.cpp's "
                          "convert_hf_to_gguf.py, which knows other architectures.")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default" or getattr(config, "attention_bias", False) \
            or getattr(config, "mlp_bias", False):
        raise ExportError(f"{config.model_type} with rope {rope.get('rope_type')!r}, attention_bias "
                          f"{getattr(config, 'attention_bias', False)}, mlp_bias {getattr(config, 'mlp_bias', False)}: "
                          f"this exporter writes {SUPPORTED}. "
                          "Fix: convert the saved model folder with llama.cpp's convert_hf_to_gguf.py.")


def check_exportable(model: torch.nn.Module) -> None:
    """check_config on a loaded model, and no 4-bit layers left in it."""
    check_config(model.config, type(model).__name__)
    if has_4bit_layers(model):
        raise ExportError("The model still has 4-bit layers: a GGUF file of it would hold NF4 weights no GGUF reader "
                          "knows. Fix: export helpers.adapters.merge_dequantized(lab, record), the QLoRA adapter "
                          "merged into its dequantized base (merged_model does this for a QLoRA record).")


def merged_model(lab, record: dict) -> PreTrainedModel:
    """A run's trained model as one plain fp32 model: the saved full model, or the adapter merged into its base
    (a QLoRA adapter into its dequantized 4-bit base: the weights it learned to correct)."""
    if record["lora"] is None:
        return AutoModelForCausalLM.from_pretrained(lab.artifact_path(record), dtype=torch.float32).to(lab.env.device)
    if record.get("quantization"):
        return merge_dequantized(lab, record)
    return merge(reload(lab, record))


def _vocabulary(tokenizer) -> tuple[gguf.vocab.Vocab, gguf.SpecialVocab, list[float] | None]:
    """llama.cpp's own readers of a saved tokenizer: byte-level BPE (gpt2) or byte-fallback BPE (llama), with the
    scores a llama vocabulary is merged by (None for gpt2, which is merged by its merges)."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        for reader in (gguf.vocab.BpeVocab, gguf.vocab.LlamaHfVocab):
            try:
                vocab = reader(Path(folder))
                break
            except (FileNotFoundError, TypeError):  # how each reader says "not my kind of tokenizer"
                continue
        else:
            raise ExportError(f"{type(tokenizer).__name__}: neither a byte-level BPE nor a byte-fallback BPE "
                              f"tokenizer; this exporter writes {SUPPORTED}.")
        special = gguf.SpecialVocab(folder, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=vocab.vocab_size)
        scores = _merge_scores(Path(folder), vocab) if vocab.tokenizer_model == "llama" else None
    return vocab, special, scores


def _merge_scores(folder: Path, vocab: gguf.vocab.Vocab) -> list[float]:
    """A "llama" vocabulary's scores, from the merges in its tokenizer.json. llama.cpp merges such a vocabulary
    SentencePiece's way: the adjacent pair whose joined text is the token of highest score first (the leftmost on a
    tie), never reading merges; transformers' GGUF reader rebuilds the merges in score order. So a token scores minus
    the rank of the first merge that makes it, and one that no merge makes (special, byte, single character) 0: the
    order of the model's own merges. gguf's LlamaHfVocab gives every token -1000, a placeholder (its comment says
    so) with which both merge in another order ("▁student" as "▁stu de n t" in llama.cpp's); llama.cpp's
    converter only falls back on it when there is no tokenizer.model, which a transformers 5 tokenizer does not save."""
    rank: dict[str, int] = {}
    for i, merge in enumerate(json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge  # older files: "a b"
        rank.setdefault(left + right, i)
    return [-(rank[text] + 1.0) if text in rank else 0.0
            for text in (token.decode("utf-8") for token, _, _ in vocab.all_tokens())]


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
    vocab, special, scores = _vocabulary(tokenizer)
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
        tokens, _, types = zip(*vocab.all_tokens())
        writer.add_tokenizer_model(vocab.tokenizer_model)
        writer.add_tokenizer_pre(PRE_TOKENIZER.get(preset, "default"))
        writer.add_token_list(tokens)
        if scores is not None:  # SentencePiece-style merging ranks pieces by score
            writer.add_token_scores(scores)
        writer.add_token_types(types)
        if "bos" not in special.add_special_token:  # written either way: llama.cpp would otherwise pick a default
            bos = tokenizer.bos_token_id
            special.add_special_token["bos"] = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
        special.add_to_gguf(writer, quiet=True)  # merges, bos/eos/pad ids, add-bos flag, chat template
        for tensor_name, data, raw in _tensors(model, kind):
            writer.add_tensor(tensor_name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, path)
    except BaseException:
        try:
            writer.close()
        finally:
            partial.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def _loader_work_done_once() -> Iterator[None]:
    """transformers' GGUF loader parses the whole file twice per model (config, then weights: ~4 s each here, most
    of it the 49k tokens and merges) and asks gguf for the same (architecture, layers) name map once per module (397
    times for SmolLM2: ~6 s). Both are pure functions of their arguments, so for one load each is done once."""
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader, gguf.get_tensor_name_map = lru_cache(maxsize=2)(reader), lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def load_gguf(path: Path, tokenizer: bool = True) -> tuple[PreTrainedModel, object]:
    """(model, tokenizer or None) read back by transformers' own GGUF loader, the model dequantized to fp32."""
    path = Path(path)
    with _loader_work_done_once():
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
    if len(mine) != len(theirs):
        raise ValueError(f"scored {len(mine)} and {len(theirs)} positions: the two models were not scored on one set")
    flips = [lead for (a, lead), (b, _) in zip(mine, theirs) if a != b]
    agreement = 1 - len(flips) / len(mine)
    gap = exported.perplexity / reference.perplexity - 1
    widest = max(flips, default=0.0)
    bound = BOUNDS[kind]
    return {"agreement": agreement, "positions": len(mine), "flips": len(flips), "widest_flipped_lead": widest,
            "only_near_ties": widest < NEAR_TIE, "median_lead": float(np.median([lead for _, lead in mine])),
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
    # Messages only: Ollama puts the SYSTEM prompt into .Messages itself (and into .System too, so printing both would
    # send it twice). Plain {{ }} actions: a trimming {{- would eat the newline that ends each turn.
    template = (f"{{{{ range .Messages }}}}{prefix}{{{{ .Role }}}}{middle}{{{{ .Content }}}}{end}{{{{ end }}}}"
                f"{prefix}assistant{middle}")
    stops = dict.fromkeys([tokenizer.eos_token, end.strip()])  # ordered, no repeats
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in stops if stop]
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def file_name(record: dict, kind: str) -> str:
    return f"{adapter_name(record)}-{kind}.gguf"


def export_folder(lab, record: dict) -> Path:
    """Where a run's GGUF files and Modelfile go: export/<run>-seed<seed>/ beside its results file (on Colab, on
    Drive with the results: a new runtime finds them)."""
    return lab.result_path(record["run_id"], record["seed"]).parent / "export" / adapter_name(record)


def greedy(lab, model: torch.nn.Module, prompts: int | None = None) -> list[str]:
    """The lab's greedy answers computed in fp32, like the perplexities: in 16 bits a rounding difference far below
    the file's own would flip the greedy path, and the comparison would show the arithmetic, not the file."""
    return lab.generate(model, prompts, precision=FP32)


def export_run(lab, record: dict, folder: Path, kinds: tuple[str, ...] = ("f16", "q8_0"),
               prompts: int | None = None) -> dict:
    """Export one run's merged model as GGUF files of each kind into `folder`, with a Modelfile for the last kind,
    read each back with transformers' GGUF loader and compare it with the merged model on the whole held-out set
    (next token and perplexity) and on the lab's greedy prompts. Returns what the model card and the record keep."""
    kinds = check_kinds(kinds)
    check_config(load_config(record["model"]["preset"]))
    merged = merged_model(lab, record)
    check_exportable(merged)
    reference = scores(lab, merged)
    answers = greedy(lab, merged, prompts)
    found: dict = {"merged_perplexity": reference.perplexity, "answers": {"merged": answers},
                   "eval_tokens": sum(s.tokens for s in reference.per_example),
                   "parameters": sum(p.numel() for p in merged.parameters())}
    for kind in kinds:
        path = write_gguf(merged, lab.tokenizer, Path(folder) / file_name(record, kind), kind,
                          preset=record["model"]["preset"], name=f"{record['run_id']} (seed {record['seed']})")
        back = load_gguf(path, tokenizer=False)[0].to(next(merged.parameters()).device)  # same device, same arithmetic
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
    """One line per exported file: size and bits per parameter, perplexity against the merged model's, agreement
    with the widest flipped lead, greedy answers, and the verdicts."""
    lines = [f"merged model: held-out perplexity {found['merged_perplexity']:.4f} over {found['eval_tokens']:,} "
             f"target tokens; {format_count(found['parameters'])} parameters"]
    for kind in KINDS:
        if kind not in found:
            continue
        f, bound = found[kind], BOUNDS[kind]
        flips = ("none differ" if not f["flips"] else
                 f"{f['flips']:,} of {f['positions']:,} differ; at the widest the merged model led by "
                 f"{f['widest_flipped_lead']:.2f} logits, {'a near tie' if f['only_near_ties'] else 'NOT a near tie'}"
                 f" (< {NEAR_TIE}; {100 * f['near_ties']:.1f}% of positions are that close, the median lead is "
                 f"{f['median_lead']:.2f})")
        bits = 8 * f["bytes"] / found["parameters"]
        lines.append(f"{f['file']}: {format_bytes(f['bytes'])} ({bits:.1f} bits per parameter), perplexity "
                     f"{f['perplexity']:.4f} ({100 * f['perplexity_gap']:+.3f}%), next token as the merged model's at "
                     f"{100 * f['agreement']:.2f}% of positions ({flips}); fp32 greedy answers identical "
                     f"{f['greedy_same']}/{f['prompts']}. Bounds >= {100 * bound['agreement']:g}% and "
                     f"{100 * bound['perplexity']:g}%: {'met' if f['within_bounds'] else 'NOT met'}")
    return "\n".join(lines)
