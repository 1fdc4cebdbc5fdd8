"""Side by side in the browser: type one message (and a system message, if you like) and watch base,
base+SFT and base+SFT+DPO answer it in three columns, their tokens streaming as they come.

    python -m tools.arena                       # prints http://127.0.0.1:8601/
    python -m tools.arena --port 8700 --temperature 0.7

Generation is evaluation's: its reply budget (eval.max_new_tokens) and eval.temperature (greedy at 0), with the
same prompt format (tools.chat's Chat, one fresh conversation per message). Served on 127.0.0.1 to its own page
only (chattune.pages.server). Settings the models cannot use (--max-new-tokens -5) stop it at start-up. Each model
answers one message at a time and keeps at most a few waiting (then 429); a reply stops being generated when its
reader goes away, and a failed generation ends its column with the error.
"""
from __future__ import annotations

import argparse
import json
import queue
from threading import BoundedSemaphore, Event, Lock, Thread

from flask import Response, render_template
from transformers import set_seed

from chattune.common.errors import run
from chattune.common.params import load_params
from chattune.evaluation.replies import reply_budget
from chattune.modeling.loading import load_model, load_tokenizer
from chattune.modeling.stacks import MODELS
from chattune.pages.server import arguments, json_body, local_app, refusal
from tools.chat import STREAM_TIMEOUT_S, Chat

TITLES = {"base": "base", "sft": "base + SFT", "dpo": "base + SFT + DPO"}
MAX_BODY = 64 * 1024
MESSAGE_LIMIT = 8000  # characters, for the message and for the system message
WAITING = 2  # messages a model may keep waiting behind the one it is answering


class QueueWriter:
    """A file-like `out` for Chat.reply that hands each piece to the HTTP response."""

    def __init__(self):
        self.pieces: queue.Queue[dict | None] = queue.Queue()

    def write(self, text: str) -> None:
        self.pieces.put({"text": text})

    def flush(self) -> None:
        pass


class Seat:
    """One model and the work it takes on: one generation at a time, a few waiting, the rest refused."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.generating = Lock()  # one Rust tokenizer and one model: never two generations at once
        self.admitted = BoundedSemaphore(1 + WAITING)


def check_message(asked: dict) -> str | None:
    for field in ("message", "system"):
        value = asked.get(field, "")
        if not isinstance(value, str) or len(value) > MESSAGE_LIMIT:
            return f"{field} must be a string of at most {MESSAGE_LIMIT} characters"
    return None if asked.get("message", "").strip() else "message is empty"


def create_app(models: dict, system: str, max_new_tokens: int, temperature: float, port: int):
    """`models`: name -> (model, tokenizer), for the names in MODELS."""
    seats = {name: Seat(*models[name]) for name in MODELS}
    for seat in seats.values():  # bad settings stop here, at start-up, not in every reply
        Chat(seat.model, seat.tokenizer, system, max_new_tokens, temperature)
    app = local_app(__name__, port, MAX_BODY)
    decoding = "greedy" if temperature == 0 else f"temperature {temperature}"

    @app.get("/")
    def index():
        return render_template("arena.html", settings=f"{decoding}, at most {max_new_tokens} new tokens "
                               "(evaluation's settings)", system=system, models=list(MODELS),
                               columns=[(name, TITLES[name]) for name in MODELS])

    @app.post("/reply/<name>")
    def reply(name: str):
        if name not in seats:
            return refusal(404, f"unknown model {name!r}: one of {', '.join(MODELS)}")
        try:
            asked = json_body()
        except ValueError as error:
            return refusal(400, str(error))
        problem = check_message(asked)
        if problem:
            return refusal(400, problem)
        seat = seats[name]
        out, stop = QueueWriter(), Event()
        chat = Chat(seat.model, seat.tokenizer, asked.get("system", ""), max_new_tokens, temperature)
        if not seat.admitted.acquire(blocking=False):
            return refusal(429, f"{name} is busy with {1 + WAITING} messages; send again when one is answered")

        def answer():
            try:
                with seat.generating:
                    if not stop.is_set():
                        chat.reply(asked["message"], out=out, stop=stop)
                out.pieces.put({"done": True})
            except Exception as error:  # shown in the column; the server carries on
                out.pieces.put({"error": f"generation failed: {type(error).__name__}: {error}"})
            finally:
                seat.admitted.release()
                out.pieces.put(None)

        def events():
            try:
                yield json.dumps({"accepted": True}) + "\n"  # at once: the page (and the server) see the stream open
                while True:
                    try:
                        event = out.pieces.get(timeout=STREAM_TIMEOUT_S)
                    except queue.Empty:
                        yield json.dumps({"error": f"no reply within {STREAM_TIMEOUT_S} s"}) + "\n"
                        return
                    if event is None:
                        return
                    yield json.dumps(event) + "\n"
            finally:  # the reader went away, or the reply is complete: either way, stop generating
                stop.set()

        try:
            Thread(target=answer, daemon=True).start()  # from here on, answer() releases the slot
        except BaseException:
            seat.admitted.release()
            raise
        return Response(events(), mimetype="application/x-ndjson")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8601)
    parser.add_argument("--max-new-tokens", type=int, help="default: evaluation's reply budget (eval.max_new_tokens)")
    parser.add_argument("--temperature", type=float, help="default: eval.temperature (0 = greedy)")
    args = arguments(parser, argv)
    params = load_params()
    set_seed(params.seed)
    # One tokenizer per model: the three columns generate at once, and a Rust tokenizer must not be shared
    # between threads.
    models = {name: (load_model(name), load_tokenizer()) for name in MODELS}
    try:
        app = create_app(models, params.sft.system_prompt,
                         reply_budget(params) if args.max_new_tokens is None else args.max_new_tokens,
                         params.eval.temperature if args.temperature is None else args.temperature, args.port)
    except ValueError as error:
        parser.error(str(error))
    print(f"side by side: http://127.0.0.1:{args.port}/", flush=True)
    app.run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    run(main, "arena")
