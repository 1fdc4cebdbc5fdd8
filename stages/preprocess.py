"""preprocess: raw EmpatheticDialogues and Human-Like-DPO -> TRL-ready JSONL, plus row counts.

SFT: one example per listener turn (stages.parsing.listener_examples). A dialogue too long for
sft.max_length tokens (with the base model's tokenizer and chat template) loses its oldest turns, never
the reply; one that still does not fit is dropped and counted. train/eval/test come from
train/valid/test.csv, each shuffled with the seed and cut to its size: sft.train_size for train, the
fixed eval.sft_eval_size and eval.test_size for the others, so every preset is scored on the same rows.
DPO: stripped, filtered, de-duplicated, opened with the SFT system prompt (dpo.use_system_prompt),
shuffled with the seed; the fixed eval.dpo_eval_size pairs are held out and up to dpo.train_size of the
rest go to training.
"""
from __future__ import annotations

import sys

from stages.modeling import PromptTooLong, fit, load_tokenizer
from stages.outputs import write_json, write_jsonl
from stages.params import load_params
from stages.parsing import (DPO_DROP_REASONS, ED_DROP_REASONS, EXAMPLE_DROP_REASONS, DataError, Parsed,
                            listener_examples, parse_dpo, parse_empathetic, read_bytes, split_pairs, subsample)
from stages.paths import DATA_METRICS, DPO_DATA, DPO_FILE, DPO_SUBDIR, ED_SUBDIR, RAW_DIR, SFT_DATA

SFT_SPLITS = {"train": "train", "eval": "valid", "test": "test"}  # processed split -> raw file


def fit_examples(examples: Parsed, tokenizer, max_length: int) -> int:
    """Fit each example into max_length tokens in place (oldest turns dropped); drop and count those that
    cannot fit. Returns how many examples lost turns."""
    fitted, truncated = [], 0
    for example in examples.records:
        try:
            prompt, dropped = fit(tokenizer, example["prompt"], example["completion"], max_length)
        except PromptTooLong:
            examples.dropped["too_long"] += 1
            continue
        truncated += dropped > 0
        fitted.append({**example, "prompt": prompt})
    examples.records = fitted
    return truncated


def main() -> None:
    params = load_params()
    sizes = {"train": params.sft.train_size, "eval": params.eval.sft_eval_size, "test": params.eval.test_size}
    # Parse every raw file before anything else: bad input stops the stage with its file and line.
    parsed = {}
    for split, raw_split in SFT_SPLITS.items():
        path = RAW_DIR / ED_SUBDIR / f"{raw_split}.csv"
        turns = parse_empathetic(read_bytes(path), str(path))
        examples = listener_examples(turns.records, params.sft.system_prompt, params.sft.format == "seed")
        if not examples.records:
            raise DataError(f"{path}: no SFT examples left after filtering")
        parsed[split] = path, turns, examples
    path = RAW_DIR / DPO_SUBDIR / DPO_FILE
    pairs = parse_dpo(read_bytes(path), str(path), params.sft.system_prompt if params.dpo.use_system_prompt else "")
    if len(pairs.records) < 2:
        raise DataError(f"{path}: {len(pairs.records)} usable pairs after filtering; need at least 2")

    tokenizer = load_tokenizer()
    metrics, outputs = {}, {}
    for split, (path, turns, examples) in parsed.items():
        raw_split = SFT_SPLITS[split]
        metrics[f"sft.{split}.truncated"] = fit_examples(examples, tokenizer, params.sft.max_length)
        chosen = subsample(examples.records, sizes[split], params.seed)
        if not chosen:
            raise DataError(f"{path}: no SFT example fits in sft.max_length ({params.sft.max_length} tokens)")
        outputs[SFT_DATA / f"{split}.jsonl"] = chosen
        metrics.update(turns.counts(f"ed.{raw_split}.rows", ED_DROP_REASONS))
        metrics[f"ed.{raw_split}.rows.extra_fields"] = turns.extra_fields
        metrics.update(examples.counts(f"sft.{split}.listener_turns", EXAMPLE_DROP_REASONS))
        metrics[f"sft.{split}.examples"] = len(chosen)

    train, held_out = split_pairs(pairs.records, params.dpo.train_size, params.eval.dpo_eval_size, params.seed)
    outputs[DPO_DATA / "train.jsonl"], outputs[DPO_DATA / "eval.jsonl"] = train, held_out
    metrics.update(pairs.counts("dpo.rows", DPO_DROP_REASONS))
    metrics.update({"dpo.train.pairs": len(train), "dpo.eval.pairs": len(held_out)})
    # Everything was parsed and fitted before anything is written: bad input leaves no output behind.
    for path, rows in outputs.items():
        write_jsonl(path, rows)
    write_json(DATA_METRICS, metrics)
    print(f"preprocess: sft {[metrics[f'sft.{s}.examples'] for s in SFT_SPLITS]} train/eval/test -> {SFT_DATA}/, "
          f"dpo {len(train)}/{len(held_out)} train/eval -> {DPO_DATA}/")


if __name__ == "__main__":
    try:
        main()
    except DataError as error:
        sys.exit(f"preprocess failed: {error}")
