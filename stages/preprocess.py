"""preprocess: raw EmpatheticDialogues and Human-Like-DPO -> TRL-ready JSONL, plus row counts.

SFT: one example per listener turn (stages.parsing.listener_examples); train/eval/test come from
train/valid/test.csv, each shuffled with the seed and cut to its configured size.
DPO: stripped, filtered, de-duplicated, shuffled with the seed, split into train and eval.
"""
from __future__ import annotations

import random
import sys

from stages.outputs import write_json, write_jsonl
from stages.params import load_params
from stages.parsing import (DPO_DROP_REASONS, ED_DROP_REASONS, EXAMPLE_DROP_REASONS, DataError, listener_examples,
                            parse_dpo, parse_empathetic, read_bytes)
from stages.paths import DPO_DATA, DPO_FILE, DPO_SUBDIR, ED_SUBDIR, METRICS_DIR, RAW_DIR, SFT_DATA

SFT_SPLITS = {"train": "train", "eval": "valid", "test": "test"}  # processed split -> raw file


def subsample(rows: list, size: int, seed: int) -> list:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[:size]


def split_pairs(rows: list, train_size: int, eval_size: int, seed: int) -> tuple[list, list]:
    """Shuffle, then take eval first and train from the rest. With fewer rows than asked for, both
    shrink in proportion, so a 9000/1000 preset still gives a 90/10 split of a small sample."""
    rows = subsample(rows, len(rows), seed)
    wanted = train_size + eval_size
    if len(rows) < wanted:
        eval_size = max(1, round(len(rows) * eval_size / wanted))
        train_size = len(rows) - eval_size
    return rows[eval_size : eval_size + train_size], rows[:eval_size]


def main() -> None:
    params = load_params()
    sizes = {"train": params.sft.train_size, "eval": params.sft.eval_size, "test": params.eval.test_size}
    metrics, outputs = {}, {}
    for split, raw_split in SFT_SPLITS.items():
        path = RAW_DIR / ED_SUBDIR / f"{raw_split}.csv"
        turns = parse_empathetic(read_bytes(path), str(path))
        examples = listener_examples(turns.records, params.sft.system_prompt, params.sft.format == "seed")
        chosen = subsample(examples.records, sizes[split], params.seed)
        if not chosen:
            raise DataError(f"{path}: no SFT examples left after filtering")
        outputs[SFT_DATA / f"{split}.jsonl"] = chosen
        metrics.update(turns.counts(f"ed.{raw_split}.rows", ED_DROP_REASONS))
        metrics[f"ed.{raw_split}.rows.extra_fields"] = turns.extra_fields
        metrics.update(examples.counts(f"sft.{split}.listener_turns", EXAMPLE_DROP_REASONS))
        metrics[f"sft.{split}.examples"] = len(chosen)

    path = RAW_DIR / DPO_SUBDIR / DPO_FILE
    pairs = parse_dpo(read_bytes(path), str(path))
    if len(pairs.records) < 2:
        raise DataError(f"{path}: {len(pairs.records)} usable pairs after filtering; need at least 2")
    train, held_out = split_pairs(pairs.records, params.dpo.train_size, params.dpo.eval_size, params.seed)
    outputs[DPO_DATA / "train.jsonl"], outputs[DPO_DATA / "eval.jsonl"] = train, held_out
    metrics.update(pairs.counts("dpo.rows", DPO_DROP_REASONS))
    metrics.update({"dpo.train.pairs": len(train), "dpo.eval.pairs": len(held_out)})
    # Everything was parsed before anything is written: bad input leaves no output behind.
    for path, rows in outputs.items():
        write_jsonl(path, rows)
    write_json(METRICS_DIR / "data.json", metrics)
    print(f"preprocess: sft {[metrics[f'sft.{s}.examples'] for s in SFT_SPLITS]} train/eval/test -> {SFT_DATA}/, "
          f"dpo {len(train)}/{len(held_out)} train/eval -> {DPO_DATA}/")


if __name__ == "__main__":
    try:
        main()
    except DataError as error:
        sys.exit(f"preprocess failed: {error}")
