"""The tiny profile's tokenizer: a byte-level BPE trained on the sample with TinyLlama's special tokens and exact chat template (the base_model stage builds it; the benchmark too)."""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from chattune.common.paths import DPO_FILE, DPO_SUBDIR, ED_SPLITS, ED_SUBDIR, SAMPLE_DIR
from chattune.data.parsing import parse_dpo, parse_empathetic, read_bytes

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
