import pytest
import yaml

from chattune.common.errors import ParamsError
from chattune.common.params import CONF_DIR, compose, knobs, load_params, parse_params
from chattune.experiments import flatten as flat
from conftest import ROOT, edit_params, run

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SFT_SYSTEM_PROMPT = "You are a kind, attentive listener. Reply to the user with empathy, in a few sentences."


def composed(tmp_path, *overrides: str) -> dict:
    path = tmp_path / "params.yaml"
    compose(list(overrides), output=path, conf_dir=ROOT / CONF_DIR)
    return yaml.safe_load(path.read_text())


def error_for(**changes) -> str:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    with pytest.raises(ParamsError) as caught:
        parse_params(params)
    return str(caught.value)


def test_committed_params_are_the_default_composition(tmp_path):
    compose([], output=tmp_path / "params.yaml", conf_dir=ROOT / CONF_DIR)
    assert (tmp_path / "params.yaml").read_text() == (ROOT / "params.yaml").read_text()
    params = load_params(ROOT / "params.yaml")
    assert params.sft.lora.r == 8 and params.sft.lora.alpha == 16 and params.sft.lr == pytest.approx(4e-5)
    assert params.dpo.lora.alpha == 32 and params.dpo.beta == pytest.approx(0.1)


# The notebook's variants as reported: (r, alpha, train, eval, lr, batch, eval batch, warmup ratio)
SFT_TABLE = {
    "sft4": (8, 64, 1000, 100, 5e-5, 4, 4, 0.1),
    "sft5": (8, 64, 1000, 100, 5e-5, 3, 3, 0.05),
    "sft6": (8, 64, 5000, 500, 3e-5, 3, 3, 0.1),
    "sft7": (8, 16, 1000, 100, 4e-5, 4, 4, 0.05),
    "sft8": (8, 32, 5000, 500, 4e-5, 4, 4, 0.05),
}
# (r, alpha, target modules, train, eval, lr, batch, eval batch, max steps)
DPO_TABLE = {
    "dpo1": (8, 32, SEVEN, 9000, 1000, 5e-6, 2, 2, 500),
    "dpo2": (8, 16, ["q_proj", "k_proj", "v_proj"], 9000, 1000, 5e-6, 2, 2, 500),
    "dpo3": (8, 16, ["q_proj", "k_proj", "v_proj"], 9000, 1000, 3e-6, 3, 2, 800),
    "dpo4": (16, 32, ["q_proj", "v_proj"], 4500, 500, 3e-6, 3, 2, 800),
    "dpo5": (8, 16, ["q_proj", "k_proj", "v_proj"], 9000, 1000, 4e-6, 2, 2, 500),
}


@pytest.mark.parametrize("preset", SFT_TABLE)
def test_sft_preset_changes_exactly_the_tables_knobs(tmp_path, preset):
    r, alpha, train, held_out, lr, batch, eval_batch, warmup = SFT_TABLE[preset]
    # The notebook's held-out size (held_out) is no preset knob: every preset is scored on eval.sft_eval_size.
    expected = {"lora.r": r, "lora.alpha": alpha, "train_size": train, "lr": lr,
                "batch_size": batch, "eval_batch_size": eval_batch, "warmup_ratio": warmup,
                "lora.dropout": 0.05, "lora.target_modules": SEVEN, "epochs": 3,
                # what a step trained on the notebook's two T4s: its batch, 2 accumulated, on each GPU
                "examples_per_step": batch * 2 * 2,
                "scheduler": "cosine", "weight_decay": 0.01, "preset": preset}
    default, variant = composed(tmp_path), composed(tmp_path, f"sft={preset}")
    assert {k: v for k, v in flat(variant["sft"]).items() if k in expected} == expected
    changed = {k for k in flat(variant) if flat(variant)[k] != flat(default)[k]}
    assert changed == {f"sft.{k}" for k, v in expected.items() if flat(default["sft"])[k] != v}


@pytest.mark.parametrize("preset", DPO_TABLE)
def test_dpo_preset_changes_exactly_the_tables_knobs(tmp_path, preset):
    r, alpha, targets, train, held_out, lr, batch, eval_batch, steps = DPO_TABLE[preset]
    # The notebook's held-out size (held_out) is no preset knob: every preset is scored on eval.dpo_eval_size.
    expected = {"lora.r": r, "lora.alpha": alpha, "lora.target_modules": targets, "train_size": train, "lr": lr, "batch_size": batch, "eval_batch_size": eval_batch,
                "max_steps": steps, "lora.dropout": 0.05, "beta": 0.1, "warmup_steps": 10,
                "examples_per_step": batch * 4 * 2,  # pairs a step on the notebook's two T4s, 4 accumulated on each
                "max_prompt_length": 512, "max_length": 768,
                "system_prompt": SFT_SYSTEM_PROMPT, "max_epochs": 3, "preset": preset}
    default, variant = composed(tmp_path), composed(tmp_path, f"dpo={preset}")
    assert {k: v for k, v in flat(variant["dpo"]).items() if k in expected} == expected
    changed = {k for k in flat(variant) if flat(variant)[k] != flat(default)[k]}
    assert changed == {f"dpo.{k}" for k, v in expected.items() if flat(default["dpo"])[k] != v}


def test_dpo_opens_with_the_sft_system_prompt_unless_given_its_own(tmp_path):
    cpu = composed(tmp_path, "sft=cpu")
    assert cpu["dpo"]["system_prompt"] == cpu["sft"]["system_prompt"] == "You are a helpful assistant. Reply with empathy."
    assert composed(tmp_path, "sft.system_prompt=Be brief.")["dpo"]["system_prompt"] == "Be brief."
    assert composed(tmp_path, "dpo.system_prompt=''")["dpo"]["system_prompt"] == ""
    assert composed(tmp_path, "dpo.system_prompt=''")["sft"]["system_prompt"] == SFT_SYSTEM_PROMPT


@pytest.mark.parametrize("overrides", [
    ["model=tinyllama", "data=hub", "eval=roberta"],
    ["data=local", "data.local_dir=/srv/raw"],
    *[[f"sft={s}", f"dpo={d}"] for s in SFT_TABLE for d in DPO_TABLE],
])
def test_every_preset_validates_through_the_schema(tmp_path, overrides):
    composed(tmp_path, *overrides)  # compose() validates


def test_real_profile_pins_the_model_and_fetches_roberta(tmp_path):
    params = composed(tmp_path, "model=tinyllama", "data=hub", "eval=roberta")
    assert params["model"]["name"] == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert len(params["model"]["revision"]) == 40 and params["model"]["lr_scale"] == 1.0
    assert params["data"]["hub"]["empatheticdialogues_url"].endswith("empatheticdialogues.tar.gz")
    assert params["eval"]["bertscore_model"] == "roberta-large"


def test_preset_with_an_unknown_key_fails_validation(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    for path in (ROOT / CONF_DIR).rglob("*.yaml"):
        (conf / path.relative_to(ROOT / CONF_DIR)).parent.mkdir(parents=True, exist_ok=True)
        (conf / path.relative_to(ROOT / CONF_DIR)).write_text(path.read_text())
    (conf / "sft" / "typo.yaml").write_text("defaults:\n  - sft7\n  - _self_\nlearning_rate: 1.0e-4\n")
    with pytest.raises(ParamsError, match="sft.learning_rate: unknown key"):
        compose(["sft=typo"], output=tmp_path / "params.yaml", conf_dir=conf)


def test_a_preset_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(ParamsError, match="cannot compose 'sft=sft9' from .*: In 'config': Could not find 'sft/sft9'"):
        composed(tmp_path, "sft=sft9")
    with pytest.raises(ParamsError, match=r"cannot compose 'sft.lr=\[' from"):  # Hydra's own parse error
        composed(tmp_path, "sft.lr=[")


def test_yaml_exponent_strings_are_coerced_to_floats():
    raw = yaml.safe_load("lr: 2e-4")  # YAML 1.1 reads this as a string
    assert raw["lr"] == "2e-4"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["sft"]["lr"] = raw["lr"]
    assert parse_params(params).sft.lr == pytest.approx(2e-4)


@pytest.mark.parametrize("changes, expected", [
    ({"sft.lora.rank": 8}, "sft.lora.rank: unknown key"),
    ({"sft.max-length": 512}, "sft.max-length: unknown key"),
    ({"sft.lr": -1e-4}, "sft.lr: Input should be greater than 0"),
    ({"sft.epochs": "three"}, "sft.epochs: Input should be a valid integer"),
    ({"sft.format": "chatml"}, "sft.format: Input should be 'dialogue' or 'seed'"),
    ({"sft.lora.target_modules": []}, "sft.lora.target_modules"),
    ({"sft.lora.target_modules": "every-linear"}, "sft.lora.target_modules"),
    ({"sft.lr": float("inf")}, "sft.lr: Value error, a finite number, not inf"),
    ({"dpo.beta": float("nan")}, "dpo.beta: Value error, a finite number, not nan"),
    # booleans, text and sizes no run reaches: refused, each naming its key
    ({"sft.lr": True}, "sft.lr: Value error, a number, not a boolean"),
    ({"eval.temperature": True}, "eval.temperature: Value error, a number, not a boolean"),
    ({"sft.lr": "1_0"}, "sft.lr: Value error, a number, not the text '1_0'"),
    ({"sft.lr": "1e999"}, "sft.lr: Value error, a finite number, not inf"),
    ({"model.lr_scale": 1e308}, "model.lr_scale: Input should be less than or equal to 10000"),
    ({"model.lr_scale": 10_000, "sft.lr": 0.01}, "Value error, sft.lr x model.lr_scale is the rate used, 100"),
    ({"sft.batch_size": 10**30}, "sft.batch_size: Input should be less than or equal to 65536"),
    ({"eval.bootstrap_samples": 10**12}, "eval.bootstrap_samples: Input should be less than or equal to 100000"),
    ({"model.tiny.vocab_size": 10**12}, "model.tiny.vocab_size: Input should be less than or equal to 262144"),
    ({"eval.bertscore_model": ""}, "eval.bertscore_model: String should match pattern"),
    ({"eval.bertscore_model": " "}, "eval.bertscore_model: String should match pattern"),
    ({"sft.lora.target_modules": ["q_proj", " q_proj"]}, "sft.lora.target_modules.1: String should match pattern"),
    ({"eval.temperature": 1e-320}, "eval: Value error, temperature must be 0 (greedy) or at least 0.01"),
    ({"sft.lora.target_modules": ["q_proj", "q_proj"]}, "sft.lora.target_modules: Value error, names a module twice"),
    ({"sft.packing": 1}, "sft.packing: Input should be a valid boolean"),
    ({"sft.system_prompt": "x" * 20_001}, "sft.system_prompt: String should have at most 20000 characters"),
    ({"seed": 2**32}, "seed: Input should be less than 4294967296"),
    ({"sft.batch_size": True}, "sft.batch_size: Input should be a valid integer"),
    ({"eval.max_new_tokens": 2.0}, "eval.max_new_tokens: Input should be a valid integer or Input should be 'auto'"),
    ({"eval.max_new_tokens": 0}, "eval.max_new_tokens: Input should be greater than 0 or Input should be 'auto'"),
    ({"dpo.examples_per_step": 0}, "dpo.examples_per_step: Input should be greater than 0"),
    ({"dpo.use_system_prompt": True}, "dpo.use_system_prompt: unknown key"),  # now dpo.system_prompt
    ({"model.tiny.num_heads": 3}, "model.tiny: Value error, num_heads (3) must divide hidden_size (64)"),
    ({"model.tiny.num_kv_heads": 3}, "model.tiny: Value error, num_kv_heads (3) must divide num_heads (4)"),
    ({"dpo.warmup_steps": 600}, "dpo: Value error, warmup_steps (600) must not exceed max_steps (500)"),
    ({"data.source": "local"}, "data: Value error, local_dir must name a directory"),
    ({"data.source": "hub"}, "data: Value error, hub must give the download URLs"),
    ({"model.tiny": None}, "model: Value error, tiny gives the tiny model's shape: set it exactly when name is 'tiny'"),
    ({"model.revision": "main", "model.gguf": {"distribution": "d", "file": "f.gguf", "sha256": "0" * 64}},
     "model: Value error, revision must be null for a GGUF file"),
    ({"model.gguf": {"distribution": "d", "file": "f.gguf", "sha256": "abc"}}, "model.gguf.sha256: String should match"),
    ({"dpo.beta": 0}, "dpo.beta: Input should be greater than 0"),
    ({"sft.liger": "yes"}, "sft.liger"),
    ({"dpo.liger": 1}, "dpo.liger"),
    ({"colour": "blue"}, "colour: unknown key"),
    # the notebook's text is made of EmpatheticDialogues' emotion: no other data has one
    ({"sft.format": "seed", "data.sft": {"format": "messages", "own": {"files": {"train": "t.jsonl"}, "columns": {},
                                                                        "repo": None, "commit": None},
                                         "label": None, "group": None}},
     "<top level>: Value error, sft.format 'seed' writes EmpatheticDialogues' emotion as the instruction: it needs "
     "data.sft.format 'empathetic', not 'messages'"),
])
def test_bad_params_name_the_key(changes, expected):
    assert expected in error_for(**changes)


def test_missing_key_is_named():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    del params["eval"]["max_new_tokens"]
    with pytest.raises(ParamsError, match="eval.max_new_tokens: Field required"):
        parse_params(params)


def test_a_stage_with_bad_params_exits_nonzero_naming_the_key(project):
    edit_params(project / "params.yaml", **{"sft.lora.r": -3})
    result = run(["python", "-m", "stages.preprocess"], project, check=False)
    assert result.returncode != 0
    assert "sft.lora.r: Input should be greater than 0" in result.stderr
    assert not (project / "data" / "processed").exists()


def test_liger_auto_runs_the_kernels_where_they_run_and_true_insists(monkeypatch):
    import importlib.util

    import torch

    from chattune.training.batching import liger_kernels

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert liger_kernels("sft", "auto") is False and liger_kernels("sft", False) is False
    with pytest.raises(ParamsError, match="sft.liger: true, but Liger's kernels need a CUDA GPU and liger-kernel"):
        liger_kernels("sft", True)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel" else find_spec(name, *a))
    assert liger_kernels("dpo", "auto") is True and liger_kernels("dpo", True) is True
    assert liger_kernels("dpo", False) is False
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else find_spec(name, *a))
    assert liger_kernels("dpo", "auto") is False  # a GPU without liger-kernel installed


def test_params_that_yaml_cannot_read_name_the_file(tmp_path):
    """An integer of 5,000 digits, a nesting thousands deep, bytes that are not UTF-8: a message, no traceback."""
    for text in ["seed: " + "1" * 5000, "seed: " + "[" * 5000, "seed: 1\nname: \xff"]:
        path = tmp_path / "params.yaml"
        path.write_bytes(text.encode("latin-1"))
        with pytest.raises(ParamsError, match=f"{path}: cannot read params"):
            load_params(path)


def test_make_params_checks_before_it_writes(tmp_path):
    """A composition that does not validate leaves params.yaml as it was (`make params` with a bad override)."""
    target = tmp_path / "params.yaml"
    target.write_text((ROOT / "params.yaml").read_text())
    with pytest.raises(ParamsError, match=f"{target}: invalid params\n  sft.lr: Input should be greater than 0"):
        compose(["sft.lr=-1"], target, ROOT / "conf")
    assert target.read_text() == (ROOT / "params.yaml").read_text()
    assert [path.name for path in tmp_path.iterdir()] == ["params.yaml"]


def test_every_knob_is_explained_once_in_the_schema():
    """Each key has a description in the schema (`python -m chattune.common.params --describe` lists them), and the
    presets' shared files hold values, not explanations."""
    described = dict(knobs())
    assert all(described.values()), [key for key, text in described.items() if not text]
    assert {"sft.fill_gpu", "dpo.lora.target_modules", "eval.max_new_tokens", "data.hub.deadline_s"} <= set(described)
    for path in (ROOT / "conf").glob("*/_common.yaml"):
        assert not [line for line in path.read_text().splitlines()[1:] if line.lstrip().startswith("#")], path
    out = run(["python", "-m", "chattune.common.params", "--describe"], ROOT).stdout
    assert f"sft.fill_gpu: {described['sft.fill_gpu']}" in out
