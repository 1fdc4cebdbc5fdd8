"""preprocess: raw EmpatheticDialogues and Human-Like-DPO, or data of your own -> TRL-ready JSONL, plus row counts.

Data of your own (data.sft.own, data.dpo.own) is read by chattune.data.formats into the same rows: one SFT example
per assistant turn, its splits as the data gives them or held out by group (chattune.data.inputs). What follows
describes the built-in data; the same sizes, fitting and counts apply to both.

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
from chattune.common.paths import DATA_METRICS, DPO_DATA, LENGTHS, SFT_DATA
from chattune.data.inputs import PREFERENCE_DROP_REASONS, preference_pairs, preference_split, sft_splits
from chattune.data.parsing import DPO_DROP_REASONS, Parsed, groups_across, repeated_groups, subsample
from chattune.modeling.loading import load_tokenizer
from chattune.modeling.prompt import PromptTooLong, encode, fit


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
    # Read every raw file before anything else: bad input stops the stage with its file and line.
    sft = sft_splits(params, params.sft.format == "seed")
    for split, examples in sft.examples.items():
        if not examples.records:
            raise DataError(f"{sft.sources[split]}: no SFT examples left after filtering")
    path, pairs, given_eval = preference_pairs(params, params.dpo.system_prompt)
    if len(pairs.records) < 2:
        raise DataError(f"{path}: {len(pairs.records)} usable pairs after filtering; need at least 2")

    tokenizer = load_tokenizer()
    metrics, outputs = dict(sft.counts), {}
    for split, examples in sft.examples.items():
        if split != "test":  # the test prompts are evaluate's, which fits them into the model's context window
            metrics[f"sft.{split}.truncated"] = fit_examples(examples, tokenizer, params.sft.max_length)
        metrics.update(examples.counts(f"sft.{split}.{sft.kind}", sft.reasons))
        chosen = subsample(examples.records, sizes[split], params.seed)
        if not chosen:
            raise DataError(f"{sft.sources[split]}: no SFT example fits in sft.max_length ({params.sft.max_length} "
                            "tokens)")
        outputs[SFT_DATA / f"{split}.jsonl"] = chosen
        metrics[f"sft.{split}.examples"] = len(chosen)

    # every pair that may train, whatever dpo.train_size: the split is checked on it, and its replies measured; the
    # preset trains on the first dpo.train_size of them
    all_train_pairs, dpo_held_out, twins = preference_split(params, pairs, given_eval)
    if not all_train_pairs:
        raise DataError(f"{path}: all {len(pairs.records)} pairs ask the held-out prompts, which leaves none to "
                        "train on")
    train = all_train_pairs[: params.dpo.train_size]
    outputs[DPO_DATA / "train.jsonl"], outputs[DPO_DATA / "eval.jsonl"] = train, dpo_held_out
    metrics.update(pairs.counts("dpo.rows", PREFERENCE_DROP_REASONS if params.data.dpo.own else DPO_DROP_REASONS))
    if given_eval is not None:  # the data's own eval file, and the training pairs that asked its prompts
        metrics.update(given_eval.counts("dpo.eval_rows", PREFERENCE_DROP_REASONS))
        metrics["dpo.train.dropped.held_out_twin"] = twins
    metrics.update({"dpo.train.pairs": len(train), "dpo.eval.pairs": len(dpo_held_out)})
    groups, repeated, in_repeated = repeated_groups(pairs.records)
    metrics.update({"dpo.prompt_groups": groups, "dpo.repeated_prompt_groups": repeated,
                    "dpo.pairs_in_repeated_groups": in_repeated,
                    "dpo.groups_across_splits": groups_across(all_train_pairs, dpo_held_out)})

    # What each training teaches the model to say, over all its training rows (not the preset's share of them),
    # so that every preset is given the same generation budget.
    lengths = {
        **token_lengths([len(encode(tokenizer, e["prompt"], e["completion"])[1]) for e in sft.examples["train"].records],
                        "sft.train.reply_tokens"),
        **token_lengths([len(encode(tokenizer, p["prompt"], p["chosen"])[1]) for p in all_train_pairs],
                        "dpo.train.chosen_tokens"),
    }
    # Everything was parsed and fitted before anything is written, and the outputs change together: bad input
    # leaves the last run's outputs whole, never some of them new.
    write_together({**{path: jsonl_text(rows) for path, rows in outputs.items()},
                    DATA_METRICS: json_text(metrics), LENGTHS: json_text(lengths)})
    print(f"preprocess: sft {[metrics[f'sft.{s}.examples'] for s in sizes]} train/eval/test -> {SFT_DATA}/, "
          f"dpo {len(train)}/{len(dpo_held_out)} train/eval -> {DPO_DATA}/ ({repeated} prompts asked more than once, "
          f"each kept on one side)")


if __name__ == "__main__":
    run(main, "preprocess")
