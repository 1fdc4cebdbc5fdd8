"""preprocess: fixed evaluation sets whatever the preset, long dialogues fitted, DPO prompts opened like SFT's."""
import json

import pytest

from stages import base_model, download, preprocess
from stages.outputs import read_jsonl
from stages.params import compose, load_params
from stages.parsing import listener_examples, parse_empathetic, read_bytes, split_pairs
from stages.paths import DPO_DATA, SFT_DATA

from conftest import ROOT, edit_params

EVAL_FILES = [SFT_DATA / "eval.jsonl", SFT_DATA / "test.jsonl", DPO_DATA / "eval.jsonl"]


def processed(project, *overrides) -> dict:
    compose(list(overrides), output=project / "params.yaml", conf_dir=ROOT / "conf")
    for stage in (download, base_model, preprocess):
        stage.main()
    return {path: path.read_bytes() for path in EVAL_FILES}


@pytest.mark.parametrize("presets", [("sft=sft4", "sft=sft6"), ("dpo=dpo1", "dpo=dpo4")])
def test_presets_are_scored_on_byte_identical_eval_sets(project, presets):
    first = processed(project, presets[0])
    knobs = load_params()
    second = processed(project, presets[1])
    assert knobs != load_params()  # the notebook's presets held out 100 vs 500 examples, 1000 vs 500 pairs
    for path in EVAL_FILES:
        assert first[path] == second[path], path


def test_held_out_pairs_never_depend_on_the_train_size():
    rows = list(range(1000))
    for train_size in (10, 400, 9000):
        train, held_out = split_pairs(rows, train_size, eval_size=50, seed=1)
        assert held_out == split_pairs(rows, 10, eval_size=50, seed=1)[1] and len(held_out) == 50
        assert not set(train) & set(held_out) and len(train) == min(train_size, 950)
    assert len(split_pairs(rows[:100], 50, eval_size=1000, seed=1)[1]) == 10  # a tenth of a small set


def test_long_dialogues_are_fitted_and_counted(project):
    download.main()
    base_model.main()
    edit_params(project / "params.yaml", **{"sft.max_length": 120})
    preprocess.main()
    data = json.loads((project / "metrics/data.json").read_text())
    from stages.modeling import encode, load_tokenizer
    tokenizer = load_tokenizer()
    # Dropped as too long: exactly the examples whose system message, last message and reply alone exceed 120.
    path = project / "data/raw/empatheticdialogues/train.csv"
    examples = listener_examples(parse_empathetic(read_bytes(path), str(path)).records,
                                 load_params().sft.system_prompt, False).records
    too_long = sum(sum(map(len, encode(tokenizer, e["prompt"][:1] + e["prompt"][-1:], e["completion"]))) > 120
                   for e in examples)
    assert data["sft.train.listener_turns.dropped.too_long"] == too_long > 0
    assert data["sft.train.truncated"] > 0
    for prefix in ("sft.train", "sft.eval", "sft.test"):
        turns = f"{prefix}.listener_turns"
        assert data[f"{turns}.read"] == data[f"{turns}.kept"] + data[f"{turns}.dropped.missing_earlier_turn"] \
            + data[f"{turns}.dropped.too_long"]
    for example in read_jsonl(SFT_DATA / "train.jsonl"):
        assert sum(map(len, encode(tokenizer, example["prompt"], example["completion"]))) <= 120
        assert example["prompt"][1]["role"] == "user"  # what is left starts with the speaker's turn


@pytest.mark.parametrize("use_system_prompt", [True, False])
def test_dpo_prompts_carry_the_sft_system_prompt_unless_told_not_to(project, use_system_prompt):
    download.main()
    base_model.main()
    edit_params(project / "params.yaml", **{"dpo.use_system_prompt": use_system_prompt})
    preprocess.main()
    system = load_params().sft.system_prompt
    for pair in read_jsonl(DPO_DATA / "train.jsonl"):
        roles = [message["role"] for message in pair["prompt"]]
        assert roles == (["system", "user"] if use_system_prompt else ["user"])
        if use_system_prompt:
            assert pair["prompt"][0]["content"] == system
