"""The blind human-rating round trip: sheet out, filled sheets in, un-blinded means and agreement."""
import csv
import json

import pytest

from stages import human, scoring
from stages.parsing import DataError
from stages.paths import HUMAN_KEY, HUMAN_RATINGS, HUMAN_SHEET

PROMPT = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "My cat is ill."}]
REPLIES = [{"set": "probe", "id": "ill-1", "model": model, "prompt": PROMPT, "reference": "Oh no, I'm sorry.",
            "response": f"reply number {number}"} for number, model in enumerate(("base", "sft", "dpo"))]
# Rater A gives base 2, sft 4 and dpo 4 on every criterion; rater B the same except dpo's helpfulness, 5.
RATER_A = {"base": [2, 2, 2, 2], "sft": [4, 4, 4, 4], "dpo": [4, 4, 4, 4]}
RATER_B = {"base": [2, 2, 2, 2], "sft": [4, 4, 4, 4], "dpo": [5, 4, 4, 4]}
# Krippendorff's alpha (ordinal), by hand. Over all 12 (reply, criterion) units the values are 2 (x8),
# 4 (x15) and 5 (x1), n = 24; the one disagreement (4, 5) gives o_45 = o_54 = 1. Ordinal distances
# d(c, k) = (sum of n_g for g from c to k - (n_c + n_k) / 2)^2: d(2,4) = 11.5^2, d(4,5) = 8^2, d(2,5) = 19.5^2.
# alpha = 1 - (n - 1) * sum(o * d) / sum(n_c * n_k * d) = 1 - 23 * 128 / 39744 = 25/27.
# Helpfulness alone (units (2,2), (4,4), (4,5); n = 6): 1 - 5 * 8 / 180 = 7/9. Other criteria agree: 1.
ALPHA_OVERALL, ALPHA_HELPFULNESS = 25 / 27, 7 / 9


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / HUMAN_RATINGS).mkdir(parents=True)
    scoring.write_sheet(REPLIES, seed=3)
    return tmp_path


def sheet_rows():
    with open(HUMAN_SHEET, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def fill(rater: str, scores: dict, edit=lambda rows: rows, encoding="utf-8") -> None:
    key = json.loads(HUMAN_KEY.read_text())
    rows = sheet_rows()
    for row in rows:
        row.update(zip(scoring.CRITERIA, map(str, scores[key[row["code"]]["model"]])))
    with open(HUMAN_RATINGS / f"{rater}.csv", "w", newline="", encoding=encoding) as handle:
        writer = csv.DictWriter(handle, fieldnames=scoring.COLUMNS)
        writer.writeheader()
        writer.writerows(edit(rows))


def test_the_sheet_is_blind_and_the_key_unblinds_it(workdir):
    rows = sheet_rows()
    key = json.loads(HUMAN_KEY.read_text())
    text = HUMAN_SHEET.read_text()
    assert not any(model in text for model in ("base", "sft", "dpo"))
    assert sorted(key[row["code"]]["model"] for row in rows) == ["base", "dpo", "sft"]
    assert all(row["prompt"] == "Context: Be kind.\nPerson: My cat is ill." for row in rows)
    assert all(row[criterion] == "" for row in rows for criterion in scoring.CRITERIA)
    # The standing instructions are not repeated on every row; what a system message adds to them is kept.
    rows_with_situation, _ = scoring.make_sheet(
        [dict(REPLIES[0], prompt=[{"role": "system", "content": "Be kind.\nThe cat is 15."}] + PROMPT[1:])], 0, "Be kind.")
    assert rows_with_situation[0]["prompt"] == "Context: The cat is 15.\nPerson: My cat is ill."
    assert scoring.make_sheet(REPLIES[:1], 0, "Be kind.")[0][0]["prompt"] == "Person: My cat is ill."
    # Shuffled with the seed: the same seed gives the same order of replies, another seed may not.
    def order(seed):
        sheet, key = scoring.make_sheet(REPLIES, seed)
        return [key[row["code"]]["model"] for row in sheet]
    assert order(3) == [key[row["code"]]["model"] for row in rows]
    assert len({tuple(order(seed)) for seed in range(10)}) > 1


def test_codes_are_random_and_only_the_key_unblinds_them():
    """Codes derived from what raters can see (the reply, its prompt id, the model) could be recomputed by
    anyone with the repository; random ones cannot. The same replies get new codes on every run."""
    first, key = scoring.make_sheet(REPLIES, seed=3)
    again, _ = scoring.make_sheet(REPLIES, seed=3)
    assert not {row["code"] for row in first} & {row["code"] for row in again}
    assert [row["response"] for row in first] == [row["response"] for row in again]
    assert sorted(key) == sorted(row["code"] for row in first) and len(key) == 3
    for row in first:
        assert REPLIES[[r["model"] for r in REPLIES].index(key[row["code"]]["model"])]["response"] == row["response"]


def test_two_raters_give_known_means_and_alpha(workdir):
    fill("ann", RATER_A, edit=lambda rows: sorted(rows, key=lambda r: r["code"]))  # reordering is fine
    fill("bob", RATER_B, encoding="utf-8-sig")  # as Excel saves it, with a byte-order mark
    human.main()
    metrics = json.loads(open("metrics/human.json").read())
    assert metrics["raters"] == 2 and metrics["sheets_stale"] == 0
    assert metrics["base.overall"] == 2 and metrics["sft.helpfulness"] == 4
    assert metrics["dpo.helpfulness"] == 4.5 and metrics["dpo.quality"] == 4
    assert metrics["dpo.overall"] == pytest.approx(33 / 8)
    assert metrics["base.count"] == metrics["dpo.count"] == 2
    assert metrics["alpha.overall"] == pytest.approx(ALPHA_OVERALL)
    assert metrics["alpha.helpfulness"] == pytest.approx(ALPHA_HELPFULNESS)
    assert metrics["alpha.relevance"] == pytest.approx(1.0)


def test_one_rater_has_means_but_no_alpha(workdir):
    fill("ann", RATER_A)
    human.main()
    metrics = json.loads(open("metrics/human.json").read())
    assert metrics["raters"] == 1 and metrics["sft.overall"] == 4
    assert not any(name.startswith("alpha.") for name in metrics)


def unrate(*models):
    """An edit that blanks the ratings of these models' rows: a sheet still being filled."""
    def edit(rows):
        key = json.loads(HUMAN_KEY.read_text())
        for row in rows:
            if key[row["code"]]["model"] in models:
                row.update({criterion: "" for criterion in scoring.CRITERIA})
        return rows
    return edit


def test_a_sheet_in_progress_counts_what_is_rated(workdir):
    fill("ann", RATER_A, edit=unrate("dpo"))
    fill("bob", RATER_B, edit=unrate("base", "sft"))
    human.main()
    metrics = json.loads(open("metrics/human.json").read())
    assert metrics["raters"] == 2 and metrics["replies_unrated"] == 3
    assert metrics["base.count"] == metrics["sft.count"] == metrics["dpo.count"] == 1
    assert metrics["dpo.helpfulness"] == 5 and metrics["base.overall"] == 2
    assert not any(name.startswith("alpha.") for name in metrics)  # no reply rated by both: no agreement to measure


def test_a_sheet_for_other_replies_is_skipped_and_counted(workdir):
    fill("ann", RATER_A)
    old = (HUMAN_RATINGS / "ann.csv").read_text()
    for code in json.loads(HUMAN_KEY.read_text()):
        old = old.replace(code, code[::-1])
    (HUMAN_RATINGS / "old-round.csv").write_text(old)
    human.main()
    metrics = json.loads(open("metrics/human.json").read())
    assert metrics["raters"] == 1 and metrics["sheets_stale"] == 1


def set_cell(column, value, row=0):
    def edit(rows):
        rows[row][column] = value
        return rows
    return edit


BAD_SHEETS = [  # (case, edit of rater A's rows, expected message after "<file>: ")
    ("out of range", set_cell("quality", "6", row=1), "row 2 (line 4), column 'quality': '6' is not an integer from 1 to 5"),
    ("zero", set_cell("helpfulness", "0"), "row 1 (line 2), column 'helpfulness': '0' is not an integer from 1 to 5"),
    ("not an integer", set_cell("relevance", "3.5"), "row 1 (line 2), column 'relevance': '3.5' is not an integer from 1 to 5"),
    ("missing cell", set_cell("harmlessness", " "), "row 1 (line 2), column 'harmlessness': missing rating"),
    ("unknown code", set_cell("code", "ffffffff", row=2), "row 3 (line 6), column 'code': unknown code 'ffffffff'"),
    ("repeated code", lambda rows: rows + rows[:1], "row 4 (line 8), column 'code': code"),
    ("missing rows", lambda rows: rows[:2], "1 of the sheet's 3 rows are missing"),
]


@pytest.mark.parametrize("case, edit, message", BAD_SHEETS, ids=[case for case, _, _ in BAD_SHEETS])
def test_bad_sheets_are_rejected_with_file_row_and_column(workdir, case, edit, message):
    fill("ann", RATER_A, edit=edit)
    with pytest.raises(DataError) as error:
        human.main()
    assert f"{HUMAN_RATINGS}/ann.csv: {message}" in str(error.value)
    assert not (workdir / "metrics/human.json").exists()


def test_a_wrong_header_or_encoding_is_named(workdir):
    fill("ann", RATER_A)
    path = HUMAN_RATINGS / "ann.csv"
    path.write_text(path.read_text().replace("relevance", "relevancy", 1))
    with pytest.raises(DataError, match="ann.csv:1: expected the columns code,prompt"):
        human.main()
    fill("ann", RATER_A)
    path.write_bytes(path.read_bytes().replace(b"reply number", b"reply \xff number", 1))
    with pytest.raises(DataError, match=r"ann.csv:\d+: not valid UTF-8 \(byte 0xff\)"):
        human.main()
