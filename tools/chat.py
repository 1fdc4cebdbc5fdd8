"""Talk to the model: base, base+SFT or base+SFT+DPO, with the chat template and streamed tokens.

    python -m tools.chat --model dpo                 # a REPL; /reset, /system <text>, /exit
    python -m tools.chat --model sft --prompt "I failed my driving test again."   # one answer, then exit

It loads models/ as the pipeline left them (after `dvc repro`, `dvc pull` or `dvc exp apply <exp>`), on the
GPU when there is one, with the same prompt format as training. A conversation that outgrows the model's
context (its max_position_embeddings) minus --max-new-tokens forgets its oldest turns.
"""
from __future__ import annotations

import argparse

from transformers import set_seed

from chattune.common.errors import run
from chattune.common.params import load_params
from chattune.conversation import Chat
from chattune.modeling.loading import load_model, load_tokenizer
from chattune.modeling.placement import compute_dtype

HELP = "commands: /reset (forget the conversation), /system <text> (set the system message), /exit"


def command(chat: Chat, line: str) -> bool:
    """Handle a /command; False means exit."""
    name, _, argument = line.partition(" ")
    if name == "/exit":
        return False
    if name == "/reset":
        chat.history = []
        print("(conversation cleared)")
    elif name == "/system":
        chat.system, chat.history = argument.strip(), []
        print("(system message set; conversation cleared)")
    else:
        print(HELP)
    return True



def repl(chat: Chat) -> None:
    print(f"chatting with the model; {HELP}")
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not line:
            continue
        if line.startswith("/"):
            if not command(chat, line):
                return
            continue
        print("model> ", end="", flush=True)
        chat.reply(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["base", "sft", "dpo"], default="dpo")
    parser.add_argument("--prompt", help="answer this once and exit")
    parser.add_argument("--system", help="system message (default: sft.system_prompt from params.yaml)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    args = parser.parse_args(argv)
    params = load_params()
    set_seed(params.seed)
    system = params.sft.system_prompt if args.system is None else args.system
    model, tokenizer = load_model(args.model, compute_dtype(params.model.dtype)), load_tokenizer()
    try:
        chat = Chat(model, tokenizer, system, args.max_new_tokens, args.temperature)
    except ValueError as error:  # settings the model cannot use
        parser.error(str(error))
    if args.prompt is not None:
        chat.reply(args.prompt)
    else:
        repl(chat)


if __name__ == "__main__":
    run(main, "chat")
