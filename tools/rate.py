"""Blind rating in the browser: one prompt at a time, every model's reply to it under its code only, four
criteria from 1 to 5 and a comment per reply, by mouse or by keyboard alone.

    python -m tools.rate --rater alice           # prints http://127.0.0.1:8602/
    python -m tools.rate --rater bob --port 8700

Every change is written at once, atomically and under the file's lock (two pages for one rater, even two
servers, take turns), to eval/human/ratings/<rater>.csv, in the sheet's own format
(chattune.human.sheet: the columns of eval/human/sheet.csv, unrated cells left blank), which is what the human stage
reads, whatever state it is in: close the browser whenever you like, and the next start resumes at the first
prompt with a reply left to rate. Rows of replies that evaluate has since replaced stay in the file as they
were (the human stage counts them as stale).

Keys: 1-5 rate the highlighted criterion and move to the next one (after the last reply, to the next prompt);
arrows move between replies (up, down) and criteria (left, right); n / p: next / previous prompt; c: write a
comment on the highlighted reply (Enter or Escape ends it). Served on 127.0.0.1 to its own page only
(chattune.pages.server).
"""
from __future__ import annotations

import argparse

from chattune.common.errors import run
from chattune.pages.rating import create_app
from chattune.pages.server import arguments


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rater", required=True, help="your name: ratings go to eval/human/ratings/<rater>.csv")
    parser.add_argument("--port", type=int, default=8602)
    args = arguments(parser, argv)
    print(f"rating as {args.rater}: http://127.0.0.1:{args.port}/", flush=True)
    create_app(args.rater, args.port).run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    run(main, "rate")
