"""human: un-blind the filled rating sheets in eval/human/ratings/ and score each model.

evaluate writes eval/human/sheet.csv, one reply per row in shuffled order, with each reply's model
replaced by a code, and keeps the codes' meaning in eval/human/key.json. A rater fills a copy of the sheet
(an integer 1-5 in each criterion column; the comment is optional) and saves it as
eval/human/ratings/<rater>.csv. This stage checks every cell, then writes metrics/human.json: per model,
each criterion's mean, the overall mean and the number of ratings; with two or more raters, Krippendorff's
alpha (ordinal) per criterion and over all criteria.

A sheet none of whose codes is in the key was made for other replies (an earlier evaluate run): it is
skipped and counted as stale, so an experiment that regenerates replies does not fail on old ratings.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import krippendorff
import numpy as np

from stages.outputs import atomic_file, write_json
from stages.parsing import DataError, decode_utf8, read_bytes
from stages.paths import HUMAN_KEY, HUMAN_RATINGS, HUMAN_SHEET, METRICS_DIR

CRITERIA = ("helpfulness", "harmlessness", "relevance", "quality")
COLUMNS = ("code", "prompt", "reference", "response", *CRITERIA, "comment")
SCALE = ("1", "2", "3", "4", "5")
SPEAKERS = {"system": "Context", "user": "Person", "assistant": "Listener"}


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


def code_for(row: dict) -> str:
    """A code that says nothing about the model but is stable for the same reply to the same prompt."""
    text = "\0".join(str(row[key]) for key in ("set", "id", "model", "response"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def make_sheet(replies: list[dict], seed: int, instructions: str = "") -> tuple[list[dict], dict]:
    """Blind sheet rows in shuffled order, and the key (code -> set, id, model).

    `replies`: {set, id, model, prompt, reference, response} per reply; `instructions`: the system prompt
    every prompt starts with, which raters need not read again on each row."""
    rows, key = [], {}
    for reply in replies:
        code = code_for(reply)
        key[code] = {field: reply[field] for field in ("set", "id", "model")}
        rows.append({"code": code, "prompt": prompt_text(reply["prompt"], instructions), "reference": reply["reference"],
                     "response": reply["response"], **{criterion: "" for criterion in (*CRITERIA, "comment")}})
    random.Random(seed).shuffle(rows)
    return rows, key


def write_sheet(replies: list[dict], seed: int, instructions: str = "") -> None:
    rows, key = make_sheet(replies, seed, instructions)
    with atomic_file(HUMAN_SHEET) as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    write_json(HUMAN_KEY, key)


def read_sheet(raw: bytes, name: str, key: dict) -> dict[str, dict[str, int]] | None:
    """A filled sheet's ratings by code, or None when none of its codes is in the key (a stale sheet).
    Any bad cell stops with the file, row, line and column."""
    reader = csv.reader(io.StringIO(decode_utf8(raw, name).lstrip("\ufeff"), newline=""))
    header = next(reader, None)
    if header is None or [cell.strip() for cell in header] != list(COLUMNS):
        raise DataError(f"{name}:1: expected the columns {','.join(COLUMNS)}, got {','.join(header or [])!r}")
    rows, number, first_line = [], 0, reader.line_num + 1
    for cells in reader:  # a row may span lines: the prompt cell holds one line per message
        where, first_line = f"{name}: row {number + 1} (line {first_line})", reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue
        number += 1
        if len(cells) != len(COLUMNS):
            raise DataError(f"{where}: expected {len(COLUMNS)} cells, got {len(cells)}")
        rows.append((where, dict(zip(COLUMNS, (cell.strip() for cell in cells)))))
    if not any(row["code"] in key for _, row in rows):
        return None
    ratings: dict[str, dict[str, int]] = {}
    for where, row in rows:
        code = row["code"]
        if code not in key:
            raise DataError(f"{where}, column 'code': unknown code {code!r} (not in {HUMAN_KEY})")
        if code in ratings:
            raise DataError(f"{where}, column 'code': code {code!r} appears twice")
        for criterion in CRITERIA:
            if not row[criterion]:
                raise DataError(f"{where}, column {criterion!r}: missing rating")
            if row[criterion] not in SCALE:
                raise DataError(f"{where}, column {criterion!r}: {row[criterion]!r} is not an integer from 1 to 5")
        ratings[code] = {criterion: int(row[criterion]) for criterion in CRITERIA}
    missing = sorted(set(key) - set(ratings))
    if missing:
        raise DataError(f"{name}: {len(missing)} of the sheet's {len(key)} rows are missing (codes {', '.join(missing[:5])}"
                        f"{', ...' if len(missing) > 5 else ''})")
    return ratings


def ordinal_alpha(sheets: list[dict[str, dict[str, int]]], criteria: tuple[str, ...]) -> float:
    """Krippendorff's alpha (ordinal, values 1-5) between raters; units are (reply, criterion) pairs."""
    units = [(code, criterion) for code in sorted(sheets[0]) for criterion in criteria]
    data = np.array([[sheet[code][criterion] for code, criterion in units] for sheet in sheets], dtype=float)
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
    metrics = {**summarize(sheets, key), "sheets_stale": len(stale)}
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
