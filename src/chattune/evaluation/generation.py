"""What evaluate asks of a model: prompts as ids, replies generated from them, and log-probabilities of given
replies. Pure of files and params beyond what is passed in, so tests call them on tiny inputs.

Generation is batched, sorted by prompt length and left-padded; only generated tokens are decoded (the prompt
is cut off by position, never by string matching), and a reply ends at its first EOS.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from chattune.common.errors import DataError
from chattune.common.params import EvalParams, Params
from chattune.common.paths import DPO_DATA
from chattune.data.datasets import dpo_dataset
from chattune.evaluation.replies import generation_config, left_padded
from chattune.modeling.loading import run_in
from chattune.modeling.prompt import PromptTooLong, encode, fit

# eval.batch_size "auto". On a GPU, generate at batch 64 made 846 new tok/s against 45 at batch 1 (TinyLlama's
# shape on an H200, bench/results/2026-11-28-nvidia-h200.json), and 64 rows' KV cache, even filling TinyLlama's
# context window of 2,048 tokens, is 2.75 GiB (22 layers x 4 key-value heads x 64 dims, bf16): a 16 GiB T4 holds it.
# On a CPU, batches of 16 pad less and ran faster than one batch of every prompt (SmolLM2 on 2 cores: 28 s
# against 31 s to generate, 27 s against 40 s for log-probs).
AUTO_BATCH_SIZE = {"cpu": 16, "accelerator": 64}
# Logits held at once by the log-prob pass: 2**28 values are 512 MiB in bf16, which a 16 GiB card spares beside
# TinyLlama. 64 held-out pairs at dpo.max_length 768 over TinyLlama's 32k vocabulary would be up to 1.6e9 (3 GiB).
LOGITS_BUDGET = 2**28


def generate(model, tokenizer, prompts: list[list[int]], cfg: EvalParams, budget: int) -> tuple[list[dict], float]:
    """Replies in the order of `prompts`, each {text, new_tokens, stopped, cut}, and the seconds it took. A reply
    stops at its EOS, or is cut when it reaches `budget` new tokens without one."""
    eos = tokenizer.eos_token_id
    config = generation_config(tokenizer, budget, cfg.temperature)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    size = batch_size(cfg.batch_size, model.device)
    replies: list[dict] = [{}] * len(prompts)
    start = time.perf_counter()
    for first in tqdm(range(0, len(order), size), desc="generate", unit="batch"):
        batch = order[first : first + size]
        input_ids, attention = left_padded([prompts[i] for i in batch], tokenizer.pad_token_id)
        width = input_ids.shape[1]
        with torch.no_grad(), run_in(model):
            output = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                                    generation_config=config)
        for row, index in enumerate(batch):
            ids = output[row, width:].tolist()
            stopped = eos in ids
            ids = ids[: ids.index(eos)] if stopped else ids
            replies[index] = {"text": tokenizer.decode(ids, skip_special_tokens=True).strip(),
                              "new_tokens": len(ids), "stopped": stopped, "cut": not stopped and len(ids) >= budget}
    return replies, time.perf_counter() - start


def reply_logprobs(model, sequences: list[tuple[list[int], list[int]]], size: int | str) -> np.ndarray:
    """For each (prompt ids, reply ids): the summed log-probability of the reply's tokens given the prompt,
    and the reply's token count. Rows [logp, tokens], in the order given; batched by length (`size` as
    eval.batch_size, within LOGITS_BUDGET).

    Rows are left-padded, so every reply ends at the last position, and the model computes logits for the
    last (longest reply + 1) positions only: over a vocabulary of 49k (SmolLM2) or 32k (TinyLlama), logits for
    every prompt position cost more than the rest of the forward pass on a CPU. Each reply's log-probs are its
    logits at the target minus their logsumexp, taken row by row in float32, so no float32 copy of the whole
    batch's logits is made."""
    order = sorted(range(len(sequences)), key=lambda i: sum(map(len, sequences[i])))
    reply_lengths = [len(reply) for _, reply in sequences]
    vocab = model.get_output_embeddings().weight.shape[0]
    rows = np.zeros((len(sequences), 2))
    for batch in tqdm(logit_batches(order, reply_lengths, batch_size(size, model.device), vocab),
                      desc="log-probs", unit="batch"):
        input_ids, attention = left_padded([prompt + reply for prompt, reply in (sequences[i] for i in batch)], 0)
        input_ids, attention = input_ids.to(model.device), attention.to(model.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # each row counts from its first real token
        keep = max(reply_lengths[i] for i in batch) + 1
        with torch.no_grad(), run_in(model):
            # logits at position t predict token t + 1: the kept positions predict the last keep - 1 tokens
            logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                           logits_to_keep=keep).logits[:, :-1]
            targets = input_ids[:, input_ids.shape[1] + 1 - keep :]
            summed = []
            for row, index in enumerate(batch):
                first = logits.shape[1] - reply_lengths[index]
                scores = logits[row, first:].float()
                summed.append(scores.gather(1, targets[row, first:, None]).sum() - scores.logsumexp(-1).sum())
        rows[batch] = np.column_stack([torch.stack(summed).tolist(), [reply_lengths[i] for i in batch]])
    return rows


def logit_batches(order: list[int], reply_lengths: list[int], size: int, vocab: int) -> list[list[int]]:
    """`order` cut into consecutive batches of at most `size` rows whose logits (rows x (longest reply + 1) x
    vocab) stay within LOGITS_BUDGET; a row that alone exceeds it gets a batch of its own."""
    batches: list[list[int]] = []
    widest = 0
    for index in order:
        wider = max(widest, reply_lengths[index] + 1)
        if batches and len(batches[-1]) < size and (len(batches[-1]) + 1) * wider * vocab <= LOGITS_BUDGET:
            batches[-1].append(index)
            widest = wider
        else:
            batches.append([index])
            widest = reply_lengths[index] + 1
    return batches


def batch_size(setting: int | str, device: torch.device) -> int:
    """eval.batch_size on this device: a number as it is; "auto" as AUTO_BATCH_SIZE says."""
    if setting != "auto":
        return setting
    return AUTO_BATCH_SIZE["cpu" if device.type == "cpu" else "accelerator"]


def held_out_pairs(params: Params, tokenizer) -> list[tuple[list[int], list[int]]]:
    """The dpo stage's held-out pairs as (prompt, reply) ids, chosen then rejected, cut to dpo.max_length
    the way TRL truncates them (keeping the start)."""
    pairs, _ = dpo_dataset(DPO_DATA / "eval.jsonl", tokenizer, params.dpo.max_prompt_length)
    return [(pair["prompt_ids"], pair[side][: params.dpo.max_length - len(pair["prompt_ids"])])
            for pair in pairs for side in ("chosen_ids", "rejected_ids")]


def encoded_sets(sets: dict[str, list[dict]], tokenizer, budget: int, context: int) -> tuple[dict, dict, dict]:
    """Per prompt set: the prompt ids to generate from (fitted into the model's `context` window less the reply's
    `budget`), the (prompt ids, reference reply ids) to score perplexity on (fitted into `context`), and how many
    prompts lost their oldest turns."""
    if budget >= context:
        raise DataError(f"a reply budget of {budget} new tokens (eval.max_new_tokens) leaves no room for a prompt in "
                        f"the model's context window of {context} tokens")
    prompts, references, truncated = {}, {}, {}
    for name, examples in sets.items():
        prompts[name], references[name], truncated[name] = [], [], 0
        for example in examples:
            try:
                prompt, dropped = fit(tokenizer, example["prompt"], None, context - budget)
                scored, _ = fit(tokenizer, example["prompt"], example["completion"], context)
            except PromptTooLong as error:
                raise DataError(f"prompt set {name!r}, id {example['id']!r}: {error} (the model's context window "
                                f"of {context} tokens, a reply budget of {budget})") from None
            truncated[name] += dropped > 0
            prompts[name].append(encode(tokenizer, prompt)[0])
            references[name].append(encode(tokenizer, scored, example["completion"]))
    return prompts, references, truncated
