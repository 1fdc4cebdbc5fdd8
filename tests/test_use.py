"""Chat and export on the embedded default's models."""
import io
import json
import subprocess
import sys

import torch

from chattune.conversation import Chat
from chattune.export.exporting import PROBE
from chattune.modeling.loading import load_model, load_tokenizer
from chattune.modeling.prompt import encode
from conftest import VENV_PATH, edit_params, run
from tools.chat import command


def test_prompt_mode_answers_once_and_exits(pipeline):
    result = run(["python", "-m", "tools.chat", "--model", "sft", "--prompt", "I failed my driving test again.",
                  "--max-new-tokens", "20"], pipeline)
    assert result.returncode == 0 and result.stdout.strip()


def test_chat_keeps_history_and_streams_the_reply(pipeline, monkeypatch):
    monkeypatch.chdir(pipeline)
    tokenizer = load_tokenizer()
    chat = Chat(load_model("sft", torch.float32), tokenizer, "Be kind.", max_new_tokens=12, temperature=0.0)
    streamed = io.StringIO()
    first = chat.reply("My dog died.", out=streamed)
    assert streamed.getvalue().strip() == first
    chat.reply("He was fourteen.", out=io.StringIO())
    assert [m["role"] for m in chat.messages()] == ["system", "user", "assistant", "user", "assistant"]
    assert chat.messages()[2]["content"] == first
    # The second prompt holds the whole conversation, through the chat template.
    rendered = tokenizer.decode(encode(tokenizer, chat.messages()[:4])[0])
    assert rendered.count("<|user|>") == 2 and "My dog died." in rendered and "<|system|>\nBe kind." in rendered
    assert command(chat, "/system Be brief.") and chat.system == "Be brief." and chat.history == []
    chat.reply("Hi", out=io.StringIO())
    assert command(chat, "/reset") and chat.history == []
    assert command(chat, "/exit") is False


def test_repl_reads_commands_from_the_terminal(pipeline):
    session = "I feel lonely.\n/system Answer briefly.\nStill lonely.\n/reset\n/exit\n"
    result = subprocess.run([sys.executable, "-m", "tools.chat", "--model", "base", "--max-new-tokens", "5"],
                            cwd=pipeline, input=session, capture_output=True, text=True, timeout=300,
                            env={"PATH": VENV_PATH, "HOME": str(pipeline)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("model> ") == 2
    assert "(system message set; conversation cleared)" in result.stdout and "(conversation cleared)" in result.stdout


def test_export_loads_without_peft_and_matches_the_adapter_stack(pipeline, tmp_path, monkeypatch):
    out = tmp_path / "exported"
    run(["python", "-m", "tools.export", "--model", "dpo", "--out", str(out)], pipeline)
    assert not any(p.name.startswith("adapter_") for p in out.iterdir())
    # A separate interpreter in which peft cannot even be imported loads it with plain transformers.
    script = (
        "import sys, json, torch; sys.modules['peft'] = None\n"
        "from transformers import AutoModelForCausalLM\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()\n"
        f"ids = torch.tensor([json.loads(sys.argv[1])])\n"
        "with torch.no_grad(): print(json.dumps(model(input_ids=ids).logits[0, -1].tolist()))\n"
    )
    monkeypatch.chdir(pipeline)
    ids = encode(load_tokenizer(), PROBE)[0]
    plain = subprocess.run([sys.executable, "-c", script, json.dumps(ids)], capture_output=True, text=True, check=True)
    exported_logits = torch.tensor(json.loads(plain.stdout))
    with torch.no_grad():
        stacked_logits = load_model("dpo", torch.float32)(input_ids=torch.tensor([ids])).logits[0, -1]
        base_logits = load_model("base", torch.float32)(input_ids=torch.tensor([ids])).logits[0, -1]
    assert torch.allclose(exported_logits, stacked_logits, atol=1e-4)
    assert not torch.allclose(exported_logits, base_logits, atol=1e-2)  # the adapters are really in it


def test_an_adapter_on_a_different_base_is_refused_by_name(pipeline_copy):
    edit_params(pipeline_copy / "params.yaml", seed=7)  # a different random base model
    run(["python", "-m", "stages.base_model"], pipeline_copy)
    for argv in (["python", "-m", "stages.evaluate"], ["python", "-m", "tools.chat", "--prompt", "hi"],
                 ["python", "-m", "tools.export", "--out", "exported"]):
        result = run(argv, pipeline_copy, check=False)
        assert result.returncode == 1
        assert "models/sft/ was trained on a different base model than the one in models/ now" in result.stderr
        assert "generate:" not in result.stderr  # refused before a single reply was generated
    assert not (pipeline_copy / "exported").exists()


def test_chat_budgets_prompts_from_the_models_context_not_sft_max_length(pipeline_copy):
    """The CPU presets' lengths: sft.max_length 160 and chat's default 256 new tokens. The budget used to be
    160 - 256 < 0, and every message was "too long"; the model's own context (1,024 here) is the limit."""
    edit_params(pipeline_copy / "params.yaml", **{"sft.max_length": 160})
    out = run(["python", "-m", "tools.chat", "--model", "dpo", "--prompt", "I lost my job today and I feel awful."],
              pipeline_copy).stdout
    assert out.strip() and "too long" not in out
    model = load_model("base", torch.float32)
    assert Chat(model, load_tokenizer(), "", max_new_tokens=256, temperature=0.0).budget == \
        model.config.max_position_embeddings - 256
