"""Whether a metric of metrics/eval.json can tell models apart. A learned metric is scored by a classifier that the
judges stage checks on rows it never saw (`<judge>.informative` in metrics/judges.json); where the check does not
clear chance, the metric is uninformative on that data, and none of its differences may be called decided,
whatever its interval. Evaluate writes the verdict beside each prompt set's numbers (`<set>.<judge>_informative`);
the model card, `make show` and `make compare` read it here."""
from __future__ import annotations

LEARNED = {"humanlike": "humanlike", "emotion_accuracy": "emotion"}  # learned metric -> the judge that scores it


def verdict_key(set_name: str, metric: str) -> str:
    return f"{set_name}.{LEARNED[metric]}_informative"


def informative(scores: dict, key: str) -> bool:
    """Whether `key` ("<set>.<model or difference>.<metric>") can tell models apart in `scores` (metrics/eval.json):
    every metric can but a learned one whose classifier failed its check."""
    set_name, metric = key.split(".")[0], key.rsplit(".", 1)[-1]
    return metric not in LEARNED or scores.get(verdict_key(set_name, metric)) is not False
