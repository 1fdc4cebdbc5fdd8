"""Pairwise blind votes: tools.vote shows one prompt and two models' replies as A and B (sides drawn at random),
the rater picks A, B or a tie, and each vote becomes a row of eval/human/votes/<rater>.csv. The human stage
tallies them here.

A vote counts for the models that answered: each row records the fingerprint of both stacks
(chattune.modeling.stacks.fingerprint). Once a model is retrained, its old votes are stale: counted, not tallied. A rater votes once on a prompt and pair:
a repeated vote (two tabs, a reload, a row copied by hand) is counted as repeated, and only the first is tallied.

Per pair of models: the first's win rate (a tie is half a win) with a 95% Wilson interval. Over all votes: a
Bradley-Terry score per model (the log-odds that it beats the base model; base is 0), with a standard normal
prior that keeps a model that wins every vote finite, and 95% bootstrap intervals. Where two raters voted on the same prompt and pair: how often they agree, and
Krippendorff's alpha (ordinal: first wins > tie > second wins).
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

import krippendorff
import numpy as np

from chattune.common.errors import DataError
from chattune.data.parsing import decode_utf8
from chattune.evaluation.scoring import resample
from chattune.modeling.stacks import MODELS

COLUMNS = ("time", "set", "prompt_id", "prompt", "left", "right", "choice", "left_reply", "right_reply",
           "left_stack", "right_stack")
CHOICES = ("left", "right", "tie")
PAIRS = (("sft", "base"), ("dpo", "sft"), ("dpo", "base"))  # (later, earlier): the later model's win rate
STACK_DIGITS = 16  # of the stack fingerprint kept in a vote row


@dataclass(frozen=True)
class Vote:
    rater: str
    set: str
    prompt_id: str
    left: str
    right: str
    choice: str

    def score(self, model: str) -> float:
        """1 if `model` won this vote, 0 if it lost, 0.5 for a tie."""
        if self.choice == "tie":
            return 0.5
        return float((self.left if self.choice == "left" else self.right) == model)

    @property
    def item(self) -> tuple:
        """What two raters can both vote on: a prompt and a pair of models, whatever their sides."""
        return self.set, self.prompt_id, frozenset((self.left, self.right))


def vote_rows(raw: bytes, name: str) -> list[tuple[str, dict]]:
    """A votes file's rows as (where, {column: cell as written}), blank rows skipped; `where` names the file, row
    and line. A wrong header, a row of the wrong length or a row that is not CSV stops with where it is."""
    reader = csv.reader(io.StringIO(decode_utf8(raw, name).lstrip("\ufeff"), newline=""))
    rows = []
    try:
        header = next(reader, None)
        if header is None or [cell.strip() for cell in header] != list(COLUMNS):
            raise DataError(f"{name}:1: expected the columns {','.join(COLUMNS)}, got {','.join(header or [])!r}")
        for number, cells in enumerate(reader, start=1):
            if not any(cell.strip() for cell in cells):
                continue
            where = f"{name}: row {number} (line {reader.line_num})"
            if len(cells) != len(COLUMNS):
                raise DataError(f"{where}: expected {len(COLUMNS)} cells, got {len(cells)}")
            rows.append((where, dict(zip(COLUMNS, cells))))
    except csv.Error as error:
        raise DataError(f"{name}:{reader.line_num}: cannot read this row as CSV: {error}") from None
    return rows


def row_item(row: dict) -> tuple:
    """What one vote is about: a prompt, and a pair of models as their stacks were then, whatever their sides.
    A rater votes once per item."""
    return (row["set"].strip(), row["prompt_id"].strip(),
            frozenset((row[side].strip(), row[f"{side}_stack"].strip()) for side in ("left", "right")))


@dataclass
class CastVotes:
    """A rater's votes for the current models; rows cast for other (older) models; rows repeating an item this
    rater had already voted on (two tabs, a reload, a row copied by hand), of which the first counts."""

    votes: list[Vote]
    stale: int = 0
    repeated: int = 0


def read_votes(raw: bytes, name: str, rater: str, stacks: dict[str, str]) -> CastVotes:
    """A rater's votes (CastVotes). `stacks`: each model's current fingerprint. A bad cell stops with the file,
    row and column."""
    cast, seen = CastVotes([]), set()
    for where, cells in vote_rows(raw, name):
        row = {column: cell.strip() for column, cell in cells.items()}
        for column in ("left", "right"):
            if row[column] not in MODELS:
                raise DataError(f"{where}, column {column!r}: {row[column]!r} is not one of {', '.join(MODELS)}")
        if row["left"] == row["right"]:
            raise DataError(f"{where}, column 'right': the same model as on the left")
        if row["choice"] not in CHOICES:
            raise DataError(f"{where}, column 'choice': {row['choice']!r} is not one of {', '.join(CHOICES)}")
        if any(row[f"{side}_stack"] != stacks[row[side]][:STACK_DIGITS] for side in ("left", "right")):
            cast.stale += 1
            continue
        item = row_item(row)
        if item in seen:
            cast.repeated += 1
            continue
        seen.add(item)
        cast.votes.append(Vote(rater, row["set"], row["prompt_id"], row["left"], row["right"], row["choice"]))
    return cast


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (well-behaved at 0 and n, unlike the normal one)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def win_matrix(votes: list[Vote]) -> np.ndarray:
    """wins[a, b]: how often model a beat model b (in MODELS order), a tie counting half for each."""
    index = {model: i for i, model in enumerate(MODELS)}
    wins = np.zeros((len(MODELS), len(MODELS)))
    for vote in votes:
        left, right = index[vote.left], index[vote.right]
        wins[left, right] += vote.score(vote.left)
        wins[right, left] += vote.score(vote.right)
    return wins


def bradley_terry(wins: np.ndarray, prior: float = 1.0, steps: int = 25) -> np.ndarray:
    """Log-strengths s, base at 0, maximizing sum wins[a, b] * log sigmoid(s_a - s_b) - prior / 2 * |s|^2 by
    Newton's method, for one win matrix (models x models) or a stack of them (one per bootstrap draw) at once.
    The standard normal prior keeps a model that won every vote finite. (scikit-learn's logistic regression fits
    the same model, but a thousand bootstrap fits of it take seconds; this takes milliseconds.)"""
    wins = np.asarray(wins, dtype=float)
    games = wins + np.swapaxes(wins, -1, -2)
    strength = np.zeros(wins.shape[:-1])
    eye = np.eye(wins.shape[-1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(strength[..., None, :] - strength[..., :, None]))  # p[a, b] = P(a beats b)
        gradient = (wins - games * p).sum(-1) - prior * strength
        curvature = games * p * (1 - p)
        hessian = curvature - eye * (curvature.sum(-1)[..., None] + prior)
        strength = strength - np.linalg.solve(hessian, gradient[..., None])[..., 0]
    return strength - strength[..., :1]  # base (MODELS[0]) at 0


def agreement(votes: list[Vote]) -> dict[str, float]:
    """Between raters who voted on the same prompt and pair: the share of rater pairs that agree, and
    Krippendorff's alpha. Empty when no item has two raters."""
    outcome = {}  # (item, rater) -> 1 the later model won, 2 tie, 3 the earlier won (read_votes keeps one per item)
    for vote in votes:
        later = max((vote.left, vote.right), key=MODELS.index)
        outcome[vote.item, vote.rater] = {1.0: 1, 0.5: 2, 0.0: 3}[vote.score(later)]
    by_item = defaultdict(dict)
    for (item, rater), value in outcome.items():
        by_item[item][rater] = value
    shared = {item: given for item, given in by_item.items() if len(given) >= 2}
    if not shared:
        return {}
    pairs = [a == b for given in shared.values() for a, b in combinations(given.values(), 2)]
    raters = sorted({rater for given in shared.values() for rater in given})
    data = np.array([[given.get(rater, np.nan) for given in shared.values()] for rater in raters], dtype=float)
    found = {"votes.shared_items": len(shared), "votes.agreement": float(np.mean(pairs))}
    if len(np.unique(data[~np.isnan(data)])) > 1:  # alpha is undefined when every vote is the same
        found["votes.alpha"] = float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal",
                                                        value_domain=[1, 2, 3]))
    return found


def summarize(votes: list[Vote], samples: int, seed: int) -> dict[str, float]:
    """Flat metrics: per pair its votes, wins, ties and win rate with interval; Bradley-Terry scores with
    intervals; agreement between raters."""
    metrics: dict[str, float] = {"votes.count": len(votes), "votes.raters": len({vote.rater for vote in votes})}
    for later, earlier in PAIRS:
        name = f"votes.{later}_vs_{earlier}"
        cast = [vote for vote in votes if {vote.left, vote.right} == {later, earlier}]
        metrics[f"{name}.count"] = len(cast)
        if not cast:
            continue
        wins = sum(vote.score(later) for vote in cast)
        metrics[f"{name}.ties"] = sum(vote.choice == "tie" for vote in cast)
        metrics[f"{name}.win_rate"] = wins / len(cast)
        metrics[f"{name}.win_rate_low"], metrics[f"{name}.win_rate_high"] = wilson(wins, len(cast))
    if votes:
        scores = bradley_terry(win_matrix(votes))
        draws = bradley_terry(np.stack([win_matrix([votes[i] for i in draw])
                                        for draw in resample(len(votes), samples, seed)]))
        for i, model in enumerate(MODELS[1:], start=1):
            metrics[f"bt.{model}"] = float(scores[i])
            metrics[f"bt.{model}_low"], metrics[f"bt.{model}_high"] = map(float, np.percentile(draws[:, i], [2.5, 97.5]))
    return {**metrics, **agreement(votes)}
