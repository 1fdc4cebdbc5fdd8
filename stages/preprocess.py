"""preprocess: raw EmpatheticDialogues and Human-Like-DPO -> TRL-ready JSONL, plus row counts.

SFT: one example per listener turn (chattune.data.parsing.listener_examples). A training or eval dialogue too long for
sft.max_length tokens (with the base model's tokenizer and chat template) loses its oldest turns, never
the reply; one that still does not fit is dropped and counted. The test prompts are left whole: evaluate fits them
into the model's context window, so no training knob changes them. train/eval/test come from
train/valid/test.csv, each shuffled with the seed and cut to its size: sft.train_size for train, the
fixed eval.sft_eval_size and eval.test_size for the others, so every preset is scored on the same rows.
A training conversation that shares its id or its situation with a valid or test conversation is left out
(counted as held_out_twin): no held-out prompt has a training twin.
DPO: stripped, filtered, de-duplicated, opened with dpo.system_prompt, split by prompt (every pair of one
normalised prompt on one side): the fixed eval.dpo_eval_size pairs are held out and up to dpo.train_size of
the rest go to training.

Writes metrics/data.json (rows read, kept and dropped per reason; the repeated DPO prompts and the groups that
cross a split, which must be none) and metrics/lengths.json: the token lengths of the replies each training
teaches (SFT's listener replies, DPO's chosen replies, over every training row whatever the preset's size),
from which evaluate sizes its generation budget.
"""
from __future__ import annotations

import numpy as np

from chattune.common.errors import DataError, run
from chattune.common.outputs import json_text, jsonl_text, write_together
from chattune.common.params import load_params
from chattune.common.paths import DATA_METRICS, DPO_DATA, DPO_FILE, DPO_SUBDIR, ED_SUBDIR, LENGTHS, RAW_DIR, SFT_DATA
from chattune.data.parsing import (
    DPO_DROP_REASONS,
    ED_DROP_REASONS,
    EXAMPLE_DROP_REASONS,
    HeldOut,
    Parsed,
    groups_across,
    listener_examples,
    normalised,
    parse_dpo,
    parse_empathetic,
    read_bytes,
    repeated_groups,
    split_pairs,
    subsample,
)
from chattune.modeling.loading import load_tokenizer
from chattune.modeling.prompt import PromptTooLong, encode, fit

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


def token_lengths(lengths: list[int], prefix: str) -> dict[str, float]:
    """The median, 95th percentile and longest of some token lengths, as flat metrics."""
    p50, p95 = np.percentile(lengths, [50, 95])
    return {f"{prefix}.p50": float(p50), f"{prefix}.p95": float(p95), f"{prefix}.max": max(lengths)}


def main() -> None:
    params = load_params()
    sizes = {"train": params.sft.train_size, "eval": params.eval.sft_eval_size, "test": params.eval.test_size}
    # Parse every raw file before anything else: bad input stops the stage with its file and line.
    turns = {}
    for split, raw_split in SFT_SPLITS.items():
        path = RAW_DIR / ED_SUBDIR / f"{raw_split}.csv"
        turns[split] = path, parse_empathetic(read_bytes(path), str(path))
    held_out = HeldOut.of([turn for split in ("eval", "test") for turn in turns[split][1].records])
    parsed = {}
    for split, (path, split_turns) in turns.items():
        examples = listener_examples(split_turns.records, params.sft.system_prompt, params.sft.format == "seed",
                                     held_out if split == "train" else None)
        if not examples.records:
            raise DataError(f"{path}: no SFT examples left after filtering")
        parsed[split] = path, split_turns, examples
    path = RAW_DIR / DPO_SUBDIR / DPO_FILE
    pairs = parse_dpo(read_bytes(path), str(path), params.dpo.system_prompt)
    if len(pairs.records) < 2:
        raise DataError(f"{path}: {len(pairs.records)} usable pairs after filtering; need at least 2")

    tokenizer = load_tokenizer()
    metrics, outputs = {}, {}
    for split, (path, split_turns, examples) in parsed.items():
        raw_split = SFT_SPLITS[split]
        if split != "test":  # the test prompts are evaluate's, which fits them into the model's context window
            metrics[f"sft.{split}.truncated"] = fit_examples(examples, tokenizer, params.sft.max_length)
        chosen = subsample(examples.records, sizes[split], params.seed)
        if not chosen:
            raise DataError(f"{path}: no SFT example fits in sft.max_length ({params.sft.max_length} tokens)")
        outputs[SFT_DATA / f"{split}.jsonl"] = chosen
        metrics.update(split_turns.counts(f"ed.{raw_split}.rows", ED_DROP_REASONS))
        metrics[f"ed.{raw_split}.rows.extra_fields"] = split_turns.extra_fields
        metrics.update(examples.counts(f"sft.{split}.listener_turns", EXAMPLE_DROP_REASONS))
        metrics[f"sft.{split}.examples"] = len(chosen)
    trained_situations = {normalised(example["situation"]) for example in parsed["train"][2].records}
    metrics["sft.situations_across_splits"] = len(trained_situations & held_out.situations)

    # every pair that may train, whatever dpo.train_size: the split is checked on it, and its replies measured; the
    # preset trains on the first dpo.train_size of them (split_pairs' own cut)
    all_train_pairs, dpo_held_out = split_pairs(pairs.records, len(pairs.records), params.eval.dpo_eval_size,
                                                params.seed)
    if not all_train_pairs:
        raise DataError(f"{path}: all {len(pairs.records)} pairs ask one prompt, so holding it out leaves none "
                        "to train on")
    train = all_train_pairs[: params.dpo.train_size]
    outputs[DPO_DATA / "train.jsonl"], outputs[DPO_DATA / "eval.jsonl"] = train, dpo_held_out
    metrics.update(pairs.counts("dpo.rows", DPO_DROP_REASONS))
    metrics.update({"dpo.train.pairs": len(train), "dpo.eval.pairs": len(dpo_held_out)})
    groups, repeated, in_repeated = repeated_groups(pairs.records)
    metrics.update({"dpo.prompt_groups": groups, "dpo.repeated_prompt_groups": repeated,
                    "dpo.pairs_in_repeated_groups": in_repeated,
                    "dpo.groups_across_splits": groups_across(all_train_pairs, dpo_held_out)})

    # What each training teaches the model to say, over all its training rows (not the preset's share of them),
    # so that every preset is given the same generation budget.
    lengths = {
        **token_lengths([len(encode(tokenizer, e["prompt"], e["completion"])[1]) for e in parsed["train"][2].records],
                        "sft.train.reply_tokens"),
        **token_lengths([len(encode(tokenizer, p["prompt"], p["chosen"])[1]) for p in all_train_pairs],
                        "dpo.train.chosen_tokens"),
    }
    # Everything was parsed and fitted before anything is written, and the outputs change together: bad input
    # leaves the last run's outputs whole, never some of them new.
    write_together({**{path: jsonl_text(rows) for path, rows in outputs.items()},
                    DATA_METRICS: json_text(metrics), LENGTHS: json_text(lengths)})
    print(f"preprocess: sft {[metrics[f'sft.{s}.examples'] for s in SFT_SPLITS]} train/eval/test -> {SFT_DATA}/, "
          f"dpo {len(train)}/{len(dpo_held_out)} train/eval -> {DPO_DATA}/ ({repeated} prompts asked more than once, "
          f"each kept on one side)")


if __name__ == "__main__":
    run(main, "preprocess")
