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
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from stages.modeling import HUB_PIN
from stages.outputs import atomic_dir
from stages.params import TinyModelParams, load_params
from stages.parsing import parse_dpo, parse_empathetic, read_bytes
from stages.paths import BASE_MODEL, DPO_FILE, DPO_SUBDIR, ED_SPLITS, ED_SUBDIR, SAMPLE_DIR

# TinyLlama-1.1B-Chat-v1.0's chat template (its tokenizer_config.json), character for character.
TINYLLAMA_CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2, as in TinyLlama


def sample_texts() -> list[str]:
    texts = ["<|system|>", "<|user|>", "<|assistant|>"]
    for split in ED_SPLITS:
        path = SAMPLE_DIR / ED_SUBDIR / f"{split}.csv"
        turns = parse_empathetic(read_bytes(path), str(path)).records
        texts += [t.text for t in turns] + sorted({t.situation for t in turns})
    path = SAMPLE_DIR / DPO_SUBDIR / DPO_FILE
    for pair in parse_dpo(read_bytes(path), str(path)).records:
        texts += [pair[key][0]["content"] for key in ("prompt", "chosen", "rejected")]
    return texts


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    ))
    # Like TinyLlama's tokenizer: plain encoding starts with <s>; chat templates add no BOS.
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>",
        padding_side="right",
        chat_template=TINYLLAMA_CHAT_TEMPLATE,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )


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
