"""preprocess: fixed evaluation sets whatever the preset, long dialogues fitted, DPO prompts opened like SFT's."""
import json

import pytest

from chattune.common import outputs
from chattune.common.outputs import read_jsonl
from chattune.common.params import compose, load_params
from chattune.common.paths import DPO_DATA, SFT_DATA
from chattune.data.parsing import listener_examples, parse_empathetic, read_bytes, split_pairs
from conftest import ROOT, edit_params
from stages import base_model, download, preprocess

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
        train, held_out = split_pairs(rows, train_size, eval_size=50, seed=1, group=str)
        assert held_out == split_pairs(rows, 10, eval_size=50, seed=1, group=str)[1] and len(held_out) == 50
        assert not set(train) & set(held_out) and len(train) == min(train_size, 950)
    assert len(split_pairs(rows[:100], 50, eval_size=1000, seed=1, group=str)[1]) == 10  # a tenth of a small set


def test_long_dialogues_are_fitted_and_counted(project):
    download.main()
    base_model.main()
    edit_params(project / "params.yaml", **{"sft.max_length": 120})
    preprocess.main()
    data = json.loads((project / "metrics/data.json").read_text())
    from chattune.modeling.loading import load_tokenizer
    from chattune.modeling.prompt import encode
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


@pytest.mark.parametrize("system", [None, "", "Talk like a friend."])  # None: as composed, the SFT prompt
def test_dpo_prompts_open_with_dpo_system_prompt(project, system):
    download.main()
    base_model.main()
    if system is not None:
        edit_params(project / "params.yaml", **{"dpo.system_prompt": system})
    preprocess.main()
    expected = load_params().sft.system_prompt if system is None else system
    for pair in read_jsonl(DPO_DATA / "train.jsonl"):
        assert [message["role"] for message in pair["prompt"]] == (["system", "user"] if expected else ["user"])
        if expected:
            assert pair["prompt"][0]["content"] == expected


HEADER = "conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags\n"


def conversation(conv_id: str, emotion: str, situation: str) -> str:
    return "".join(f"{conv_id},{i},{emotion},{situation},{i % 2},turn {i} of {conv_id},x,\n" for i in (1, 2, 3, 4))


def test_no_training_conversation_is_a_held_out_ones_twin(project):
    """EmpatheticDialogues' splits are by conversation; a training conversation that tells a valid or test
    conversation's situation again (case and spacing aside), or carries its id, would be a held-out prompt's training
    twin: it is left out of SFT, and counted."""
    raw = project / "data/sample/empatheticdialogues"
    (raw / "train.csv").write_text(HEADER + conversation("a", "sad", "My dog died.") + conversation(
        "b", "sad", "my  DOG died.") + conversation("c", "joyful", "I won the race.") + conversation(
        "v1", "proud", "I built a shed."))
    (raw / "valid.csv").write_text(HEADER + conversation("v1", "proud", "I painted my room."))
    (raw / "test.csv").write_text(HEADER + conversation("t1", "sad", "My dog died."))
    download.main()
    base_model.main()
    preprocess.main()
    data = json.loads((project / "metrics/data.json").read_text())
    assert data["sft.train.listener_turns.dropped.held_out_twin"] == 6  # a, b and v1: two listener turns each
    assert data["sft.train.listener_turns.kept"] == 2 and data["sft.situations_across_splits"] == 0
    assert {row["id"].split(":")[0] for row in read_jsonl(SFT_DATA / "train.jsonl")} == {"c"}
    assert {row["id"].split(":")[0] for row in read_jsonl(SFT_DATA / "test.jsonl")} == {"t1"}  # held-out sets intact


def test_no_real_test_situation_is_told_in_training():
    from chattune.data.parsing import HeldOut, normalised
    from conftest import shared_file

    folder = shared_file("ed-real")
    turns = {split: parse_empathetic(read_bytes(folder / f"{split}.csv"), split).records
             for split in ("train", "valid", "test")}
    held_out = HeldOut.of(turns["valid"] + turns["test"])
    examples = listener_examples(turns["train"], "", False, held_out)
    assert examples.records and examples.read == len(examples.records) + sum(examples.dropped.values())
    assert not {normalised(e["situation"]) for e in examples.records} & held_out.situations
    assert not {e["id"].split(":")[0] for e in examples.records} & held_out.conv_ids



def test_a_row_no_utf8_file_can_hold_is_counted_and_the_outputs_change_together(project, monkeypatch):
    """A DPO row with a lone surrogate escape is a counted drop; and a write that fails half-way (the disk fills
    at the sixth of seven outputs) leaves every output as the last run wrote it, none of them new."""
    processed(project)
    path = project / "data/raw/human_like_dpo/data.json"
    rows = json.loads(path.read_text())
    path.write_text(json.dumps([{**rows[0], "chosen": "hi \ud83d there"}] + rows[1:]))
    preprocess.main()
    metrics = json.loads((project / "metrics/data.json").read_text())
    assert metrics["dpo.rows.dropped.not_utf8"] == 1 and metrics["dpo.rows.read"] == len(rows)

    path.write_text(json.dumps(rows[: len(rows) // 2]))  # every DPO output and the metrics would change
    before = {out: out.read_bytes() for out in [*SFT_DATA.glob("*.jsonl"), *DPO_DATA.glob("*.jsonl"),
                                                project / "metrics/data.json", project / "metrics/lengths.json"]}
    real_fdopen, opened = outputs.os.fdopen, []

    def disk_fills(fd, *args, **kwargs):
        opened.append(fd)
        if len(opened) == 6:
            raise OSError(28, "No space left on device")
        return real_fdopen(fd, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(outputs.os, "fdopen", disk_fills)
        with pytest.raises(OSError, match="No space left"):
            preprocess.main()
    assert {out: out.read_bytes() for out in before} == before
    assert not [leftover for leftover in project.rglob("*.tmp-*")]
    preprocess.main()
    assert {out: out.read_bytes() for out in before} != before
