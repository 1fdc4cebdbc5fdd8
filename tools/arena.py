"""Side by side in the browser: type one message (and a system message, if you like) and watch base,
base+SFT and base+SFT+DPO answer it in three columns, their tokens streaming as they come.

    python -m tools.arena                       # prints http://127.0.0.1:8601/
    python -m tools.arena --port 8700 --temperature 0.7

Generation is evaluation's: its reply budget (eval.max_new_tokens) and eval.temperature (greedy at 0), with the
same prompt format (chattune.conversation's Chat, one fresh conversation per message). Served on 127.0.0.1 to its own page
only (chattune.pages.server). Settings the models cannot use (--max-new-tokens -5) stop it at start-up. Each model
answers one message at a time and keeps at most a few waiting (then 429); a reply stops being generated when its
reader goes away, and a failed generation ends its column with the error.
"""
from __future__ import annotations

import argparse

from transformers import set_seed

from chattune.common.errors import run
from chattune.common.params import load_params
from chattune.evaluation.replies import reply_budget
from chattune.modeling.loading import load_model, load_tokenizer
from chattune.modeling.placement import compute_dtype
from chattune.modeling.stacks import MODELS
from chattune.pages.arena import create_app
from chattune.pages.server import arguments


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
    models = {name: (load_model(name, compute_dtype(params.model.dtype)), load_tokenizer()) for name in MODELS}
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
