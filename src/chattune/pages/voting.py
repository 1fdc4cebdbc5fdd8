"""The vote page's server: two anonymous replies to one prompt, sides drawn at random and kept here until the vote
comes back, each vote a row of the rater's file written under its lock (tools.vote starts it;
chattune.pages.server guards it).
"""
from __future__ import annotations

import csv
import io
import secrets
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from threading import Lock

from flask import jsonify, render_template

from chattune.common.errors import DataError
from chattune.common.outputs import FileBusy, atomic_file, locked, read_jsonl
from chattune.common.params import load_params
from chattune.common.paths import GENERATIONS, HUMAN_VOTES
from chattune.data.parsing import read_bytes
from chattune.human.sheet import as_text_cell, digest, prompt_text
from chattune.human.votes import COLUMNS, PAIRS, STACK_DIGITS, read_votes, row_item, vote_rows
from chattune.modeling.stacks import MODELS
from chattune.pages.server import json_body, local_app, refusal

SET_NAMES = {"ed_test": "EmpatheticDialogues test", "probe": "probe set", "typed": "typed on this page"}
CHOICES = {"A": "left", "B": "right", "tie": "tie"}
MAX_BODY = 32 * 1024
MESSAGE_LIMIT = 4000
PENDING = 64  # shown items the server remembers the hidden sides of
chance = secrets.SystemRandom()  # not params.seed: the sides must not follow from anything public


class VoteProblem(Exception):
    """Why there is nothing to vote on: shown as the page, not as a traceback."""


def stored_prompts(sets: list[str]) -> tuple[dict, dict]:
    """(set, id) -> {prompt, replies: model -> text} for every prompt all three models answered, and each
    model's stack fingerprint, from eval/generations.jsonl."""
    if not GENERATIONS.exists():
        raise VoteProblem(f"There are no replies to vote on: {GENERATIONS} is missing. Run `dvc repro evaluate` "
                          "(or `dvc pull`) first, or type a message below.")
    prompts, stacks = {}, {}
    try:
        for row in read_jsonl(GENERATIONS):
            if row["set"] in sets:
                entry = prompts.setdefault((row["set"], row["id"]), {"prompt": row["prompt"], "replies": {}})
                entry["replies"][row["model"]] = str(row["response"])
            stacks[row["model"]] = str(row["stack"])
    except (ValueError, RecursionError, KeyError, TypeError) as error:
        raise VoteProblem(f"{GENERATIONS} cannot be read ({type(error).__name__}: {str(error)[:200]}). Restore it "
                          "(`dvc checkout eval/generations.jsonl` or `dvc pull`) or rerun `dvc repro evaluate`.") from None
    return {item: entry for item, entry in prompts.items() if set(entry["replies"]) == set(MODELS)}, stacks


def cast_votes(stacks: dict) -> dict[str, list]:
    """Every rater's votes for these stacks (chattune.human.votes.Vote)."""
    votes = {}
    for path in sorted(Path(HUMAN_VOTES).glob("*.csv")):
        try:
            votes[path.stem] = read_votes(read_bytes(path), str(path), path.stem, stacks).votes
        except DataError as error:
            raise VoteProblem(f"{error}. Fix the file or move it away (git keeps it).") from None
    return votes


def saved_rows(path: Path) -> list[dict]:
    """A votes file's rows as written, to write them back with one more."""
    if not path.exists():
        return []
    try:
        return [row for _, row in vote_rows(read_bytes(path), str(path))]
    except DataError as error:
        raise VoteProblem(f"{error}. Fix the file or move it away (git keeps it).") from None


def next_item(items: list[tuple], mine: set, others: set) -> tuple | None:
    """An item (set, id, pair) this rater has not voted on: one another rater voted on if there is one."""
    open_items = [item for item in items if item not in mine]
    shared = [item for item in open_items if item in others]
    return chance.choice(shared or open_items) if open_items else None


def create_app(rater: str, port: int, sets: list[str], system_prompt: str, load_models=None):
    """`load_models`: () -> {name: (Chat factory(message) -> reply text, stack fingerprint)}, called on the
    first typed message."""
    app = local_app(__name__, port, MAX_BODY)
    lock, typing = Lock(), Lock()
    pending: OrderedDict[str, dict] = OrderedDict()
    live: dict = {}
    path = HUMAN_VOTES / f"{rater}.csv"

    def show(item: dict) -> dict:
        """Remember the hidden sides of `item` under a random token; what the page may see of it."""
        token = secrets.token_urlsafe(16)
        pending[token] = item
        while len(pending) > PENDING:
            pending.popitem(last=False)
        return {"token": token, "source": SET_NAMES[item["set"]], "prompt": item["prompt"],
                "replies": [item["left_reply"], item["right_reply"]]}

    def draw(set_name: str, prompt_id: str, prompt: str, replies: dict, stacks: dict, pair) -> dict:
        left, right = chance.sample(sorted(pair), 2)
        return {"set": set_name, "prompt_id": prompt_id, "prompt": prompt, "left": left, "right": right,
                "left_reply": replies[left], "right_reply": replies[right],
                "left_stack": stacks[left][:STACK_DIGITS], "right_stack": stacks[right][:STACK_DIGITS]}


    @app.get("/")
    def index():
        try:
            stored_prompts(sets)
        except VoteProblem as problem:
            return render_template("problem.html", title="Nothing to vote on yet", message=str(problem)), 409
        return render_template("vote.html", rater=rater, message_limit=MESSAGE_LIMIT)

    @app.get("/api/next")
    def next_pair():
        try:
            prompts, stacks = stored_prompts(sets)
            votes = cast_votes(stacks)
        except VoteProblem as problem:
            return refusal(409, str(problem))
        mine = {vote.item for vote in votes.get(rater, [])}
        others = {vote.item for name, cast in votes.items() if name != rater for vote in cast}
        items = [(set_name, prompt_id, frozenset(pair)) for set_name, prompt_id in prompts for pair in PAIRS]
        item = next_item(items, mine, others)
        with lock:
            shown = {"done": True} if item is None else show(draw(
                item[0], item[1], prompt_text(prompts[item[:2]]["prompt"], system_prompt),
                prompts[item[:2]]["replies"], stacks, item[2]))
        stored = sum(vote.set != "typed" for vote in votes.get(rater, []))
        return jsonify({**shown, "voted": stored, "total": len(items)})

    @app.post("/api/typed")
    def typed():
        try:
            asked = json_body()
        except ValueError as error:
            return refusal(400, str(error))
        message = asked.get("message")
        if not isinstance(message, str) or not message.strip() or len(message) > MESSAGE_LIMIT:
            return refusal(400, f"message must be a non-empty string of at most {MESSAGE_LIMIT} characters")
        if load_models is None:
            return refusal(409, "typed messages need the models: run `dvc repro` (or `dvc pull`) first")
        if not typing.acquire(blocking=False):
            return refusal(429, "two models are answering another typed message; send again when they are done")
        try:
            if not live:
                live.update(load_models())
            pair = frozenset(chance.choice(PAIRS))
            replies = {name: live[name][0](message.strip()) for name in pair}
            stacks = {name: live[name][1] for name in pair}
        except Exception as error:  # shown on the page; the server carries on
            return refusal(500, f"generation failed: {type(error).__name__}: {error}")
        finally:
            typing.release()
        with lock:
            return jsonify(show(draw("typed", digest(message.strip())[:16], message.strip(), replies, stacks, pair)))

    @app.post("/api/vote")
    def vote():
        try:
            asked = json_body()
        except ValueError as error:
            return refusal(400, str(error))
        choice = asked.get("choice")
        if not isinstance(choice, str) or choice not in CHOICES:
            return refusal(400, f"choice must be one of {', '.join(CHOICES)}, not {str(choice)[:80]!r}")
        with lock:
            item = pending.pop(asked.get("token"), None) if isinstance(asked.get("token"), str) else None
        if item is None:
            return refusal(400, "unknown or already answered pair: reload the page")
        row = {**item, "choice": CHOICES[choice], "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               **{column: as_text_cell(item[column]) for column in ("prompt", "left_reply", "right_reply")}}
        try:
            with locked(path):
                try:
                    rows = saved_rows(path)
                except VoteProblem as problem:
                    return refusal(409, str(problem))
                if any(row_item(saved) == row_item(row) for saved in rows):
                    return refusal(409, "you have voted on this prompt and pair already (in another tab?): "
                                        "reload the page for the next one")
                with atomic_file(path) as handle:
                    writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
                    writer.writeheader()
                    writer.writerows(rows + [row])
        except FileBusy as busy:
            with lock:
                pending[asked["token"]] = item  # the page may send the same vote again
            return refusal(503, f"{busy}: the vote was not saved")
        return jsonify({"saved": str(path)})

    return app


def live_models():
    """Each model as a one-message Chat at evaluation's settings, with its stack fingerprint."""
    from chattune.conversation import Chat
    from chattune.evaluation.replies import reply_budget
    from chattune.modeling.loading import load_model, load_tokenizer
    from chattune.modeling.placement import compute_dtype
    from chattune.modeling.stacks import fingerprint

    params = load_params()
    budget = reply_budget(params)
    found = {}
    for name in MODELS:
        model, tokenizer = load_model(name, compute_dtype(params.model.dtype)), load_tokenizer()

        def answer(message, model=model, tokenizer=tokenizer):
            chat = Chat(model, tokenizer, params.sft.system_prompt, budget, params.eval.temperature)
            return chat.reply(message, out=io.StringIO())

        found[name] = (answer, fingerprint(name))
    return found
