"""human: un-blind the filled rating sheets and tally the pairwise votes into metrics/human.json.

Ratings. evaluate writes eval/human/sheet.csv, one reply per row, each under a random code whose model only
eval/human/key.json knows (chattune.human.sheet). A rater fills a copy, in a spreadsheet or in the browser
(`python -m tools.rate --rater <name>`, which saves after every click), as eval/human/ratings/<rater>.csv.
Every criterion given counts: a reply rated in part counts for the criteria it has. Per model: each
criterion's mean and count, the overall mean, and the replies rated; with two or more raters, Krippendorff's
alpha (ordinal) per criterion and overall. Rows whose code is no longer in the key (their reply changed when
evaluate ran again) are stale: counted per rater, not scored; a file with no current code at all is a stale
sheet.

Votes. `python -m tools.vote --rater <name>` writes eval/human/votes/<rater>.csv (chattune.human.votes): win rates
per pair of models, Bradley-Terry scores and agreement between raters, from the votes cast for the models
in models/ now; a rater's repeated vote on a prompt and pair is counted (votes.repeated), not tallied.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import krippendorff
import numpy as np

from chattune.common.errors import run
from chattune.common.outputs import write_json
from chattune.common.params import load_params
from chattune.common.paths import HUMAN_KEY, HUMAN_RATINGS, HUMAN_SHEET, HUMAN_VOTES, METRICS_DIR
from chattune.data.parsing import read_bytes
from chattune.human.sheet import CRITERIA, FilledSheet, parse_key, read_sheet
from chattune.human.votes import read_votes
from chattune.human.votes import summarize as summarize_votes
from chattune.modeling.stacks import MODELS, fingerprint


def ordinal_alpha(sheets: list[dict[str, dict[str, int]]], criteria: tuple[str, ...]) -> float:
    """Krippendorff's alpha (ordinal, values 1-5) between raters; units are (reply, criterion) pairs, and a
    criterion a rater has not rated yet is missing for that rater."""
    units = sorted({(code, criterion) for sheet in sheets for code, given in sheet.items() for criterion in given
                    if criterion in criteria})
    if not any(sum(criterion in sheet.get(code, {}) for sheet in sheets) >= 2 for code, criterion in units):
        return float("nan")  # nothing rated twice yet: nothing to agree on
    data = np.array([[sheet.get(code, {}).get(criterion, np.nan) for code, criterion in units] for sheet in sheets],
                    dtype=float)
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal", value_domain=[1, 2, 3, 4, 5]))


def summarize(sheets: dict[str, dict[str, dict[str, int]]], key: dict) -> dict:
    """Flat metrics: per model, each criterion's mean and count, the overall mean and the replies rated;
    alpha when two or more raters."""
    by_model: dict[str, list[dict[str, int]]] = defaultdict(list)
    for scores in sheets.values():
        for code, given in scores.items():
            by_model[key[code]["model"]].append(given)
    metrics: dict[str, float] = {"raters": len(sheets)}
    for model, rated in sorted(by_model.items()):
        for criterion in CRITERIA:
            values = [given[criterion] for given in rated if criterion in given]
            metrics[f"{model}.{criterion}_count"] = len(values)
            if values:
                metrics[f"{model}.{criterion}"] = float(np.mean(values))
        metrics[f"{model}.overall"] = float(np.mean([value for given in rated for value in given.values()]))
        metrics[f"{model}.count"] = len(rated)
    if len(sheets) >= 2:
        ordered = [sheets[rater] for rater in sorted(sheets)]
        for criterion in CRITERIA:
            metrics[f"alpha.{criterion}"] = ordinal_alpha(ordered, (criterion,))
        metrics["alpha.overall"] = ordinal_alpha(ordered, CRITERIA)
    # All raters giving one and the same value leaves alpha undefined (NaN): leave it out rather than write NaN.
    return {name: value for name, value in metrics.items() if value == value}


def read_ratings(key: dict) -> tuple[dict[str, FilledSheet], list[str]]:
    """Each rater's sheet that holds current codes, and the names of files that hold none (stale sheets)."""
    sheets, stale = {}, []
    for path in sorted(Path(HUMAN_RATINGS).glob("*.csv")):
        filled = read_sheet(read_bytes(path), str(path), key)
        if filled.current:
            sheets[path.stem] = filled
        elif filled.stale:
            stale.append(path.name)
    return sheets, stale


def main() -> None:
    params = load_params()
    key = parse_key(read_bytes(HUMAN_KEY), str(HUMAN_KEY))
    sheets, stale = read_ratings(key)
    for name in stale:
        print(f"human: skipping {HUMAN_RATINGS}/{name}: none of its codes is in {HUMAN_KEY} (a sheet for older replies)")
    metrics = {**summarize({rater: sheet.scores for rater, sheet in sheets.items()}, key), "sheets_stale": len(stale),
               "replies_unrated": sum(sheet.unrated(key) for sheet in sheets.values()),
               "replies_partial": sum(sheet.partial for sheet in sheets.values()),
               "rows_stale": sum(sheet.stale for sheet in sheets.values())}
    for rater, sheet in sheets.items():
        metrics.update({f"rater.{rater}.rated": len(sheet.scores), f"rater.{rater}.partial": sheet.partial,
                        f"rater.{rater}.unrated": sheet.unrated(key), f"rater.{rater}.stale_rows": sheet.stale})

    vote_files = sorted(Path(HUMAN_VOTES).glob("*.csv"))
    stacks = {model: fingerprint(model) for model in MODELS} if vote_files else {}
    votes, stale_votes, repeated_votes = [], 0, 0
    for path in vote_files:
        cast = read_votes(read_bytes(path), str(path), path.stem, stacks)
        votes += cast.votes
        stale_votes += cast.stale
        repeated_votes += cast.repeated
        if cast.repeated:
            print(f"human: {path}: {cast.repeated} vote(s) on a prompt and pair this rater had voted on already; "
                  "only the first counts")
        metrics.update({f"rater.{path.stem}.votes": len(cast.votes), f"rater.{path.stem}.stale_votes": cast.stale,
                        f"rater.{path.stem}.repeated_votes": cast.repeated})
    metrics.update({**summarize_votes(votes, params.eval.bootstrap_samples, params.seed), "votes.stale": stale_votes,
                    "votes.repeated": repeated_votes})
    write_json(METRICS_DIR / "human.json", metrics)

    if not sheets:
        print(f"human: no rating sheets yet; copy {HUMAN_SHEET} to {HUMAN_RATINGS}/<rater>.csv and fill it in, "
              "or rate in the browser (python -m tools.rate --rater <name>)")
    else:
        print("human: " + ", ".join(f"{model} {metrics[f'{model}.overall']:.2f}" for model in MODELS
                                    if f"{model}.overall" in metrics) + f" overall, from {len(sheets)} rater(s)")
    for name in ("sft_vs_base", "dpo_vs_sft", "dpo_vs_base"):
        if f"votes.{name}.win_rate" in metrics:
            later, earlier = name.split("_vs_")
            print(f"human: {later} beats {earlier} in {metrics[f'votes.{name}.win_rate']:.0%} of "
                  f"{metrics[f'votes.{name}.count']} votes (95% interval {metrics[f'votes.{name}.win_rate_low']:.0%}"
                  f"-{metrics[f'votes.{name}.win_rate_high']:.0%})")


if __name__ == "__main__":
    run(main, "human")
