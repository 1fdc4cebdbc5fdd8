import pytest
import yaml

from conftest import ROOT, edit_params, run
from stages.params import ParamsError, load_params, parse_params


def committed_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def error_for(**changes) -> str:
    params = committed_params()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    with pytest.raises(ParamsError) as caught:
        parse_params(params)
    return str(caught.value)


def test_committed_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.sft.lora.r == 8 and params.sft.lora.alpha == 16 and params.sft.lr == pytest.approx(4e-5)
    assert params.dpo.lora.alpha == 32 and params.dpo.beta == pytest.approx(0.1)


def test_yaml_exponent_strings_are_coerced_to_floats():
    raw = yaml.safe_load("lr: 2e-4")  # YAML 1.1 reads this as a string
    assert raw["lr"] == "2e-4"
    params = committed_params()
    params["sft"]["lr"] = raw["lr"]
    assert parse_params(params).sft.lr == pytest.approx(2e-4)


@pytest.mark.parametrize("changes, expected", [
    ({"sft.lora.rank": 8}, "sft.lora.rank: unknown key"),
    ({"sft.lr": -1e-4}, "sft.lr: Input should be greater than 0"),
    ({"sft.epochs": "three"}, "sft.epochs: Input should be a valid integer"),
    ({"sft.format": "chatml"}, "sft.format: Input should be 'dialogue' or 'seed'"),
    ({"sft.lora.target_modules": ["qkv"]}, "sft.lora.target_modules.0"),
    ({"data.source": "local"}, "data: Value error, local_dir must name a directory"),
    ({"data.hub.empatheticdialogues_sha256": "abc"}, "data.hub.empatheticdialogues_sha256"),
    ({"dpo.beta": 0}, "dpo.beta: Input should be greater than 0"),
    ({"colour": "blue"}, "colour: unknown key"),
])
def test_bad_params_name_the_key(changes, expected):
    assert expected in error_for(**changes)


def test_missing_key_is_named():
    params = committed_params()
    del params["eval"]["max_new_tokens"]
    with pytest.raises(ParamsError, match="eval.max_new_tokens: Field required"):
        parse_params(params)


def test_a_stage_with_bad_params_exits_nonzero_naming_the_key(project):
    edit_params(project / "params.yaml", **{"sft.lora.r": -3})
    result = run(["python", "-m", "stages.preprocess"], project, check=False)
    assert result.returncode != 0
    assert "sft.lora.r: Input should be greater than 0" in result.stderr
    assert not (project / "data" / "processed").exists()
