"""The one prompt format: every stage and tool that turns a conversation into token ids goes through encode, so training, evaluation, chat and export agree on the ids; fit keeps a conversation within a token budget by dropping its oldest turns."""
from __future__ import annotations


class PromptTooLong(ValueError):
    """A conversation whose last message (with its reply) alone exceeds the token budget."""


def _text_ids(tokenizer, text: str) -> list[int]:
    """Token ids of rendered text, the way the model's own usage tokenizes it: the tokenizer's defaults,
    which add a BOS where the model expects one (TinyLlama: `<s>`; ChatML models: none). A template that
    writes the BOS itself is not given a second one."""
    ids = tokenizer(text).input_ids
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos:
        ids = ids[1:]
    return ids


def encode(tokenizer, prompt, completion=None) -> tuple[list[int], list[int]]:
    """Prompt ids as the model sees them before replying, and the reply's ids as training and scoring
    see them, ending at (and including) the first EOS: whatever a template writes after it (`\\n` after
    `</s>` or `<|im_end|>`) is neither trained nor scored.

    `prompt`: chat messages (rendered through the chat template) or plain text (the seed format);
    `completion`: the reply as [assistant message] or text, or None for the prompt alone. The reply's ids
    are what prompt + reply adds after the prompt's ids; the prompt's ids must be a prefix of them, so the
    model is trained on exactly the context it is given at generation time."""
    chat = isinstance(prompt, list)
    prompt_text = (tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) if chat
                   else prompt)
    prompt_ids = _text_ids(tokenizer, prompt_text)
    if completion is None:
        return prompt_ids, []
    full_ids = (_text_ids(tokenizer, tokenizer.apply_chat_template(prompt + completion, tokenize=False)) if chat
                else _text_ids(tokenizer, prompt + completion) + [tokenizer.eos_token_id])
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(f"the prompt's tokens are not a prefix of prompt + reply's tokens: {prompt_text[-40:]!r} "
                         "tokenizes differently alone than before the reply")
    reply = full_ids[len(prompt_ids):]
    eos = tokenizer.eos_token_id
    return prompt_ids, reply[: reply.index(eos) + 1] if eos in reply else reply


def fit(tokenizer, prompt, completion, budget: int) -> tuple[list, int]:
    """The prompt with its oldest turns dropped until prompt + reply fit in `budget` tokens, and how many
    messages were dropped. The system message and the last message always stay; turns go from the oldest,
    so that what remains starts with a user turn. Raises PromptTooLong if even that does not fit."""
    dropped = 0
    while sum(map(len, encode(tokenizer, prompt, completion))) > budget:
        if not isinstance(prompt, list):
            raise PromptTooLong("a plain-text prompt has no turns to drop")
        system = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
        turns = prompt[len(system):]
        if len(turns) <= 1:
            raise PromptTooLong(f"the last message alone (with the reply) exceeds {budget} tokens")
        cut = 1
        while cut < len(turns) - 1 and turns[cut]["role"] != "user":
            cut += 1
        prompt, dropped = system + turns[cut:], dropped + cut
    return prompt, dropped
