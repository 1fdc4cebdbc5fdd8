"""The processed splits as the trainers take them: token ids through the one prompt format (chattune.modeling.prompt.encode), the loss on the replies and their EOS only."""
from __future__ import annotations

from datasets import Dataset, Features, Sequence, Value

from chattune.common.outputs import read_jsonl
from chattune.modeling.prompt import encode


def sft_dataset(path, tokenizer) -> Dataset:
    """An SFT split as token ids through the one prompt format (modeling.encode), with the reply (and its
    EOS) marked for the loss. preprocess already fitted every example into sft.max_length."""
    rows = []
    for example in read_jsonl(path):
        prompt, reply = encode(tokenizer, example["prompt"], example["completion"])
        rows.append({"input_ids": prompt + reply, "completion_mask": [0] * len(prompt) + [1] * len(reply)})
    return Dataset.from_list(rows)


def dpo_dataset(path, tokenizer, max_prompt_length: int) -> tuple[Dataset, int]:
    """A DPO split as token ids through the one prompt format, without the pairs whose prompt exceeds
    `max_prompt_length` tokens (TRL 1.x has no max_prompt_length), and how many were left out. The dpo
    stage trains on these; evaluate scores them."""
    rows, dropped = [], 0
    for pair in read_jsonl(path):
        prompt, chosen = encode(tokenizer, pair["prompt"], pair["chosen"])
        if len(prompt) > max_prompt_length:
            dropped += 1
            continue
        rows.append({"prompt_ids": prompt, "chosen_ids": chosen,
                     "rejected_ids": encode(tokenizer, pair["prompt"], pair["rejected"])[1]})
    return Dataset.from_list(rows, features=PAIR_FEATURES), dropped


PAIR_FEATURES = Features({name: Sequence(Value("int64")) for name in ("prompt_ids", "chosen_ids", "rejected_ids")})
