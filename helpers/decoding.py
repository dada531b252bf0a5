"""What a decoding setting changes: one trained run's greedy answers, as the comparison stores them, next to the same
prompts decoded with a repetition penalty, each with its repeated-3-gram rate.

The comparison itself always uses plain greedy answers (the records' `generations`), so that a difference between
runs comes from the weights; this demo only shows, beside them, what decoding alone can change, and writes nothing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .measures import by_run, repeated_ngram_rate, usable
from .tables import LabFrame

# The adapter runs the demo tries, in order: a full-precision base reloads fastest; a full fine-tune's artifact is a
# whole model, so it is not reloaded here.
PREFERRED_RUNS = ("lora-r16", "lora-r8", "lora-r32", "qlora")


def saved_adapter(records: list[dict], results_dir: Path | str) -> dict | None:
    """The first record (PREFERRED_RUNS order, then seed) whose saved adapter is in results_dir, else None (the
    committed reference set ships without artifacts)."""
    runs = by_run(usable(records))
    for run in PREFERRED_RUNS:
        for record in runs.get(run, []):
            if record.get("lora") and (Path(results_dir) / record["artifact"]["path"]).is_dir():
                return record
    return None


def _rate(text: str) -> float | None:
    rate = repeated_ngram_rate(text)
    return None if rate is None else 100 * rate


def penalty_frame(record: dict, penalised: list[str], penalty: float) -> pd.DataFrame:
    """Rows = the record's prompts: its stored greedy answer and the penalised one, each with its repeated-3-gram
    rate in percent."""
    greedy = [g["after"] for g in record["generations"]]
    if len(penalised) != len(greedy):
        raise ValueError(f"penalty_frame: {len(penalised)} penalised answers for {len(greedy)} prompts of "
                         f"{record['run_id']} seed {record['seed']}; generate one answer per stored prompt")
    frame = LabFrame({"greedy (as compared)": greedy,
                      "greedy repeated 3-grams %": [_rate(t) for t in greedy],
                      f"repetition_penalty={penalty:g}": penalised,
                      "penalised repeated 3-grams %": [_rate(t) for t in penalised]},
                     index=pd.Index([g["prompt"] for g in record["generations"]], name="prompt"))
    frame.attrs["run"] = f"{record['run_id']} seed {record['seed']}"
    return frame


def penalty_demo(records: list[dict], results_dir: Path | str, penalty: float = 1.3) -> pd.DataFrame:
    """Reload one trained run's saved adapter, answer its stored prompts again with `repetition_penalty=penalty`
    (the profile's generation length, one batch) and show them next to its greedy answers. Without a saved adapter
    (the reference set), a one-row frame says so and nothing is loaded."""
    record = saved_adapter(records, results_dir)
    if record is None:
        return LabFrame(pd.DataFrame({"note": [
            f"no saved adapter in {results_dir} (the committed reference set has none): run notebook 02_lora_ranks, "
            "03_qlora or 04_lora_variants, then this cell shows a trained run's answers with and without a repetition penalty"]}))
    if not record.get("generations"):
        return LabFrame(pd.DataFrame({"note": [f"{record['run_id']} seed {record['seed']} stored no answers "
                                               "(the profile's generation_prompts is 0)"]}))
    from . import adapters
    from .data import generation_prompt_ids
    from .evaluation import generate
    from .runs import Lab  # the training stack loads only when there is an adapter to reload

    lab = Lab(record["environment"]["profile"], results=results_dir, model=record["model"]["preset"],
              dataset=record["data"]["manifest"])
    model = adapters.reload(lab, record)
    prompt_ids = generation_prompt_ids([g["prompt"] for g in record["generations"]], lab.tokenizer,
                                       record["data"]["template"] == "chat")
    penalised = generate(model, lab.tokenizer, prompt_ids, lab.profile.generation_tokens, lab.env.precision,
                         repetition_penalty=penalty)
    return penalty_frame(record, penalised, penalty)


__all__ = ["PREFERRED_RUNS", "penalty_demo", "penalty_frame", "saved_adapter"]
