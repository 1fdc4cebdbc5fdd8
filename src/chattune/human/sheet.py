"""The blind rating sheet: evaluate writes it, raters fill copies (in a spreadsheet, or in the browser through
tools.rate), and the human stage reads the copies back.

- Blind. Each reply's model is replaced by a random code, and only eval/human/key.json maps codes back.
  Nothing else a rater can see predicts the model: codes are drawn from the operating system's randomness
  (not from params.seed, which is public), a prompt's replies are ordered by their codes, and the key is
  written sorted by code. (eval/generations.jsonl holds every reply with its model: give raters the sheet or
  the rating page, not a checkout with `dvc pull`.)
- Stable. A reply identical to one in the previous key (same prompt set, id, model and text) keeps its code,
  so rerunning evaluate with unchanged replies leaves every filled sheet valid; only changed replies get new
  codes, and rows of the old codes in a filled sheet are counted as stale, not refused.
- Spreadsheet-proof. Codes are eight capital consonants: never a number, a date, a boolean or a word to a
  spreadsheet. A text cell that a spreadsheet would run as a formula (starting with =, +, -, @, tab or CR) is
  written with a leading apostrophe, which spreadsheets read as "this is text"; reading strips it again. The
  reader takes a sheet as spreadsheets save it back: a byte-order mark, CRLF line ends, quoted cells, trailing
  empty lines, rows in any order.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from chattune.common.errors import DataError
from chattune.common.outputs import json_text, write_together
from chattune.common.paths import HUMAN_KEY, HUMAN_SHEET
from chattune.data.parsing import decode_utf8, read_bytes
from chattune.modeling.stacks import MODELS

CRITERIA = ("helpfulness", "harmlessness", "relevance", "quality")
COLUMNS = ("code", "prompt", "reference", "response", *CRITERIA, "comment")
TEXT_COLUMNS = ("prompt", "reference", "response", "comment")
SCALE = ("1", "2", "3", "4", "5")
COMMENT_LIMIT = 2000  # characters; the rating page stops typing there
SPEAKERS = {"system": "Context", "user": "Person", "assistant": "Listener"}
CODE_LETTERS = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels: no word, TRUE, NAN or INF can come out
CODE_LENGTH = 8
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def prompt_text(prompt, instructions: str = "") -> str:
    """A prompt as a rater reads it: one line per message, or the plain text of the seed format. The
    model's standing instructions (the SFT system prompt) are left out; what the system message adds to
    them, such as the situation, is kept."""
    if isinstance(prompt, str):
        return prompt.strip()
    lines = []
    for message in prompt:
        content = message["content"]
        if message["role"] == "system":
            content = content.removeprefix(instructions).strip()
        if content:
            lines.append(f"{SPEAKERS[message['role']]}: {content}")
    return "\n".join(lines)


def as_text_cell(text: str) -> str:
    """`text` as a cell no spreadsheet will evaluate: an apostrophe before a formula's start, and before an
    apostrophe that one would otherwise be taken for."""
    return "'" + text if text.startswith(FORMULA_STARTS) or text.startswith("'") and from_text_cell(text) != text \
        else text


def from_text_cell(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:].startswith((*FORMULA_STARTS, "'")) else cell


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_code(taken) -> str:
    while (code := "".join(secrets.choice(CODE_LETTERS) for _ in range(CODE_LENGTH))) in taken:
        pass
    return code


def make_sheet(replies: list[dict], instructions: str = "", previous_key: dict | None = None) -> tuple[list[dict], dict]:
    """Blind sheet rows and the key (code -> set, id, model, sha256 of the response).

    `replies`: {set, id, model, prompt, reference, response} per reply, grouped by prompt; `instructions`: the
    system prompt every prompt starts with, which raters need not read again on each row; `previous_key`: the
    last run's key, whose codes identical replies keep."""
    reused = {(entry["set"], entry["id"], entry["model"], entry["response_sha256"]): code
              for code, entry in (previous_key or {}).items()}
    key, groups = {}, {}
    for reply in replies:
        entry = {"set": reply["set"], "id": reply["id"], "model": reply["model"],
                 "response_sha256": digest(reply["response"])}
        # A new reply never takes an old code: a stale rating of that code would be counted for it.
        code = reused.get(tuple(entry.values())) or new_code(set(key) | set(previous_key or {}))
        key[code] = entry
        row = {"code": code, "prompt": prompt_text(reply["prompt"], instructions), "reference": reply["reference"],
               "response": reply["response"], **{column: "" for column in (*CRITERIA, "comment")}}
        groups.setdefault((reply["set"], reply["id"]), []).append(row)
    # A prompt's replies in the order of their random codes: their places say nothing about their models.
    rows = [row for group in groups.values() for row in sorted(group, key=lambda row: row["code"])]
    return rows, key


KEY_FIELDS = ("set", "id", "model", "response_sha256")


def parse_key(raw: bytes, name: str) -> dict:
    """The key: code -> {set, id, model, response_sha256}. One that is not (a hand edit, a merge gone wrong)
    stops with the file and the code."""
    restore = (f"Restore it (`dvc checkout {name}` or `dvc pull`): it alone says which model wrote each coded reply "
               "of the filled sheets")
    try:
        key = json.loads(decode_utf8(raw, name).lstrip("\ufeff"))
    except (ValueError, RecursionError) as error:
        raise DataError(f"{name}: not a rating key: {error}. {restore}") from None
    if not isinstance(key, dict):
        raise DataError(f"{name}: expected a JSON object of code -> {{{', '.join(KEY_FIELDS)}}}, "
                        f"got {type(key).__name__}")
    for code, entry in key.items():
        if not (isinstance(entry, dict) and sorted(entry) == sorted(KEY_FIELDS)
                and all(isinstance(value, str) for value in entry.values())):
            raise DataError(f"{name}: code {code!r}: expected the text fields {', '.join(KEY_FIELDS)}. {restore}")
        if entry["model"] not in MODELS:
            raise DataError(f"{name}: code {code!r}: model {entry['model']!r} is not one of {', '.join(MODELS)}. "
                            f"{restore}")
    return key


def read_key() -> dict | None:
    """The key of the last evaluate run (DVC keeps it between runs: persist), or None where there is none. One that
    does not read stops evaluate (DataError): drawing new codes would leave every filled sheet stale."""
    if not HUMAN_KEY.exists():
        return None
    try:
        return parse_key(read_bytes(HUMAN_KEY), str(HUMAN_KEY))
    except DataError as error:
        raise DataError(f"{error}, or delete it to draw new codes (every filled sheet then counts as stale)") from None


def write_rows(handle, rows: list[dict]) -> None:
    writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({**row, **{column: as_text_cell(row[column]) for column in TEXT_COLUMNS}} for row in rows)


def sheet_texts(replies: list[dict], instructions: str = "", previous_key: dict | None = None) -> dict[Path, str]:
    """eval/human/sheet.csv and its key as texts, keeping the codes of unchanged replies in `previous_key`
    (read_key's; evaluate writes them together with its other outputs)."""
    rows, key = make_sheet(replies, instructions, previous_key)
    sheet = io.StringIO(newline="")
    write_rows(sheet, rows)
    return {HUMAN_SHEET: sheet.getvalue(), HUMAN_KEY: json_text(key)}


def write_sheet(replies: list[dict], instructions: str = "") -> None:
    write_together(sheet_texts(replies, instructions, read_key()))


def read_rows(raw: bytes, name: str) -> list[tuple[str, dict]]:
    """A sheet's rows as (where, {column: cell}), text cells as written before escaping. Checks the header and
    each row's shape; `where` names file, row and line for messages."""
    text = decode_utf8(raw, name).lstrip("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    try:
        header = next(reader, None)
        if header is None or [cell.strip() for cell in header] != list(COLUMNS):
            raise DataError(f"{name}:1: expected the columns {','.join(COLUMNS)}, got {','.join(header or [])!r}")
        first_line = reader.line_num + 1
        for cells in reader:  # a row may span lines: the prompt cell holds one line per message
            where, first_line = f"{name}: row {len(rows) + 1} (line {first_line})", reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(COLUMNS):
                raise DataError(f"{where}: expected {len(COLUMNS)} cells, got {len(cells)}")
            row = dict(zip(COLUMNS, (cell.strip() for cell in cells)))
            rows.append((where, {**row, **{column: from_text_cell(row[column]) for column in TEXT_COLUMNS}}))
    except csv.Error as error:  # e.g. a cell over the csv module's limit of 131,072 characters, or a NUL byte
        raise DataError(f"{name}:{reader.line_num}: cannot read this row as CSV: {error}") from None
    return rows


@dataclass
class FilledSheet:
    """What one rater's file holds for the current key."""

    scores: dict[str, dict[str, int]] = field(default_factory=dict)  # code -> the criteria rated so far
    current: int = 0  # rows whose code is in the key
    stale: int = 0  # rows whose code is not: replies an earlier evaluate run wrote

    @property
    def partial(self) -> int:
        return sum(0 < len(given) < len(CRITERIA) for given in self.scores.values())

    def unrated(self, key: dict) -> int:
        return len(key) - len(self.scores)


def read_sheet(raw: bytes, name: str, key: dict) -> FilledSheet:
    """A filled sheet's ratings by code. A row may be rated in full, in part (the rating page saves every
    criterion as it is clicked) or not yet; rows of codes not in the key are counted as stale, codes missing
    from the file are not rated yet. A bad cell stops with the file, row, line and column."""
    sheet, seen = FilledSheet(), set()
    for where, row in read_rows(raw, name):
        code = row["code"]
        if code in seen:
            raise DataError(f"{where}, column 'code': code {code!r} appears twice")
        seen.add(code)
        if len(row["comment"]) > COMMENT_LIMIT:
            raise DataError(f"{where}, column 'comment': {len(row['comment'])} characters; at most {COMMENT_LIMIT}")
        given = {}
        for criterion in CRITERIA:
            if row[criterion] and row[criterion] not in SCALE:
                raise DataError(f"{where}, column {criterion!r}: {row[criterion]!r} is not an integer from 1 to 5")
            if row[criterion]:
                given[criterion] = int(row[criterion])
        if code not in key:
            sheet.stale += 1
            continue
        sheet.current += 1
        if given:
            sheet.scores[code] = given
    return sheet
