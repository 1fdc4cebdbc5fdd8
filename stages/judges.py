"""judges: train the two reply classifiers evaluate scores with (stages.judging), on training rows only.

Human-likeness learns Human-Like-DPO's chosen against rejected replies from every pair outside the held-out
set (the same pairs preprocess holds out: stages.parsing.split_pairs with eval.dpo_eval_size and the seed), and
is checked on those held-out pairs. Emotion learns EmpatheticDialogues' labels from every listener turn of
train.csv and is checked on valid.csv's. Neither depends on an SFT or DPO preset's sizes, so every experiment
is scored by the same classifiers, and DVC retrains them only when the raw data (or the split) changes.

Writes models/judges/ (two scikit-learn pipelines) and metrics/judges.json: held-out accuracies beside chance.
"""
from __future__ import annotations

import sys

import numpy as np

from stages.judging import chance, listener_replies, replies_of, train
from stages.outputs import atomic_dir, write_json
from stages.params import load_params
from stages.parsing import DataError, parse_dpo, parse_empathetic, read_bytes, split_pairs
from stages.paths import DPO_FILE, DPO_SUBDIR, ED_SUBDIR, JUDGES_DIR, METRICS_DIR, RAW_DIR


def main() -> None:
    params = load_params()
    turns = {}
    for split in ("train", "valid"):
        path = RAW_DIR / ED_SUBDIR / f"{split}.csv"
        turns[split] = listener_replies(parse_empathetic(read_bytes(path), str(path)).records)
        if not turns[split][0]:
            raise DataError(f"{path}: no listener turns to learn emotions from")
    path = RAW_DIR / DPO_SUBDIR / DPO_FILE
    pairs = parse_dpo(read_bytes(path), str(path)).records
    if len(pairs) < 2:
        raise DataError(f"{path}: {len(pairs)} usable pairs; need at least 2")
    train_pairs, held_out = split_pairs(pairs, len(pairs), params.eval.dpo_eval_size, params.seed)

    judges = train(params.seed, train_pairs, *turns["train"])
    texts, labels = replies_of(held_out)
    human_probability = judges.humanlike.predict_proba(texts)[:, 1]
    valid_texts, valid_emotions = turns["valid"]
    metrics = {
        "humanlike.train_pairs": len(train_pairs),
        "humanlike.held_out_pairs": len(held_out),
        # each held-out reply classified alone, and each pair's chosen reply scored above its rejected one
        "humanlike.held_out_accuracy": float(np.mean((human_probability >= 0.5) == np.array(labels, dtype=bool))),
        "humanlike.held_out_pair_accuracy": float(np.mean(human_probability[0::2] > human_probability[1::2])),
        "emotion.labels": len(set(turns["train"][1])),
        "emotion.train_replies": len(turns["train"][0]),
        "emotion.valid_replies": len(valid_texts),
        "emotion.valid_accuracy": float(np.mean(judges.emotion.predict(valid_texts) == np.array(valid_emotions))),
        "emotion.valid_chance": chance(valid_emotions),
    }
    with atomic_dir(JUDGES_DIR) as out:
        judges.save(out)
    write_json(METRICS_DIR / "judges.json", metrics)
    print(f"judges: human-likeness {metrics['humanlike.held_out_accuracy']:.3f} on {len(held_out)} held-out pairs; "
          f"emotion {metrics['emotion.valid_accuracy']:.3f} on valid.csv (chance {metrics['emotion.valid_chance']:.3f},"
          f" {metrics['emotion.labels']} labels) -> {JUDGES_DIR}/")


if __name__ == "__main__":
    try:
        main()
    except DataError as error:
        sys.exit(f"judges failed: {error}")
