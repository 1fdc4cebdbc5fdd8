"""The blind human-rating round trip: sheet out, filled sheets in, un-blinded means and agreement; a sheet that
stays blind, keeps its codes, survives a spreadsheet, and takes every state the rating page saves."""
import csv
import io
import json
import random
import shutil
import subprocess

import pytest

from chattune.common.errors import DataError
from chattune.common.paths import HUMAN_KEY, HUMAN_RATINGS, HUMAN_SHEET
from chattune.human import sheet
from conftest import ROOT
from stages import human

PROMPT = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "My cat is ill."}]
MODELS = ("base", "sft", "dpo")
REPLIES = [{"set": "probe", "id": "ill-1", "model": model, "prompt": PROMPT, "reference": "Oh no, I'm sorry.",
            "response": f"reply number {number}"} for number, model in enumerate(MODELS)]
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
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    sheet.write_sheet(REPLIES)
    return tmp_path


def sheet_rows():
    with open(HUMAN_SHEET, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def fill(rater: str, scores: dict, edit=lambda rows: rows, encoding="utf-8") -> None:
    key = json.loads(HUMAN_KEY.read_text())
    rows = sheet_rows()
    for row in rows:
        row.update(zip(sheet.CRITERIA, map(str, scores[key[row["code"]]["model"]])))
    with open(HUMAN_RATINGS / f"{rater}.csv", "w", newline="", encoding=encoding) as handle:
        writer = csv.DictWriter(handle, fieldnames=sheet.COLUMNS)
        writer.writeheader()
        writer.writerows(edit(rows))


def human_metrics() -> dict:
    human.main()
    return json.loads(open("metrics/human.json").read())


def test_the_sheet_is_blind_and_the_key_unblinds_it(workdir):
    rows = sheet_rows()
    key = json.loads(HUMAN_KEY.read_text())
    text = HUMAN_SHEET.read_text()
    assert not any(model in text for model in MODELS)
    assert sorted(key[row["code"]]["model"] for row in rows) == ["base", "dpo", "sft"]
    assert all(row["prompt"] == "Context: Be kind.\nPerson: My cat is ill." for row in rows)
    assert all(row[criterion] == "" for row in rows for criterion in sheet.CRITERIA)
    assert [row["code"] for row in rows] == sorted(row["code"] for row in rows)  # a prompt's replies by code
    assert list(key) == sorted(key)  # and the key's order says nothing either
    # The standing instructions are not repeated on every row; what a system message adds to them is kept.
    rows_with_situation, _ = sheet.make_sheet(
        [dict(REPLIES[0], prompt=[{"role": "system", "content": "Be kind.\nThe cat is 15."}] + PROMPT[1:])], "Be kind.")
    assert rows_with_situation[0]["prompt"] == "Context: The cat is 15.\nPerson: My cat is ill."
    assert sheet.make_sheet(REPLIES[:1], "Be kind.")[0][0]["prompt"] == "Person: My cat is ill."


def many_replies(prompts: int) -> list[dict]:
    return [{"set": "probe", "id": f"p{i}", "model": model, "prompt": PROMPT, "reference": "r",
             "response": f"reply {i} from {model}"} for i in range(prompts) for model in MODELS]


def test_nothing_public_predicts_a_rows_model():
    """The old sheet was built model by model (base, sft, dpo per prompt) and shuffled with params.seed, which is
    public: replaying that shuffle gave the model of 60 of 60 rows. Against the new sheet the same attack, and
    guessing by a reply's place among its prompt's replies, do no better than chance (1/3)."""
    prompts = 300
    rows, key = sheet.make_sheet(many_replies(prompts))
    truth = [key[row["code"]]["model"] for row in rows]
    order = list(range(len(rows)))
    random.Random(42).shuffle(order)  # the seed in params.yaml
    replayed = sum(MODELS[built % 3] == model for built, model in zip(order, truth)) / len(rows)
    by_place = sum(MODELS[place % 3] == model for place, model in enumerate(truth)) / len(rows)
    # 900 rows: chance is 1/3 with a standard deviation of 0.016; 0.25-0.42 is more than five of them.
    assert 0.25 < replayed < 0.42 and 0.25 < by_place < 0.42
    for place in range(3):  # each place among a prompt's three replies holds each model about a third of the time
        shares = [sum(truth[3 * i + place] == model for i in range(prompts)) / prompts for model in MODELS]
        assert all(0.2 < share < 0.47 for share in shares), shares


def test_codes_are_letters_no_spreadsheet_converts():
    rows, key = sheet.make_sheet(many_replies(200))
    assert len(key) == 600 and len(set(key)) == 600
    for code in key:
        assert len(code) == 8 and set(code) <= set("BCDFGHJKLMNPQRSTVWXZ"), code  # no digits, e or vowels


def test_unchanged_replies_keep_their_codes_and_changed_ones_go_stale(workdir):
    fill("ann", RATER_A)
    first = json.loads(HUMAN_KEY.read_text())
    sheet.write_sheet(REPLIES)  # evaluate ran again with the same replies
    assert json.loads(HUMAN_KEY.read_text()) == first
    metrics = human_metrics()
    assert metrics["replies_unrated"] == 0 and metrics["rows_stale"] == 0 and metrics["sft.count"] == 1

    changed = [dict(reply, response="a new reply") if reply["model"] == "dpo" else reply for reply in REPLIES]
    sheet.write_sheet(changed)
    second = json.loads(HUMAN_KEY.read_text())
    kept = {code: entry for code, entry in first.items() if entry["model"] != "dpo"}
    assert {code: second[code] for code in kept} == kept
    new = [code for code in second if code not in first]
    assert len(new) == 1 and second[new[0]]["model"] == "dpo"
    metrics = human_metrics()
    assert metrics["raters"] == 1 and metrics["rows_stale"] == 1 and metrics["rater.ann.stale_rows"] == 1
    assert metrics["replies_unrated"] == 1 and metrics["rater.ann.unrated"] == 1  # the new reply: not rated yet
    assert metrics["base.overall"] == 2 and "dpo.count" not in metrics


def test_two_raters_give_known_means_and_alpha(workdir):
    fill("ann", RATER_A, edit=lambda rows: sorted(rows, key=lambda r: r["response"]))  # reordering is fine
    fill("bob", RATER_B, encoding="utf-8-sig")  # as Excel saves it, with a byte-order mark
    metrics = human_metrics()
    assert metrics["raters"] == 2 and metrics["sheets_stale"] == 0
    assert metrics["base.overall"] == 2 and metrics["sft.helpfulness"] == 4
    assert metrics["dpo.helpfulness"] == 4.5 and metrics["dpo.quality"] == 4
    assert metrics["dpo.overall"] == pytest.approx(33 / 8)
    assert metrics["base.count"] == metrics["dpo.count"] == 2 and metrics["dpo.helpfulness_count"] == 2
    assert metrics["alpha.overall"] == pytest.approx(ALPHA_OVERALL)
    assert metrics["alpha.helpfulness"] == pytest.approx(ALPHA_HELPFULNESS)
    assert metrics["alpha.relevance"] == pytest.approx(1.0)


def test_one_rater_has_means_but_no_alpha(workdir):
    fill("ann", RATER_A)
    metrics = human_metrics()
    assert metrics["raters"] == 1 and metrics["sft.overall"] == 4
    assert not any(name.startswith("alpha.") for name in metrics)


def blank(models, criteria=sheet.CRITERIA):
    """An edit that blanks these criteria of these models' rows: a sheet still being filled."""
    def edit(rows):
        key = json.loads(HUMAN_KEY.read_text())
        for row in rows:
            if key[row["code"]]["model"] in models:
                row.update({criterion: "" for criterion in criteria})
        return rows
    return edit


def test_a_sheet_in_progress_counts_what_is_rated(workdir):
    fill("ann", RATER_A, edit=blank(("dpo",)))
    fill("bob", RATER_B, edit=blank(("base", "sft")))
    metrics = human_metrics()
    assert metrics["raters"] == 2 and metrics["replies_unrated"] == 3
    assert metrics["base.count"] == metrics["sft.count"] == metrics["dpo.count"] == 1
    assert metrics["dpo.helpfulness"] == 5 and metrics["base.overall"] == 2
    assert not any(name.startswith("alpha.") for name in metrics)  # no reply rated by both: no agreement to measure


def test_a_reply_rated_in_part_counts_for_the_criteria_it_has(workdir):
    """What the rating page saves after two clicks on a reply: two criteria given, two blank. It used to stop
    the human stage ("missing rating"), and with it `dvc repro` for every rater."""
    fill("ann", RATER_A, edit=blank(("dpo",), ("relevance", "quality")))
    fill("bob", RATER_B)
    metrics = human_metrics()
    assert metrics["replies_partial"] == 1 and metrics["rater.ann.partial"] == 1 and metrics["replies_unrated"] == 0
    assert metrics["dpo.helpfulness_count"] == 2 and metrics["dpo.relevance_count"] == 1
    assert metrics["dpo.helpfulness"] == 4.5 and metrics["dpo.relevance"] == 4
    assert metrics["dpo.overall"] == pytest.approx((4 + 4 + 5 + 4 + 4 + 4) / 6)
    assert metrics["alpha.relevance"] == pytest.approx(1.0)  # the missing ratings are missing, not disagreements


def test_a_sheet_for_other_replies_is_skipped_and_counted(workdir):
    fill("ann", RATER_A)
    old = (HUMAN_RATINGS / "ann.csv").read_text()
    for code in json.loads(HUMAN_KEY.read_text()):
        old = old.replace(code, code[::-1])
    (HUMAN_RATINGS / "old-round.csv").write_text(old)
    metrics = human_metrics()
    assert metrics["raters"] == 1 and metrics["sheets_stale"] == 1


def test_cells_a_spreadsheet_would_run_are_written_as_text_and_read_back(workdir):
    replies = [dict(reply, response=text) for reply, text in zip(REPLIES, ("=HYPERLINK(\"x\")", "-5 points", "@me"))]
    sheet.write_sheet(replies)
    raw = HUMAN_SHEET.read_text()
    assert "'=HYPERLINK" in raw and "'-5 points" in raw and "'@me" in raw
    parsed = [row for _, row in sheet.read_rows(HUMAN_SHEET.read_bytes(), "sheet.csv")]
    assert sorted(row["response"] for row in parsed) == sorted(text for text in ("=HYPERLINK(\"x\")", "-5 points", "@me"))


def test_a_sheet_saved_back_by_a_spreadsheet_is_read(workdir):
    """BOM, CRLF line ends, every cell quoted, trailing empty lines and empty rows: how spreadsheets save."""
    fill("ann", RATER_A)
    rows = list(csv.reader(io.StringIO((HUMAN_RATINGS / "ann.csv").read_text(), newline="")))
    out = io.StringIO()
    csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(rows[:2] + [[""] * 9] + rows[2:])
    (HUMAN_RATINGS / "ann.csv").write_bytes(b"\xef\xbb\xbf" + out.getvalue().encode() + b"\r\n,,,,,,,,\r\n\r\n")
    metrics = human_metrics()
    assert metrics["raters"] == 1 and metrics["replies_unrated"] == 0 and metrics["sft.overall"] == 4


@pytest.mark.skipif(shutil.which("soffice") is None, reason="needs LibreOffice (Debian's libreoffice-calc; "
                                                            ".ci/run installs it)")
def test_a_sheet_round_trips_through_libreoffice(workdir):
    """Open the filled sheet in LibreOffice Calc with its default CSV import (what a double-click does) and save
    it as CSV again: every code and rating comes back, and a reply that looks like a formula stays text."""
    replies = [dict(reply, response=text) for reply, text in zip(REPLIES, ("=1+1", "@SUM(A1:A2)", "+33 6 12 34"))]
    sheet.write_sheet(replies)
    fill("ann", RATER_A)
    source, converted = HUMAN_RATINGS / "ann.csv", workdir / "converted"
    subprocess.run(["soffice", "--headless", f"-env:UserInstallation=file://{workdir}/lo-profile",
                    "--infilter=CSV:44,34,76,1", "--convert-to", "csv:Text - txt - csv (StarCalc):44,34,76,1",
                    "--outdir", str(converted), str(source)], check=True, capture_output=True, timeout=180)
    assert (converted / "ann.csv").read_bytes() != source.read_bytes()  # LibreOffice wrote it its own way
    (converted / "ann.csv").replace(source)
    back = {row["code"]: row for _, row in sheet.read_rows(source.read_bytes(), str(source))}
    assert set(back) == set(json.loads(HUMAN_KEY.read_text()))
    assert sorted(row["response"] for row in back.values()) == sorted(("=1+1", "@SUM(A1:A2)", "+33 6 12 34"))
    metrics = human_metrics()
    assert metrics["raters"] == 1 and metrics["base.overall"] == 2 and metrics["dpo.overall"] == 4


def set_cell(column, value, row=0):
    def edit(rows):
        rows[row][column] = value
        return rows
    return edit


BAD_SHEETS = [  # (case, edit of rater A's rows, expected message after "<file>: ")
    ("out of range", set_cell("quality", "6", row=1), "row 2 (line 4), column 'quality': '6' is not an integer from 1 to 5"),
    ("zero", set_cell("helpfulness", "0"), "row 1 (line 2), column 'helpfulness': '0' is not an integer from 1 to 5"),
    ("not an integer", set_cell("relevance", "3.5"), "row 1 (line 2), column 'relevance': '3.5' is not an integer from 1 to 5"),
    ("repeated code", lambda rows: rows + rows[:1], "row 4 (line 8), column 'code': code"),
    ("comment too long", set_cell("comment", "x" * 2001), "row 1 (line 2), column 'comment': 2001 characters; at most 2000"),
    ("cell over the csv limit", set_cell("comment", "x" * 140_000), "cannot read this row as CSV: field larger than field limit"),
]


@pytest.mark.parametrize("case, edit, message", BAD_SHEETS, ids=[case for case, _, _ in BAD_SHEETS])
def test_bad_sheets_are_rejected_with_file_row_and_column(workdir, case, edit, message):
    fill("ann", RATER_A, edit=edit)
    with pytest.raises(DataError) as error:
        human.main()
    assert f"{HUMAN_RATINGS}/ann.csv" in str(error.value) and message in str(error.value)
    assert not (workdir / "metrics/human.json").exists()


def test_a_wrong_header_encoding_or_row_shape_is_named(workdir):
    fill("ann", RATER_A)
    path = HUMAN_RATINGS / "ann.csv"
    path.write_text(path.read_text().replace("relevance", "relevancy", 1))
    with pytest.raises(DataError, match="ann.csv:1: expected the columns code,prompt"):
        human.main()
    fill("ann", RATER_A)
    path.write_bytes(path.read_bytes().replace(b"reply number", b"reply \xff number", 1))
    with pytest.raises(DataError, match=r"ann.csv:\d+: not valid UTF-8 \(byte 0xff\)"):
        human.main()
    fill("ann", RATER_A)
    path.write_text(path.read_text() + "BCDFGHJK,a reply cut short\n")
    with pytest.raises(DataError, match=r"ann.csv: row 4 \(line 8\): expected 9 cells, got 2"):
        human.main()


@pytest.mark.parametrize("text", ["=1+1", "'=1", "''=1", "'tis", "'", "-3 degrees", "plain"])
def test_a_text_cell_reads_back_as_written(text):
    """Formula starts get an apostrophe, and so does an apostrophe that reading would otherwise strip."""
    cell = sheet.as_text_cell(text)
    assert sheet.from_text_cell(cell) == text and not cell.startswith(sheet.FORMULA_STARTS)
