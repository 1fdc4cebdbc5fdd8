"""judges: train the two reply classifiers evaluate scores with (chattune.evaluation.judging), on training rows only, and check
each on rows it never saw.

Human-likeness learns Human-Like-DPO's chosen against rejected replies from every pair outside the held-out set
(the same pairs preprocess holds out: chattune.data.parsing.split_pairs, by prompt, with eval.dpo_eval_size and the
seed), both replies of a pair cut to the same length within evaluation's reply budget, and is checked on the
held-out pairs cut alike. Emotion learns EmpatheticDialogues' labels from every listener turn of train.csv (a
held-out conversation's twins left out, as preprocess leaves them out of SFT) and is checked on valid.csv's. Neither
depends on an SFT or DPO preset's sizes, so every experiment is scored by the same classifiers. With data of
your own (chattune.data.inputs), human-likeness learns its preference pairs, and emotion its `data.sft.label`
column, or is left out (emotion.available: false) where the data has none.

Writes models/judges/ (two scikit-learn pipelines) and metrics/judges.json: each check with its 95% bootstrap
interval beside chance, and whether it clears chance (`<judge>.informative`).
"""
from __future__ import annotations

from chattune.common.errors import DataError, run
from chattune.common.outputs import atomic_dir, write_json
from chattune.common.params import load_params
from chattune.common.paths import JUDGES_DIR, JUDGES_METRICS
from chattune.data.inputs import labelled_replies, preference_pairs, preference_split
from chattune.evaluation.judging import (
    chance,
    clears_chance,
    conversation_accuracy,
    held_out_accuracy,
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
    replies, valid_source = labelled_replies(params)
    for split, found in replies.items():
        if not found:
            raise DataError(f"{valid_source if split == 'valid' else 'the SFT data'}: no labelled {split} replies to "
                            "learn emotions from")
    path, pairs, given_eval = preference_pairs(params, "")
    if len(pairs.records) < 2:
        raise DataError(f"{path}: {len(pairs.records)} usable pairs; need at least 2")
    train_pairs, held_out, _ = preference_split(params, pairs, given_eval)

    tokenizer, budget = load_tokenizer(), reply_budget(params)
    trained, valid = replies.get("train", []), replies.get("valid", [])
    judges = train(params.seed, *matched_replies(train_pairs, tokenizer, budget),
                   [reply.text for reply in trained], [reply.label for reply in trained])
    texts, labels = matched_replies(held_out, tokenizer, budget)
    humanlike, humanlike_informative = checked(held_out_accuracy(judges, texts, labels), params.eval.bootstrap_samples,
                                               params.seed, "humanlike.held_out_accuracy", 0.5)
    probability = judges.humanlike.predict_proba(texts)[:, 1]
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
        "emotion.available": judges.emotion is not None,
    }
    verdict = {True: "informative", False: "UNINFORMATIVE: its interval does not clear chance"}
    said = "emotion: none (the SFT data has no label column: data.sft.label)"
    if judges.emotion is not None:
        valid_labels = [reply.label for reply in valid]
        emotion, emotion_informative = checked(
            conversation_accuracy(judges, [reply.text for reply in valid], valid_labels,
                                  [reply.conversation for reply in valid]),
            params.eval.bootstrap_samples, params.seed, "emotion.valid_accuracy", chance(valid_labels))
        metrics.update({
            "emotion.labels": len({reply.label for reply in trained}),
            "emotion.train_replies": len(trained),
            "emotion.valid_replies": len(valid),
            "emotion.valid_conversations": len({reply.conversation for reply in valid}),
            **emotion,
            "emotion.valid_chance": chance(valid_labels),
            "emotion.informative": emotion_informative,
        })
        said = (f"emotion {metrics['emotion.valid_accuracy']:.3f} [{metrics['emotion.valid_accuracy_low']:.3f}, "
                f"{metrics['emotion.valid_accuracy_high']:.3f}] on {valid_source} (chance "
                f"{metrics['emotion.valid_chance']:.3f}, {metrics['emotion.labels']} labels; "
                f"{verdict[emotion_informative]})")
    with atomic_dir(JUDGES_DIR) as out:
        judges.save(out)
    write_json(JUDGES_METRICS, metrics)
    print(f"judges: human-likeness {metrics['humanlike.held_out_accuracy']:.3f} "
          f"[{metrics['humanlike.held_out_accuracy_low']:.3f}, {metrics['humanlike.held_out_accuracy_high']:.3f}] on "
          f"{len(held_out)} held-out pairs cut to one length (chance 0.5; {verdict[humanlike_informative]}); "
          f"{said} -> {JUDGES_DIR}/")


if __name__ == "__main__":
    run(main, "judges")
