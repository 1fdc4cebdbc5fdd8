"""Pairwise blind votes in the browser: one prompt, two anonymous replies from two of base / sft / dpo (which
model stands on which side is drawn at random), and the rater says which is better, or that they tie.

    python -m tools.vote --rater alice          # prints http://127.0.0.1:8603/
    python -m tools.vote --rater bob --sets probe

Prompts come from evaluate's replies (eval/generations.jsonl: the ED test set and the probe set), or are typed
on the page, and then the two models answer them there (loaded on the first typed message; greedy, at
evaluation's settings). Each vote is written at once, atomically and under the file's lock (two pages for one
rater, even two servers, take turns), as a row of eval/human/votes/<rater>.csv:
the prompt, both replies, which model stood on which side, the choice, and the fingerprint of both model
stacks, so that the human stage counts it only while those models are the ones in models/ (chattune.human.votes).
The page never learns which model is which: the server keeps that until the vote comes back.

A rater votes once on a prompt and pair: a second vote on it (from another tab, or after a reload) is refused.
A rater is not shown the same prompt and pair twice; prompts and pairs that another rater has voted on come
first, so that agreement between raters can be measured. Keys: a or left arrow: A is better; b or right
arrow: B is better; t or down arrow: a tie. Served on 127.0.0.1 to its own page only (chattune.pages.server).
"""
from __future__ import annotations

import argparse

from chattune.common.errors import run
from chattune.common.params import load_params
from chattune.pages.server import arguments
from chattune.pages.voting import create_app, live_models


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rater", required=True, help="your name: votes go to eval/human/votes/<rater>.csv")
    parser.add_argument("--port", type=int, default=8603)
    parser.add_argument("--sets", default="ed_test,probe", help="prompt sets to draw from (default: ed_test,probe)")
    args = arguments(parser, argv)
    params = load_params()
    print(f"voting as {args.rater}: http://127.0.0.1:{args.port}/", flush=True)
    create_app(args.rater, args.port, args.sets.split(","), params.sft.system_prompt, live_models).run(
        host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    run(main, "vote")
