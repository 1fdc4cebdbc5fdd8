"""The rating page's server: the blind sheet's rows grouped by prompt, this rater's saved scores filled in, and
every change written at once under the file's lock (tools.rate starts it; chattune.pages.server guards it).
"""
from __future__ import annotations

from pathlib import Path

from flask import jsonify, render_template

from chattune.common.errors import DataError
from chattune.common.outputs import FileBusy, atomic_file, locked
from chattune.common.paths import HUMAN_RATINGS, HUMAN_SHEET
from chattune.data.parsing import read_bytes
from chattune.human.sheet import COMMENT_LIMIT, CRITERIA, SCALE, read_rows, write_rows
from chattune.pages.server import json_body, local_app, refusal

FIELDS = (*CRITERIA, "comment")
MAX_BODY = 16 * 1024  # one change: a code, a field and at most a comment


class SheetProblem(Exception):
    """Why there is nothing to rate: shown as the page, not as a traceback."""


def load(rater: str) -> tuple[list[dict], list[dict], Path]:
    """The sheet's rows with this rater's saved ratings filled in, the saved rows of older replies (kept as
    they are), and where they are saved."""
    if not HUMAN_SHEET.exists():
        raise SheetProblem(f"There is no sheet to rate: {HUMAN_SHEET} is missing. Run `dvc repro evaluate` "
                           "(or `dvc pull`) first.")
    saved_path = HUMAN_RATINGS / f"{rater}.csv"
    try:
        rows = [row for _, row in read_rows(read_bytes(HUMAN_SHEET), str(HUMAN_SHEET))]
        saved = ({row["code"]: row for _, row in read_rows(read_bytes(saved_path), str(saved_path))}
                 if saved_path.exists() else {})
    except DataError as error:
        raise SheetProblem(f"{error}. Fix the file or move it away (git keeps it).") from None
    codes = {row["code"] for row in rows}
    if saved and not set(saved) & codes:
        raise SheetProblem(f"{saved_path} holds ratings of older replies: none of its codes is in the current "
                           f"{HUMAN_SHEET}. Move it away (git keeps it) to rate the current sheet, or rate "
                           "under another name.")
    for row in rows:
        row.update({field: (saved.get(row["code"]) or {}).get(field, "") for field in FIELDS})
    return rows, [row for code, row in saved.items() if code not in codes], saved_path


def prompts(rows: list[dict]) -> list[dict]:
    """Rows grouped by prompt, in the sheet's order: each prompt with its replies."""
    grouped: dict[str, dict] = {}
    for row in rows:
        group = grouped.setdefault(row["prompt"], {"prompt": row["prompt"], "replies": []})
        group["replies"].append({"code": row["code"], "response": row["response"],
                                 "scores": {criterion: row[criterion] for criterion in CRITERIA},
                                 "comment": row["comment"]})
    return list(grouped.values())


def bad_change(change: dict) -> str | None:
    field, value = change.get("field"), change.get("value")
    if field not in FIELDS or not isinstance(value, str):
        return f"a change names a field ({', '.join(FIELDS)}) and a string value, not {field!r}: {value!r}"
    if field == "comment" and len(value) > COMMENT_LIMIT:
        return f"a comment has at most {COMMENT_LIMIT} characters, not {len(value)}"
    if field != "comment" and value.strip() not in (*SCALE, ""):
        return f"{field} is an integer from 1 to 5 (or blank), not {value!r}"
    return None


def create_app(rater: str, port: int):
    app = local_app(__name__, port, MAX_BODY)

    @app.get("/")
    def index():
        try:
            load(rater)
        except SheetProblem as problem:
            return render_template("problem.html", title="Nothing to rate yet", message=str(problem)), 409
        return render_template("rate.html", rater=rater, comment_limit=COMMENT_LIMIT)

    @app.get("/api/sheet")
    def sheet():
        try:
            rows, _, _ = load(rater)
        except SheetProblem as problem:
            return refusal(409, str(problem))
        return jsonify({"rater": rater, "criteria": list(CRITERIA), "prompts": prompts(rows)})

    @app.post("/api/rate")
    def rate():
        try:
            change = json_body()
        except ValueError as error:
            return refusal(400, str(error))
        problem = bad_change(change)
        if problem:
            return refusal(400, problem)
        try:
            with locked(HUMAN_RATINGS / f"{rater}.csv"):
                try:
                    rows, older, path = load(rater)
                except SheetProblem as error:
                    return refusal(409, str(error))
                row = next((row for row in rows if row["code"] == change.get("code")), None)
                if row is None:
                    return refusal(400, f"unknown code {str(change.get('code'))[:40]!r}")
                row[change["field"]] = change["value"].strip()
                with atomic_file(path) as handle:
                    write_rows(handle, rows + older)
                rated = sum(all(r[criterion] for criterion in CRITERIA) for r in rows)
        except FileBusy as busy:
            return refusal(503, f"{busy}: nothing was saved")
        return jsonify({"saved": str(path), "rated": rated, "replies": len(rows)})

    return app
