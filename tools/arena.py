"""Side by side in the browser: type one message (and a system message, if you like) and watch base,
base+SFT and base+SFT+DPO answer it in three columns, their tokens streaming as they come.

    python -m tools.arena                       # prints http://127.0.0.1:8601/
    python -m tools.arena --port 8700 --temperature 0.7

Generation is evaluation's: eval.max_new_tokens and eval.temperature from params.yaml (greedy at 0), with the
same prompt format (tools.chat's Chat, one fresh conversation per message). Served by Flask on 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import queue
from threading import Lock, Thread

from flask import Flask, Response, request
from transformers import set_seed

from stages.modeling import load_model, load_tokenizer
from stages.params import load_params
from tools.chat import Chat

MODELS = ("base", "sft", "dpo")
TITLES = {"base": "base", "sft": "base + SFT", "dpo": "base + SFT + DPO"}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Side by side</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5em; max-width: 1200px; }
 textarea, input { width: 100%; font: inherit; box-sizing: border-box; margin-bottom: .5em; }
 .columns { display: grid; grid-template-columns: repeat(3, 1fr); gap: 1em; margin-top: 1em; }
 .reply { border: 1px solid #ccc; border-radius: 6px; padding: .8em; min-height: 6em; white-space: pre-wrap; }
 .reply h2 { font-size: 1em; margin: 0 0 .5em; } .reply.done { border-color: #3a3; }
 .settings { color: #555; font-size: .9em; }
</style></head>
<body>
<h1>Side by side</h1>
<p class="settings">SETTINGS</p>
<label>System message (optional)<input id="system" value="SYSTEM"></label>
<label>Message<textarea id="message" rows="3" placeholder="Type a message; Ctrl+Enter sends"></textarea></label>
<button id="send">Send to all three</button>
<div class="columns">COLUMNS</div>
<script>
async function stream(model, body) {
  const box = document.querySelector(`#${model} .text`), column = document.getElementById(model);
  box.textContent = ""; column.classList.remove("done");
  const response = await fetch(`/reply/${model}`, {method: "POST", headers: {"Content-Type": "application/json"}, body});
  const reader = response.body.getReader(), decoder = new TextDecoder();
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    box.textContent += decoder.decode(value, {stream: true});
  }
  column.classList.add("done");
}
function send() {
  const body = JSON.stringify({system: document.getElementById("system").value,
                               message: document.getElementById("message").value});
  MODELS.forEach(model => stream(model, body));
}
document.getElementById("send").onclick = send;
document.getElementById("message").addEventListener("keydown", e => { if (e.key === "Enter" && e.ctrlKey) send(); });
</script></body></html>
"""


def page(system: str, max_new_tokens: int, temperature: float) -> str:
    columns = "".join(f'<div class="reply" id="{m}"><h2>{TITLES[m]}</h2><div class="text"></div></div>' for m in MODELS)
    decoding = "greedy" if temperature == 0 else f"temperature {temperature}"
    return (PAGE.replace("SETTINGS", f"{decoding}, at most {max_new_tokens} new tokens (evaluation's settings)")
            .replace("SYSTEM", system.replace("&", "&amp;").replace('"', "&quot;"))
            .replace("COLUMNS", columns).replace("MODELS.forEach", f"{list(MODELS)}.forEach"))


class QueueWriter:
    """A file-like `out` for Chat.reply that hands each piece to the HTTP response."""

    def __init__(self):
        self.pieces: queue.Queue[str | None] = queue.Queue()

    def write(self, text: str) -> None:
        self.pieces.put(text)

    def flush(self) -> None:
        pass


def create_app(max_new_tokens: int, temperature: float) -> Flask:
    params = load_params()
    set_seed(params.seed)
    # One tokenizer and one lock per model: the three columns generate at once, and a Rust tokenizer must not
    # be used from two threads; a second message to a busy model waits for the first to finish.
    models = {name: (load_model(name), load_tokenizer(), Lock()) for name in MODELS}
    app = Flask(__name__)

    @app.get("/")
    def index():
        return page(params.sft.system_prompt, max_new_tokens, temperature)

    @app.post("/reply/<name>")
    def reply(name: str):
        if name not in models:
            return f"unknown model {name!r}: one of {', '.join(MODELS)}", 404
        asked = request.get_json(force=True)
        model, tokenizer, busy = models[name]
        chat = Chat(model, tokenizer, asked.get("system", ""), max_new_tokens, temperature, params.sft.max_length)
        out = QueueWriter()

        def answer():
            try:
                with busy:
                    chat.reply(asked.get("message", ""), out=out)
            finally:
                out.pieces.put(None)

        Thread(target=answer, daemon=True).start()
        return Response(iter(out.pieces.get, None), mimetype="text/plain")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8601)
    parser.add_argument("--max-new-tokens", type=int, help="default: eval.max_new_tokens")
    parser.add_argument("--temperature", type=float, help="default: eval.temperature (0 = greedy)")
    args = parser.parse_args(argv)
    cfg = load_params().eval
    app = create_app(args.max_new_tokens or cfg.max_new_tokens,
                     cfg.temperature if args.temperature is None else args.temperature)
    print(f"side by side: http://127.0.0.1:{args.port}/", flush=True)
    app.run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
