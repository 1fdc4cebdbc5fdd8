"""Blind rating in the browser: one prompt at a time, every model's reply to it under its code only, four
criteria from 1 to 5 and a comment per reply, by mouse or by keyboard alone.

    python -m tools.rate --rater alice           # prints http://127.0.0.1:8602/
    python -m tools.rate --rater bob --port 8700

Every change is written at once, atomically, to eval/human/ratings/<rater>.csv, in the sheet's own format
(the columns of eval/human/sheet.csv, unrated rows left blank), which is what the human stage reads: close the
browser whenever you like, and the next start resumes at the first prompt with a reply left to rate.

Keys: 1-5 rate the highlighted criterion and move to the next one (after the last reply, to the next prompt);
arrows move between replies (up, down) and criteria (left, right); n / p: next / previous prompt; c: write a
comment on the highlighted reply (Enter or Escape ends it).
"""
from __future__ import annotations

import argparse
import csv
import io
import re
from pathlib import Path
from threading import Lock

from flask import Flask, jsonify, request

from stages.outputs import atomic_file
from stages.paths import HUMAN_RATINGS, HUMAN_SHEET
from stages.scoring import COLUMNS, CRITERIA, SCALE

FIELDS = (*CRITERIA, "comment")


class SheetProblem(Exception):
    """Why there is nothing to rate: shown as the page, not as a traceback."""


def read_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8-sig")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def load(rater: str) -> tuple[list[dict], Path]:
    """The sheet's rows with this rater's saved ratings filled in, and where they are saved."""
    if not HUMAN_SHEET.exists():
        raise SheetProblem(f"There is no sheet to rate: {HUMAN_SHEET} is missing. Run `dvc repro evaluate` "
                           "(or `dvc pull`) first.")
    rows = read_rows(HUMAN_SHEET)
    saved_path = HUMAN_RATINGS / f"{rater}.csv"
    if saved_path.exists():
        saved = {row.get("code"): row for row in read_rows(saved_path)}
        if not set(saved) & {row["code"] for row in rows}:
            raise SheetProblem(f"{saved_path} holds ratings of older replies: none of its codes is in the current "
                               f"{HUMAN_SHEET}. Move it away (git keeps it) to rate the current sheet, or rate "
                               "under another name.")
        for row in rows:
            for field in FIELDS:
                value = (saved.get(row["code"]) or {}).get(field, "").strip()
                row[field] = value if field == "comment" or value in SCALE else ""
    return rows, saved_path


def prompts(rows: list[dict]) -> list[dict]:
    """Rows grouped by prompt, in the sheet's (shuffled) order: each prompt with its replies."""
    grouped: dict[str, dict] = {}
    for row in rows:
        group = grouped.setdefault(row["prompt"], {"prompt": row["prompt"], "replies": []})
        group["replies"].append({"code": row["code"], "response": row["response"],
                                 "scores": {criterion: row[criterion] for criterion in CRITERIA},
                                 "comment": row["comment"]})
    return list(grouped.values())


def save(rows: list[dict], path: Path) -> None:
    with atomic_file(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def create_app(rater: str) -> Flask:
    app = Flask(__name__)
    lock = Lock()

    @app.get("/")
    def index():
        try:
            load(rater)
        except SheetProblem as problem:
            return PROBLEM_PAGE.replace("MESSAGE", html_escape(str(problem))), 409
        return PAGE.replace("RATER", html_escape(rater))

    @app.get("/api/sheet")
    def sheet():
        rows, _ = load(rater)
        return jsonify({"rater": rater, "criteria": list(CRITERIA), "prompts": prompts(rows)})

    @app.post("/api/rate")
    def rate():
        change = request.get_json(force=True)
        field, value = change.get("field"), str(change.get("value", "")).strip()
        if field not in FIELDS or (field != "comment" and value not in (*SCALE, "")):
            return jsonify({"error": f"bad change: {change}"}), 400
        with lock:
            rows, path = load(rater)
            row = next((row for row in rows if row["code"] == change.get("code")), None)
            if row is None:
                return jsonify({"error": f"unknown code {change.get('code')!r}"}), 400
            row[field] = value
            save(rows, path)
            rated = sum(all(r[criterion] for criterion in CRITERIA) for r in rows)
        return jsonify({"saved": str(path), "rated": rated, "replies": len(rows)})

    return app


def html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


PROBLEM_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Nothing to rate</title></head>
<body style="font-family: system-ui, sans-serif; margin: 2em; max-width: 50em">
<h1>Nothing to rate yet</h1><p id="problem">MESSAGE</p></body></html>"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Blind rating</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5em; max-width: 1100px; }
 #prompt { white-space: pre-wrap; background: #f4f4f4; padding: .8em; border-radius: 6px; }
 .reply { border: 1px solid #ccc; border-radius: 6px; padding: .8em; margin: .8em 0; }
 .reply.focused { border-color: #36c; box-shadow: 0 0 0 2px #36c3; }
 .response { white-space: pre-wrap; margin-bottom: .6em; }
 .criterion { display: flex; gap: .3em; align-items: center; margin: .15em 0; }
 .criterion span { width: 8em; } .criterion.focused span { font-weight: bold; color: #36c; }
 .criterion button { width: 2.2em; } .criterion button.chosen { background: #36c; color: white; }
 .comment { width: 100%; margin-top: .4em; } .keys, #status { color: #555; font-size: .9em; }
</style></head>
<body>
<h1>Blind rating <small>(RATER)</small></h1>
<p id="progress"></p>
<p class="keys">Keys: 1-5 rate the highlighted criterion; arrows move; n / p next / previous prompt; c comment.</p>
<div id="prompt"></div><div id="replies"></div>
<p><button id="prev">Previous prompt</button> <button id="next">Next prompt</button> <span id="status"></span></p>
<script>
let sheet, page = 0, reply = 0, criterion = 0, pending = Promise.resolve(), unsaved = 0, failed = null;
const $ = id => document.getElementById(id);
const rated = r => sheet.criteria.every(c => r.scores[c]);
function allReplies() { return sheet.prompts.flatMap(p => p.replies); }
function render() {
  const prompt = sheet.prompts[page];
  $("progress").textContent = `Prompt ${page + 1} / ${sheet.prompts.length} · ` +
    `${allReplies().filter(rated).length} / ${allReplies().length} replies rated`;
  $("prompt").textContent = prompt.prompt;
  $("replies").innerHTML = "";
  prompt.replies.forEach((r, i) => {
    const box = document.createElement("div");
    box.className = "reply" + (i === reply ? " focused" : "");
    box.dataset.code = r.code;
    box.innerHTML = `<b>Reply ${String.fromCharCode(65 + i)}</b> <small>(${r.code})</small><div class="response"></div>`;
    box.querySelector(".response").textContent = r.response;
    sheet.criteria.forEach((c, j) => {
      const row = document.createElement("div");
      row.className = "criterion" + (i === reply && j === criterion ? " focused" : "");
      row.innerHTML = `<span>${c}</span>` + [1, 2, 3, 4, 5].map(v =>
        `<button data-value="${v}" class="${r.scores[c] == v ? "chosen" : ""}">${v}</button>`).join("");
      row.querySelectorAll("button").forEach(b => b.onclick = () => { reply = i; criterion = j; score(b.dataset.value); });
      box.appendChild(row);
    });
    const comment = document.createElement("input");
    comment.className = "comment"; comment.placeholder = "comment (optional)"; comment.value = r.comment;
    comment.onchange = () => send(r, "comment", comment.value);
    comment.onkeydown = e => { if (e.key === "Enter" || e.key === "Escape") comment.blur(); e.stopPropagation(); };
    box.appendChild(comment);
    $("replies").appendChild(box);
  });
}
function send(r, field, value) {  // changes are saved one after another, in order
  if (field === "comment") r.comment = value; else r.scores[field] = value;
  unsaved++;
  $("status").textContent = "saving…";
  pending = pending.then(() => fetch("/api/rate", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({code: r.code, field, value})}))
    .then(response => response.json())
    .then(answer => { if (answer.error) failed = answer.error; }, () => { failed = "the rating server is gone"; })
    .then(() => { if (--unsaved === 0) $("status").textContent = failed ? "not saved: " + failed : "saved"; });
}
function score(value) {
  const replies = sheet.prompts[page].replies;
  send(replies[reply], sheet.criteria[criterion], value);
  if (++criterion === sheet.criteria.length) {
    criterion = 0;
    if (++reply === replies.length) { reply = 0; if (page < sheet.prompts.length - 1) page++; }
  }
  render();
}
function move(pageTo, replyTo, criterionTo) {
  page = Math.max(0, Math.min(sheet.prompts.length - 1, pageTo));
  const count = sheet.prompts[page].replies.length;
  reply = Math.max(0, Math.min(count - 1, replyTo));
  criterion = Math.max(0, Math.min(sheet.criteria.length - 1, criterionTo));
  render();
}
document.addEventListener("keydown", e => {
  if (!sheet || e.target.tagName === "INPUT") return;
  if ("12345".includes(e.key) && e.key.length === 1) score(e.key);
  else if (e.key === "ArrowDown") move(page, reply + 1, criterion);
  else if (e.key === "ArrowUp") move(page, reply - 1, criterion);
  else if (e.key === "ArrowRight") move(page, reply, criterion + 1);
  else if (e.key === "ArrowLeft") move(page, reply, criterion - 1);
  else if (e.key === "n") move(page + 1, 0, 0);
  else if (e.key === "p") move(page - 1, 0, 0);
  else if (e.key === "c") { e.preventDefault(); document.querySelectorAll(".comment")[reply].focus(); }
  else return;
  e.preventDefault();
});
$("next").onclick = () => move(page + 1, 0, 0);
$("prev").onclick = () => move(page - 1, 0, 0);
fetch("/api/sheet").then(r => r.json()).then(data => {
  sheet = data;
  const first = sheet.prompts.findIndex(p => !p.replies.every(rated));  // resume where the rater stopped
  page = first < 0 ? sheet.prompts.length - 1 : first;
  const open = sheet.prompts[page].replies.findIndex(r => !rated(r));
  reply = open < 0 ? 0 : open;
  render();
});
</script></body></html>
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rater", required=True, help="your name: ratings go to eval/human/ratings/<rater>.csv")
    parser.add_argument("--port", type=int, default=8602)
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", args.rater):
        parser.error(f"--rater {args.rater!r}: use letters, digits, - and _ (it names a file)")
    print(f"rating as {args.rater}: http://127.0.0.1:{args.port}/", flush=True)
    create_app(args.rater).run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
