"""Pairwise votes: the file format, win rates with Wilson intervals, Bradley-Terry scores, agreement between raters,
and votes for retrained models counted as stale."""
import csv
import io
import json

import numpy as np
import pytest

from chattune.common.errors import DataError
from chattune.common.paths import HUMAN_KEY, HUMAN_RATINGS, HUMAN_VOTES
from chattune.human import votes
from chattune.human.votes import Vote, agreement, bradley_terry, read_votes, summarize, wilson, win_matrix
from conftest import ROOT
from stages import human

STACKS = {"base": "a" * 64, "sft": "b" * 64, "dpo": "c" * 64}


def vote_file(rows: list[tuple], stacks=STACKS) -> bytes:
    """rows: (prompt id, left, right, choice)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=votes.COLUMNS)
    writer.writeheader()
    for prompt_id, left, right, choice in rows:
        writer.writerow({"time": "2026-12-01T10:00:00+00:00", "set": "probe", "prompt_id": prompt_id, "prompt": "Hi",
                         "left": left, "right": right, "choice": choice, "left_reply": "x", "right_reply": "y",
                         "left_stack": stacks[left][:16], "right_stack": stacks[right][:16]})
    return out.getvalue().encode()


def test_wilson_intervals_match_known_values():
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # never 0 wide, unlike the normal interval
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)


def test_a_tie_is_half_a_win_and_sides_do_not_matter():
    cast = [Vote("ann", "probe", "p1", "sft", "base", "left"), Vote("ann", "probe", "p2", "base", "sft", "left"),
            Vote("ann", "probe", "p3", "base", "sft", "tie")]
    assert [vote.score("sft") for vote in cast] == [1.0, 0.0, 0.5]
    metrics = summarize(cast, samples=50, seed=0)
    assert metrics["votes.sft_vs_base.count"] == 3 and metrics["votes.sft_vs_base.win_rate"] == pytest.approx(0.5)
    assert metrics["votes.sft_vs_base.ties"] == 1 and metrics["votes.dpo_vs_sft.count"] == 0


def test_bradley_terry_orders_the_models_by_their_wins():
    cast = ([Vote("ann", "probe", f"a{i}", "dpo", "sft", "left" if i < 8 else "right") for i in range(10)]
            + [Vote("ann", "probe", f"b{i}", "base", "sft", "right" if i < 8 else "left") for i in range(10)])
    scores = dict(zip(("base", "sft", "dpo"), bradley_terry(win_matrix(cast))))
    assert scores["base"] == 0 and 0 < scores["sft"] < scores["dpo"]
    ties = [Vote("ann", "probe", f"t{i}", "dpo", "base", "tie") for i in range(6)]
    assert bradley_terry(win_matrix(ties)) == pytest.approx([0, 0, 0], abs=1e-9)
    # sft won 4 of 4 against base: by symmetry s_sft = -s_base = d / 2, and the gradient for s_sft,
    # 4 * sigmoid(-d) - d / 2, is 0 at the optimum. The prior keeps d finite.
    d = bradley_terry(np.array([[0, 0, 0], [4, 0, 0], [0, 0, 0]]))[1]
    assert 4 / (1 + np.exp(d)) == pytest.approx(d / 2, abs=1e-9) and 1 < d < 2
    # A stack of win matrices (the bootstrap) gives each one's own fit.
    stacked = bradley_terry(np.stack([win_matrix(cast), win_matrix(ties)]))
    assert stacked[0] == pytest.approx(bradley_terry(win_matrix(cast))) and stacked[1] == pytest.approx([0, 0, 0])
    metrics = summarize(cast, samples=200, seed=1)
    assert metrics["bt.dpo_low"] < metrics["bt.dpo"] < metrics["bt.dpo_high"]
    assert summarize(cast, samples=200, seed=1) == metrics  # seeded


def test_agreement_between_raters_on_the_same_prompt_and_pair():
    cast = [Vote("ann", "probe", "p1", "sft", "base", "left"), Vote("bob", "probe", "p1", "base", "sft", "right"),
            Vote("ann", "probe", "p2", "dpo", "sft", "left"), Vote("bob", "probe", "p2", "dpo", "sft", "tie"),
            Vote("ann", "probe", "p3", "dpo", "sft", "left")]  # p3: one rater only, not shared
    found = agreement(cast)
    # p1: both say sft won (sides swapped); p2: dpo won against a tie
    assert found["votes.shared_items"] == 2 and found["votes.agreement"] == 0.5
    assert -1 <= found["votes.alpha"] < 1
    assert agreement(cast[:1] + cast[4:]) == {}


def test_votes_for_retrained_models_are_stale():
    raw = vote_file([("p1", "sft", "base", "left"), ("p2", "dpo", "sft", "right")])
    cast = read_votes(raw, "ann.csv", "ann", STACKS)
    assert len(cast.votes) == 2 and cast.stale == 0
    cast = read_votes(raw, "ann.csv", "ann", {**STACKS, "dpo": "d" * 64})  # dpo retrained since
    assert [(vote.left, vote.right) for vote in cast.votes] == [("sft", "base")] and cast.stale == 1


def test_a_repeated_vote_on_a_prompt_and_pair_counts_once_and_is_reported():
    """Three hand-copied rows of one vote, and the same pair again with its sides swapped: one vote counts."""
    raw = vote_file([("p1", "sft", "base", "left")] * 3 + [("p1", "base", "sft", "left"), ("p2", "sft", "base", "tie")])
    cast = read_votes(raw, "ann.csv", "ann", STACKS)
    assert [(vote.prompt_id, vote.choice) for vote in cast.votes] == [("p1", "left"), ("p2", "tie")]
    assert cast.repeated == 3
    assert summarize(cast.votes, 50, 0)["votes.sft_vs_base.win_rate"] == 0.75


@pytest.mark.parametrize("cells, message", [
    ({"left": "gpt"}, "row 1 (line 2), column 'left': 'gpt' is not one of base, sft, dpo"),
    ({"right": "sft"}, "row 1 (line 2), column 'right': the same model as on the left"),
    ({"choice": "A"}, "row 1 (line 2), column 'choice': 'A' is not one of left, right, tie"),
])
def test_bad_vote_rows_are_named(cells, message):
    rows = list(csv.DictReader(io.StringIO(vote_file([("p1", "sft", "base", "left")]).decode())))
    rows[0].update(cells)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=votes.COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    with pytest.raises(DataError, match=f"ann.csv: {message}".replace("(", r"\(").replace(")", r"\)")):
        read_votes(out.getvalue().encode(), "ann.csv", "ann", STACKS)


def test_the_human_stage_reports_votes_per_pair_and_rater(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    HUMAN_RATINGS.mkdir(parents=True)
    HUMAN_VOTES.mkdir(parents=True)
    HUMAN_KEY.write_text("{}")
    monkeypatch.setattr(human, "fingerprint", STACKS.__getitem__)
    (HUMAN_VOTES / "ann.csv").write_bytes(vote_file([("p1", "dpo", "sft", "left"), ("p2", "sft", "dpo", "right"),
                                                     ("p3", "sft", "base", "tie")]))
    (HUMAN_VOTES / "bob.csv").write_bytes(vote_file([("p1", "sft", "dpo", "right")]) +
                                          vote_file([("p9", "dpo", "base", "left")], {**STACKS, "dpo": "e" * 64})
                                          .split(b"\n", 1)[1])
    (HUMAN_VOTES / "bob.csv").write_bytes((HUMAN_VOTES / "bob.csv").read_bytes()
                                          + vote_file([("p1", "dpo", "sft", "right")]).split(b"\n", 1)[1])
    human.main()
    metrics = json.loads((tmp_path / "metrics/human.json").read_text())
    assert metrics["votes.count"] == 4 and metrics["votes.raters"] == 2 and metrics["votes.stale"] == 1
    assert metrics["votes.repeated"] == 1 and metrics["rater.bob.repeated_votes"] == 1
    assert metrics["rater.bob.votes"] == 1 and metrics["rater.bob.stale_votes"] == 1
    assert metrics["votes.dpo_vs_sft.count"] == 3 and metrics["votes.dpo_vs_sft.win_rate"] == 1.0
    assert metrics["votes.dpo_vs_sft.win_rate_low"] == pytest.approx(wilson(3, 3)[0])
    assert metrics["votes.sft_vs_base.win_rate"] == 0.5 and metrics["votes.dpo_vs_base.count"] == 0
    assert metrics["votes.agreement"] == 1.0 and metrics["votes.shared_items"] == 1
    assert metrics["bt.dpo"] > metrics["bt.sft"]
