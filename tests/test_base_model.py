import json

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from chattune.basemodel import tiny as tiny_profile
from chattune.common.params import load_params
from chattune.modeling import prompt
from chattune.modeling.loading import load_base_model, load_tokenizer
from conftest import shared_file, smollm2_gguf
from stages import base_model

CONVERSATION = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "My dog died, and I miss him."},
    {"role": "assistant", "content": "I'm so sorry. How long did you have him?"},
    {"role": "user", "content": "Fourteen years."},
]


@pytest.fixture
def tiny_base(project):
    base_model.main()
    return project


def test_tiny_tokenizer_has_tinyllamas_special_tokens(tiny_base):
    tokenizer = load_tokenizer()
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>" and tokenizer.padding_side == "right"
    assert tokenizer("I miss him.").input_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(tokenizer("I miss him, really.", add_special_tokens=False).input_ids) == "I miss him, really."


def test_chat_template_is_tinyllamas_exactly(tiny_base):
    reference = json.loads(shared_file("tinyllama", "tokenizer_config.json").read_text())["chat_template"]
    assert tiny_profile.TINYLLAMA_CHAT_TEMPLATE == reference
    tiny = load_tokenizer()
    real = AutoTokenizer.from_pretrained(shared_file("tinyllama"))
    for generation_prompt in (False, True):
        rendered = tiny.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=generation_prompt)
        assert rendered == real.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=generation_prompt)
    # Neither adds a BOS through the chat template; both add one on plain encoding.
    for tokenizer in (tiny, real):
        ids = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
        assert ids[0] != tokenizer.bos_token_id and tokenizer("x").input_ids[0] == tokenizer.bos_token_id


def test_tiny_model_has_tinyllamas_module_names(tiny_base):
    tiny = load_base_model(torch.float32)
    with torch.device("meta"):
        real = LlamaForCausalLM(LlamaConfig.from_pretrained(shared_file("tinyllama")))

    def linear_names(model):
        return {name.split(".")[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}

    assert linear_names(tiny) == linear_names(real) >= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert tiny.config.eos_token_id == 2 and tiny.config.bos_token_id == 1
    assert tiny.config.vocab_size == len(load_tokenizer())


def test_tiny_model_and_tokenizer_are_deterministic(project):
    shape = load_params().model.tiny
    texts = tiny_profile.sample_texts()
    first, second = (tiny_profile.train_tokenizer(texts, shape.vocab_size, shape.max_position) for _ in range(2))
    assert first.get_vocab() == second.get_vocab()
    a, b = (base_model.tiny_llama(shape, len(first), seed=3).state_dict() for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = base_model.tiny_llama(shape, len(first), seed=4).state_dict()
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_a_gguf_models_special_tokens_are_the_files_whatever_transformers_reads():
    """transformers 5.17 (the GPU machine's) reads SmolLM2's GGUF with <|im_start|> as EOS and no pad token;
    5.24 reads <|im_end|>, as the file says. base_model sets them from the file, so a reply is cut, trained and
    stopped at <|im_end|> under either version."""
    path = smollm2_gguf()
    assert base_model.gguf_special_tokens(path) == {"bos": ("<|im_start|>", 1), "eos": ("<|im_end|>", 2),
                                                   "unk": ("<|endoftext|>", 0), "pad": ("<|im_end|>", 2)}
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.eos_token, tokenizer.pad_token = "<|im_start|>", None  # as transformers 5.17 reads it
    reply = [{"role": "assistant", "content": "How long did you have him?"}]
    assert tokenizer.decode(prompt.encode(tokenizer, CONVERSATION, reply)[1][-2:]) == "<|im_end|>\n"  # one too many
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16,
                                         num_hidden_layers=1, num_attention_heads=2, eos_token_id=1, pad_token_id=None))
    base_model.with_gguf_special_tokens(tokenizer, model, path)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id) == (2, 2, 1)
    assert (model.config.eos_token_id, model.generation_config.eos_token_id, model.config.pad_token_id) == (2, 2, 2)
    assert tokenizer.decode(prompt.encode(tokenizer, CONVERSATION, reply)[1][-1:]) == "<|im_end|>"
