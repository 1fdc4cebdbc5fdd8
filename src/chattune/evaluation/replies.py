"""How replies are generated wherever a model answers (evaluate, the judges' checks, chat, the pages): the context window, the reply budget, greedy or sampled decoding, left padding."""
from __future__ import annotations

import json
import math

import torch
from transformers import GenerationConfig

from chattune.common.errors import MissingOutput
from chattune.common.params import Params
from chattune.common.paths import LENGTHS
from chattune.modeling.loading import base_source


def context_window() -> int:
    """How many tokens the base model reads at once (its config's max_position_embeddings): a prompt and its reply
    share them. Not sft.max_length, which only bounds what training was shown."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(**base_source()).max_position_embeddings


def reply_budget(params: Params, lengths: dict | None = None) -> int:
    """How many new tokens a reply may take in evaluation (and in the tools that answer as evaluation does):
    eval.max_new_tokens when it is a number. When it is "auto", enough for what the data teaches, so that a model is
    not cut off for saying what it was trained to say: the larger of the 95th percentiles of SFT's training replies
    and of DPO's chosen replies. It depends on the data and the base model's tokenizer only, never on a training
    preset, so every preset is scored alike. `lengths`: preprocess's measurements (metrics/lengths.json, read from
    there when not given)."""
    if params.eval.max_new_tokens != "auto":
        return params.eval.max_new_tokens
    if lengths is None:
        if not LENGTHS.exists():
            raise MissingOutput(f"eval.max_new_tokens is auto, and {LENGTHS} (preprocess's reply lengths) is missing: "
                             "run `dvc repro preprocess` first, or give eval.max_new_tokens a number")
        lengths = json.loads(LENGTHS.read_text())
    return math.ceil(max(lengths["sft.train.reply_tokens.p95"], lengths["dpo.train.chosen_tokens.p95"]))


def generation_config(tokenizer, max_new_tokens: int, temperature: float) -> GenerationConfig:
    """Greedy at temperature 0, sampling exactly when temperature > 0 (the notebook passed a temperature
    without do_sample, so it was ignored); stops at EOS."""
    sampling = dict(do_sample=True, temperature=temperature) if temperature > 0 else dict(do_sample=False)
    return GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, **sampling)


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of prompts padded on the left, as generation needs, and its attention mask."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask
