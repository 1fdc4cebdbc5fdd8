"""base_model: put the base model in models/base/.

`model.name: tiny` (offline default): a byte-level BPE tokenizer trained on the committed sample text,
with TinyLlama's special tokens (<unk>=0, <s>=1, </s>=2, pad = </s>) and its exact chat template, and a
random-weight LlamaForCausalLM with TinyLlama's module names, so LoRA targets the same projections.
Any other name is a hub id: the revision is resolved to a commit, the weights are fetched into the
Hugging Face cache, and models/base/hub.json pins both.
"""
from __future__ import annotations

import json

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from stages.modeling import HUB_PIN, sample_texts, train_tokenizer
from stages.outputs import atomic_dir
from stages.params import TinyModelParams, load_params
from stages.paths import BASE_MODEL

def tiny_llama(shape: TinyModelParams, vocab_size: int, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_position,
        rms_norm_eps=1e-5,
        # Wider than the usual 0.02: with a frozen random lm_head of width 64, rows that small cap every
        # logit near 1, and no LoRA on the projections could make the next-token distribution peaked.
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def pin_hub_model(name: str, revision: str) -> dict:
    from huggingface_hub import HfApi, snapshot_download

    commit = HfApi().model_info(name, revision=revision).sha
    snapshot_download(name, revision=commit, allow_patterns=["*.json", "*.safetensors", "tokenizer.model"])
    return {"name": name, "revision": commit}


def main() -> None:
    params = load_params()
    with atomic_dir(BASE_MODEL) as out:
        if params.model.name == "tiny":
            shape = params.model.tiny
            tokenizer = train_tokenizer(sample_texts(), shape.vocab_size, shape.max_position)
            tiny_llama(shape, len(tokenizer), params.seed).save_pretrained(out)
            tokenizer.save_pretrained(out)
        else:
            (out / HUB_PIN.name).write_text(json.dumps(pin_hub_model(params.model.name, params.model.revision), indent=2))
    print(f"base_model: {params.model.name} -> {BASE_MODEL}/")


if __name__ == "__main__":
    main()
