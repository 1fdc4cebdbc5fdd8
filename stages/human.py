"""human: un-blind the filled rating sheets in eval/human/ratings/ and score each model.

evaluate writes eval/human/sheet.csv, one reply per row in shuffled order, with each reply's model
replaced by a random code, and keeps the codes' meaning in eval/human/key.json only. A rater fills a copy of the sheet
(an integer 1-5 in each criterion column; the comment is optional) and saves it as
eval/human/ratings/<rater>.csv, or rates in the browser (`python -m tools.rate --rater <name>`), which saves
that file after every change. Rows not rated yet are left out and counted (`replies_unrated`). This stage checks every cell, then writes metrics/human.json: per model,
each criterion's mean, the overall mean and the number of ratings; with two or more raters, Krippendorff's
alpha (ordinal) per criterion and over all criteria.

A sheet none of whose codes is in the key was made for other replies (an earlier evaluate run): it is
skipped and counted as stale, so an experiment that regenerates replies does not fail on old ratings.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import krippendorff
import numpy as np

from stages.outputs import write_json
from stages.parsing import DataError, read_bytes
from stages.paths import HUMAN_KEY, HUMAN_RATINGS, HUMAN_SHEET, METRICS_DIR
from stages.scoring import CRITERIA, read_sheet

def ordinal_alpha(sheets: list[dict[str, dict[str, int]]], criteria: tuple[str, ...]) -> float:
    """Krippendorff's alpha (ordinal, values 1-5) between raters; units are (reply, criterion) pairs, and a
    reply a rater has not rated yet is missing for that rater."""
    codes = sorted(set().union(*sheets))
    if not any(sum(code in sheet for sheet in sheets) >= 2 for code in codes):
        return float("nan")  # no reply rated twice yet: nothing to agree on
    units = [(code, criterion) for code in codes for criterion in criteria]
    data = np.array([[sheet[code][criterion] if code in sheet else np.nan for code, criterion in units]
                     for sheet in sheets], dtype=float)
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal", value_domain=[1, 2, 3, 4, 5]))


def summarize(sheets: dict[str, dict[str, dict[str, int]]], key: dict) -> dict:
    """Flat metrics: per model, each criterion's mean, the overall mean and the count; alpha when 2+ raters."""
    by_model: dict[str, list[dict[str, int]]] = defaultdict(list)
    for ratings in sheets.values():
        for code, scores in ratings.items():
            by_model[key[code]["model"]].append(scores)
    metrics: dict[str, float] = {"raters": len(sheets)}
    for model, rated in sorted(by_model.items()):
        for criterion in CRITERIA:
            metrics[f"{model}.{criterion}"] = float(np.mean([scores[criterion] for scores in rated]))
        metrics[f"{model}.overall"] = float(np.mean([[scores[c] for c in CRITERIA] for scores in rated]))
        metrics[f"{model}.count"] = len(rated)
    if len(sheets) >= 2:
        ordered = [sheets[rater] for rater in sorted(sheets)]
        for criterion in CRITERIA:
            metrics[f"alpha.{criterion}"] = ordinal_alpha(ordered, (criterion,))
        metrics["alpha.overall"] = ordinal_alpha(ordered, CRITERIA)
    # All raters giving one and the same value leaves alpha undefined (NaN): leave it out rather than write NaN.
    return {name: value for name, value in metrics.items() if value == value}


def main() -> None:
    key = json.loads(HUMAN_KEY.read_text())
    sheets, stale = {}, []
    for path in sorted(Path(HUMAN_RATINGS).glob("*.csv")):
        ratings = read_sheet(read_bytes(path), str(path), key)
        if ratings is None:
            stale.append(path.name)
        else:
            sheets[path.stem] = ratings
    for name in stale:
        print(f"human: skipping {HUMAN_RATINGS}/{name}: none of its codes is in {HUMAN_KEY} (a sheet for older replies)")
    unrated = sum(len(key) - len(ratings) for ratings in sheets.values())
    metrics = {**summarize(sheets, key), "sheets_stale": len(stale), "replies_unrated": unrated}
    write_json(METRICS_DIR / "human.json", metrics)
    if not sheets:
        print(f"human: no rating sheets yet; copy {HUMAN_SHEET} to {HUMAN_RATINGS}/<rater>.csv and fill it in")
    else:
        print("human: " + ", ".join(f"{model} {metrics[f'{model}.overall']:.2f}" for model in ("base", "sft", "dpo")
                                    if f"{model}.overall" in metrics) + f" overall, from {len(sheets)} rater(s)")


if __name__ == "__main__":
    try:
        main()
    except DataError as error:
        sys.exit(f"human failed: {error}")
