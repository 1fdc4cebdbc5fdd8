"""Taking the model out: GGUF files that transformers reads back with the stack's logits, an Ollama Modelfile
whose template renders what the chat template renders, half-precision folders that say what they cost, and
refusals that leave nothing half-written."""
import errno
import json
import os
import re

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from chattune.common.errors import ExportError
from chattune.export import exporting as export_tool
from chattune.export.gguf import llama_rows, modelfile
from chattune.export.merging import merged_model
from chattune.modeling.loading import load_tokenizer
from chattune.modeling.prompt import encode
from conftest import run, shared_file, smollm2_gguf
from tools import export as export_command

CONVERSATION = [{"role": "system", "content": "Be kind."},
                {"role": "user", "content": "I lost my job today."},
                {"role": "assistant", "content": "I'm so sorry. That is a hard day."},
                {"role": "user", "content": "Thanks. What should I do now?"}]
# Largest |logit difference| to the float32 merged model, as a share of its largest |logit|: f16 keeps 11
# significant bits of each weight (measured here: 0.1%); q8_0 stores blocks of 32 weights as 8-bit integers with
# one f16 scale each (measured: 2.4% on the tiny model).
TOLERANCE = {"f16": 0.005, "q8_0": 0.05}


# --- a small interpreter of the Go template subset the Modelfile uses ---------------------------------------

def go_render(template: str, messages: list[dict]) -> str:
    """`{{ range .Messages }}`, `{{ if eq .Role "x" }}` / `{{ else if ... }}` / `{{ end }}`, `{{ .Content }}`."""
    tokens = re.split(r"({{.*?}})", template)

    def block(position: int, message: dict | None) -> tuple[str, int]:
        out, active, taken = [], [True], [False]  # stacks for nested ifs within this block
        while position < len(tokens):
            token = tokens[position]
            action = token[2:-2].strip() if token.startswith("{{") else None
            position += 1
            if action is None:
                if all(active):
                    out.append(token)
            elif action == "range .Messages":
                start, rendered = position, ""
                for each in messages:
                    text, position = block(start, each)
                    rendered += text
                if not messages:
                    _, position = block(start, {"Role": None, "Content": ""})
                if all(active):
                    out.append(rendered)
            elif action.startswith(("if ", "else if ")):
                role = re.fullmatch(r'(?:else )?if eq \.Role "(\w+)"', action).group(1)
                if action.startswith("if "):
                    active.append(False)
                    taken.append(False)
                hit = not taken[-1] and message["Role"] == role
                active[-1] = hit
                taken[-1] = taken[-1] or hit
            elif action == "end":
                if len(active) == 1:
                    return "".join(out), position
                active.pop()
                taken.pop()
            elif action == ".Content":
                if all(active):
                    out.append(message["Content"])
            else:
                raise AssertionError(f"outside the subset: {token}")
        return "".join(out), position

    return block(0, None)[0]


def template_of(text: str) -> str:
    return re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)


def as_ollama(messages: list[dict]) -> list[dict]:
    return [{"Role": m["role"], "Content": m["content"]} for m in messages]


@pytest.fixture(scope="module")
def tinyllama():
    return AutoTokenizer.from_pretrained(shared_file("tinyllama", "tokenizer.json").parent)


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_gguf()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.parametrize("name, stops", [("tinyllama", ["</s>"]), ("smollm2", ["<|im_end|>", "<|im_start|>"])])
def test_the_modelfile_template_renders_what_the_chat_template_renders(name, stops, request):
    tokenizer = request.getfixturevalue(name)
    text = modelfile(tokenizer, "model-q8_0.gguf", "Be kind.")
    for turns in (CONVERSATION[:2], CONVERSATION):
        expected = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        assert go_render(template_of(text), as_ollama(turns)) == expected
    assert re.findall(r'^PARAMETER stop "(.*)"$', text, re.M) == stops  # the end of a turn, and the next one's start
    assert 'SYSTEM """Be kind."""' in text and text.startswith("FROM ./model-q8_0.gguf\n")


def test_the_interpreter_follows_the_go_subset():
    template = '{{ range .Messages }}{{ if eq .Role "user" }}U:{{ .Content }};{{ else if eq .Role "system" }}' \
               'S:{{ .Content }};{{ end }}{{ end }}A:'
    assert go_render(template, [{"Role": "system", "Content": "x"}, {"Role": "user", "Content": "y"},
                                {"Role": "assistant", "Content": "z"}]) == "S:x;U:y;A:"


def test_llama_rows_is_the_inverse_of_what_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3).numpy()
    back = LlamaTensorProcessor(config={})._reverse_permute_weights(llama_rows(weight, 2), 2, 2)
    assert (back == weight).all() and not (llama_rows(weight, 2) == weight).all()


@pytest.fixture(scope="module")
def merged_logits(pipeline):
    """The float32 merged DPO stack's logits on the conversation (the reference every export is held to)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pipeline)
        tokenizer = load_tokenizer()
        ids = torch.tensor([encode(tokenizer, CONVERSATION)[0]])
        with torch.no_grad():
            return ids, merged_model("dpo")(input_ids=ids).logits


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
def test_gguf_reads_back_with_the_merged_models_logits_and_template(kind, pipeline, merged_logits, tmp_path):
    out = tmp_path / kind
    result = run(["python", "-m", "tools.export", "--model", "dpo", "--format", "gguf", "--gguf-type", kind,
                  "--out", str(out)], pipeline)
    assert f"{out}/ (gguf, {kind}," in result.stdout
    name = f"model-{kind}.gguf"
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
    ids, reference = merged_logits
    with torch.no_grad():
        difference = (model(input_ids=ids).logits - reference).abs().max().item()
    scale = reference.abs().max().item()
    assert 0 < difference < TOLERANCE[kind] * scale  # the rounded model, close to the float32 one
    record = json.loads((out / "export.json").read_text())
    assert record["gguf_type"] == kind and 0 < record["max_logit_difference"] < TOLERANCE[kind] * scale
    assert record["files"][name] == (out / name).stat().st_size

    reader = gguf.GGUFReader(out / name)
    tokenizer = AutoTokenizer.from_pretrained(pipeline / "models" / "sft")
    template = reader.fields["tokenizer.chat_template"]
    assert template.contents() == tokenizer.chat_template
    read_back = AutoTokenizer.from_pretrained(out, gguf_file=name)
    assert read_back.chat_template == tokenizer.chat_template
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert read_back(text).input_ids == tokenizer(text).input_ids
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    assert types["blk.0.attn_q.weight"] == kind.upper() and types["output_norm.weight"] == "F32"
    modelfile_text = (out / "Modelfile").read_text()
    assert modelfile_text.startswith(f"FROM ./{name}\n")
    assert go_render(template_of(modelfile_text), as_ollama(CONVERSATION)) == text


def test_a_half_precision_folder_records_what_it_costs(pipeline, merged_logits, tmp_path):
    full, half = tmp_path / "f32", tmp_path / "bf16"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pipeline)
        exact = export_tool.export("dpo", full)
        record = export_tool.export("dpo", half, dtype="bfloat16")
    assert exact["max_logit_difference"] < export_tool.TOLERANCE
    assert export_tool.TOLERANCE < record["max_logit_difference"] < 0.5
    assert record["dtype"] == "bfloat16" and record["stack"] == ["base", "sft", "dpo"]
    ratio = record["files"]["model.safetensors"] / exact["files"]["model.safetensors"]
    assert 0.45 < ratio < 0.55
    model = AutoModelForCausalLM.from_pretrained(half)
    assert next(model.parameters()).dtype == torch.bfloat16
    card = (half / "README.md").read_text()
    assert "library_name: transformers" in card and "merged" in card


def test_refusals_leave_nothing_half_written(pipeline_copy, monkeypatch):
    for argv, message in ((["--format", "onnx"], "invalid choice: 'onnx'"),
                          (["--dtype", "int4"], "invalid choice: 'int4'"),
                          (["--format", "gguf", "--dtype", "bfloat16"], "--dtype applies to --format folder")):
        result = run(["python", "-m", "tools.export", "--out", "out", *argv], pipeline_copy, check=False)
        assert result.returncode == 2 and message in result.stderr and not (pipeline_copy / "out").exists()

    precious = pipeline_copy / "notes"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    result = run(["python", "-m", "tools.export", "--out", "notes"], pipeline_copy, check=False)
    assert result.returncode == 1 and "notes exists and is not an earlier export" in result.stderr
    assert (precious / "keep.txt").read_text() == "mine"

    earlier = export_tool.export("sft", pipeline_copy / "out")  # an earlier export is replaced in place...
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(export_tool, "write_gguf", full_disk)
    with pytest.raises(ExportError, match="the disk filled while writing out; nothing was left there"):
        export_command.main(["--out", "out", "--format", "gguf"])
    assert json.loads((pipeline_copy / "out" / "export.json").read_text()) == earlier  # ...only when complete
    assert not [p for p in pipeline_copy.iterdir() if p.name.startswith(".out.tmp-")]

    real_write_files = export_tool.write_files

    def a_file_arrives_meanwhile(*args, **kwargs):
        (pipeline_copy / "out" / "notes.txt").write_text("mine")
        return real_write_files(*args, **kwargs)

    monkeypatch.setattr(export_tool, "write_files", a_file_arrives_meanwhile)
    with pytest.raises(ExportError, match="out exists and is not an earlier export: it also holds notes.txt"):
        export_command.main(["--out", "out", "--model", "base"])
    assert (pipeline_copy / "out" / "notes.txt").read_text() == "mine"
    assert json.loads((pipeline_copy / "out" / "export.json").read_text()) == earlier


@pytest.mark.parametrize("record, extra", [
    ("{}", None),  # a record that lists no files: anyone could have written it
    ('{"files": {"model.safetensors": 8}}', "mydata.txt"),  # an earlier export, with a file of yours put beside it
    ("[" * 5000, None),
])
def test_only_a_folder_the_export_wrote_holding_only_its_files_is_replaced(tmp_path, record, extra):
    out = tmp_path / "out"
    out.mkdir()
    (out / "export.json").write_text(record)
    (out / "model.safetensors").write_bytes(b"weights!")
    (out / "mydata.txt").write_text("mine")
    with pytest.raises(ExportError, match="out exists and is not an earlier export"
                       + (f": it also holds {extra}" if extra else "")):
        export_tool.check_destination(out)
    (out / "mydata.txt").unlink()
    if extra:  # without the stranger, the earlier export may be replaced
        export_tool.check_destination(out)


def test_saved_weights_follow_the_umask_like_every_other_output(tmp_path):
    """safetensors writes its files private (0600); an output folder gives every file the umask's mode, so a
    teammate or a server running as another user can read the adapter `dvc pull` or the export put there."""
    from safetensors.torch import save_file

    from chattune.common.outputs import atomic_dir

    with atomic_dir(tmp_path / "adapter") as folder:
        save_file({"w": torch.zeros(2)}, folder / "adapter_model.safetensors")
        (folder / "adapter_config.json").write_text("{}")
    mask = os.umask(0)
    os.umask(mask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "adapter").iterdir()}
    assert modes == {"adapter_model.safetensors": 0o666 & ~mask, "adapter_config.json": 0o666 & ~mask}


def test_llama_cpp_answers_with_the_stacks_first_greedy_tokens(pipeline, tmp_path):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (`pip install llama-cpp-python` builds llama.cpp)")
    out = tmp_path / "f16"
    run(["python", "-m", "tools.export", "--model", "dpo", "--format", "gguf", "--gguf-type", "f16",
         "--out", str(out)], pipeline)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(pipeline)
        tokenizer = load_tokenizer()
        prompt = encode(tokenizer, CONVERSATION[:2])[0]
        with torch.no_grad():
            expected = merged_model("dpo").generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False)
    llm = llama_cpp.Llama(model_path=str(out / "model-f16.gguf"), n_ctx=512, verbose=False)
    text = tokenizer.decode(prompt)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == prompt  # the same ids from the same text
    produced = [token for _, token in zip(range(4), llm.generate(prompt, temp=0.0))]
    assert produced == expected[0, len(prompt):].tolist()
    # The k-quants users pick, made by llama.cpp's own quantizer, recorded as the others are.
    run(["python", "-m", "tools.export", "--model", "dpo", "--format", "gguf", "--gguf-type", "q4_k_m",
         "--out", str(tmp_path / "q4")], pipeline)
    record = json.loads((tmp_path / "q4" / "export.json").read_text())
    f16 = json.loads((out / "export.json").read_text())
    assert record["files"]["model-q4_k_m.gguf"] < 0.6 * f16["files"]["model-f16.gguf"]
    assert record["max_logit_difference"] > f16["max_logit_difference"]  # four bits lose more than sixteen


def test_the_gguf_names_the_pre_tokenizer_as_llama_cpp_does(tmp_path):
    """A byte-level BPE with GPT-2's split is "gpt-2"; a SentencePiece-style vocabulary with byte fallback (TinyLlama)
    is "default"; a split with no known name is refused, not guessed (SmolLM2's comes from its own GGUF:
    tests/test_real_model.py)."""
    from chattune.basemodel.tiny import train_tokenizer
    from chattune.export.gguf import pre_tokenizer

    train_tokenizer(["I've got 12 apples", "hello there"] * 20, 300, 64).save_pretrained(tmp_path / "tiny")
    assert pre_tokenizer(tmp_path / "tiny", None) == "gpt-2"
    assert pre_tokenizer(shared_file("tinyllama"), None) == "default"
    described = json.loads((tmp_path / "tiny" / "tokenizer.json").read_text())
    described["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁"}
    (tmp_path / "tiny" / "tokenizer.json").write_text(json.dumps(described))
    with pytest.raises(ExportError, match="no llama.cpp name is known here for the pre-tokenizer"):
        pre_tokenizer(tmp_path / "tiny", None)


def test_a_k_quant_without_llama_cpp_is_refused_before_any_work(pipeline_copy, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as where llama-cpp-python is not installed
    monkeypatch.setattr(export_tool, "merged_model", lambda level: pytest.fail("merged before refusing"))
    with pytest.raises(ExportError, match="--gguf-type q4_k_m is made by llama.cpp's own quantizer, which is not"):
        export_command.main(["--out", "out", "--format", "gguf", "--gguf-type", "q4_k_m"])
    assert not (pipeline_copy / "out").exists()
