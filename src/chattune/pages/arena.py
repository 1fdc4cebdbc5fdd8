"""The arena's server: one message, three models, each reply streamed to its column as newline-delimited JSON
(tools.arena starts it; chattune.pages.server guards it). Each model answers one message at a time and
keeps a few waiting; a reply stops when its reader goes away.
"""
from __future__ import annotations

import json
import queue
from threading import BoundedSemaphore, Event, Lock, Thread

from flask import Response, render_template

from chattune.conversation import STREAM_TIMEOUT_S, Chat
from chattune.modeling.stacks import MODELS
from chattune.pages.server import json_body, local_app, refusal

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
