"""judges: train the two reply classifiers evaluate scores with (chattune.evaluation.judging), on training rows only, and check
each on rows it never saw.

Human-likeness learns Human-Like-DPO's chosen against rejected replies from every pair outside the held-out set
(the same pairs preprocess holds out: chattune.data.parsing.split_pairs, by prompt, with eval.dpo_eval_size and the
seed), both replies of a pair cut to the same length within evaluation's reply budget, and is checked on the
held-out pairs cut alike. Emotion learns EmpatheticDialogues' labels from every listener turn of train.csv (a
held-out conversation's twins left out, as preprocess leaves them out of SFT) and is checked on valid.csv's. Neither
depends on an SFT or DPO preset's sizes, so every experiment is scored by the same classifiers.

Writes models/judges/ (two scikit-learn pipelines) and metrics/judges.json: each check with its 95% bootstrap
interval beside chance, and whether it clears chance (`<judge>.informative`).
"""
from __future__ import annotations

from chattune.common.errors import DataError, run
from chattune.common.outputs import atomic_dir, write_json
from chattune.common.params import load_params
from chattune.common.paths import DPO_FILE, DPO_SUBDIR, ED_SPLITS, ED_SUBDIR, JUDGES_DIR, JUDGES_METRICS, RAW_DIR
from chattune.data.parsing import HeldOut, parse_dpo, parse_empathetic, read_bytes, split_pairs
from chattune.evaluation.judging import (
    chance,
    clears_chance,
    conversation_accuracy,
    held_out_accuracy,
    listener_turns,
    matched_replies,
    train,
)
from chattune.evaluation.replies import reply_budget
from chattune.evaluation.scoring import interval, resample
from chattune.modeling.loading import load_tokenizer


def checked(measure, samples: int, seed: int, prefix: str, chance_level: float) -> tuple[dict, bool]:
    """A check's value and its 95% bootstrap interval as flat metrics, and whether it clears chance."""
    low, high = interval(measure, resample(len(measure.rows), samples, seed))
    return {prefix: measure.value(), f"{prefix}_low": low, f"{prefix}_high": high}, clears_chance(low, chance_level)


def main() -> None:
    params = load_params()
    turns = {}
    for split in ED_SPLITS:
        path = RAW_DIR / ED_SUBDIR / f"{split}.csv"
        turns[split] = parse_empathetic(read_bytes(path), str(path)).records
    held_out_conversations = HeldOut.of(turns["valid"] + turns["test"])
    trained, valid = listener_turns(turns["train"], held_out_conversations), listener_turns(turns["valid"])
    for split, found in (("train", trained), ("valid", valid)):
        if not found:
            raise DataError(f"{RAW_DIR / ED_SUBDIR / f'{split}.csv'}: no listener turns to learn emotions from")
    path = RAW_DIR / DPO_SUBDIR / DPO_FILE
    pairs = parse_dpo(read_bytes(path), str(path)).records
    if len(pairs) < 2:
        raise DataError(f"{path}: {len(pairs)} usable pairs; need at least 2")
    train_pairs, held_out = split_pairs(pairs, len(pairs), params.eval.dpo_eval_size, params.seed)

    tokenizer, budget = load_tokenizer(), reply_budget(params)
    judges = train(params.seed, *matched_replies(train_pairs, tokenizer, budget),
                   [turn.text for turn in trained], [turn.emotion for turn in trained])
    texts, labels = matched_replies(held_out, tokenizer, budget)
    humanlike, humanlike_informative = checked(held_out_accuracy(judges, texts, labels), params.eval.bootstrap_samples,
                                               params.seed, "humanlike.held_out_accuracy", 0.5)
    probability = judges.humanlike.predict_proba(texts)[:, 1]
    valid_emotions = [turn.emotion for turn in valid]
    emotion, emotion_informative = checked(
        conversation_accuracy(judges, [turn.text for turn in valid], valid_emotions, [turn.conv_id for turn in valid]),
        params.eval.bootstrap_samples, params.seed, "emotion.valid_accuracy", chance(valid_emotions))
    metrics = {
        "humanlike.train_pairs": len(train_pairs),
        "humanlike.held_out_pairs": len(held_out),
        "humanlike.reply_budget": budget,
        # each held-out reply classified alone (chance 0.5: half are chosen), and each pair's chosen reply scored
        # above its rejected one; both replies of a pair cut to the same length
        **humanlike,
        "humanlike.held_out_pair_accuracy": float((probability[0::2] > probability[1::2]).mean()),
        "humanlike.chance": 0.5,
        "humanlike.informative": humanlike_informative,
        "emotion.labels": len({turn.emotion for turn in trained}),
        "emotion.train_replies": len(trained),
        "emotion.valid_replies": len(valid),
        "emotion.valid_conversations": len({turn.conv_id for turn in valid}),
        **emotion,
        "emotion.valid_chance": chance(valid_emotions),
        "emotion.informative": emotion_informative,
    }
    with atomic_dir(JUDGES_DIR) as out:
        judges.save(out)
    write_json(JUDGES_METRICS, metrics)
    verdict = {True: "informative", False: "UNINFORMATIVE: its interval does not clear chance"}
    print(f"judges: human-likeness {metrics['humanlike.held_out_accuracy']:.3f} "
          f"[{metrics['humanlike.held_out_accuracy_low']:.3f}, {metrics['humanlike.held_out_accuracy_high']:.3f}] on "
          f"{len(held_out)} held-out pairs cut to one length (chance 0.5; {verdict[humanlike_informative]}); emotion "
          f"{metrics['emotion.valid_accuracy']:.3f} [{metrics['emotion.valid_accuracy_low']:.3f}, "
          f"{metrics['emotion.valid_accuracy_high']:.3f}] on valid.csv (chance {metrics['emotion.valid_chance']:.3f}, "
          f"{metrics['emotion.labels']} labels; {verdict[emotion_informative]}) -> {JUDGES_DIR}/")


if __name__ == "__main__":
    run(main, "judges")
