"""Data of your own: each chat and preference format, written from the real EmpatheticDialogues and Human-Like-DPO
rows, gives the rows the built-in parsers give; bad files stop naming the file, row and field; bad conversations are
counted; held-out splits are fixed; the preprocess and judges stages run on a format of your own."""
import csv
import json

import pyarrow
import pyarrow.parquet as parquet
import pytest
import yaml

from chattune.common.errors import DataError, ParamsError
from chattune.common.outputs import read_jsonl
from chattune.common.params import CONF_DIR, compose, parse_params
from chattune.data.formats import (
    Conversation,
    HeldOutConversations,
    parse_conversations,
    parse_preferences,
    read_rows,
    reply_examples,
)
from chattune.data.inputs import hold_out
from chattune.data.parsing import conversations, listener_examples, parse_dpo, parse_empathetic, read_bytes
from conftest import ROOT, edit_params, metrics, shared_file

SYSTEM = "You are a kind listener."


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def as_conversations(raw: bytes, name: str, system_prompt: str = SYSTEM) -> list[dict]:
    """EmpatheticDialogues rows as conversations: the turns up to the first gap, ending at the last listener turn,
    opened by the system turn the built-in path writes; the emotion, the situation and the id as columns."""
    found = []
    for conv_id, turns in conversations(parse_empathetic(raw, name).records).items():
        whole = next((i for i, t in enumerate(turns) if t.idx != i + 1), len(turns))
        turns = turns[: whole - (whole % 2)]
        if not turns:
            continue
        system = f"{system_prompt}\nWhat the user is going through: {turns[0].situation}"
        found.append({"id": conv_id, "emotion": turns[0].emotion, "situation": turns[0].situation, "system": system,
                      "turns": [("user" if t.idx % 2 else "assistant", t.text) for t in turns]})
    return found


def written(conversation: dict, fmt: str) -> dict:
    """One conversation as a row of `fmt`; alpaca and prompt_completion keep its first exchange only."""
    columns = {"id": conversation["id"], "feeling": conversation["emotion"], "situation": conversation["situation"]}
    system, turns = conversation["system"], conversation["turns"]
    if fmt == "messages":
        return {**columns, "messages": [{"role": "system", "content": system}]
                + [{"role": role, "content": text} for role, text in turns]}
    if fmt == "sharegpt":
        return {**columns, "conversations": [{"from": "system", "value": system}]
                + [{"from": {"user": "human", "assistant": "gpt"}[role], "value": text} for role, text in turns]}
    if fmt == "alpaca":
        return {**columns, "system": system, "instruction": turns[0][1], "input": "", "output": turns[1][1]}
    return {**columns, "system": system, "prompt": turns[0][1], "completion": turns[1][1]}


def without_situation(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "situation"} for row in rows]


@pytest.mark.parametrize("fmt", ["messages", "sharegpt", "alpaca", "prompt_completion"])
def test_each_sft_format_of_the_real_rows_gives_the_built_in_examples(fmt, tmp_path):
    for split in ("train", "valid", "test"):
        raw = read_bytes(shared_file("ed-real", f"{split}.csv"))
        built_in = listener_examples(parse_empathetic(raw, split).records, SYSTEM, seed_format=False).records
        if fmt in ("alpaca", "prompt_completion"):  # one exchange per row: the first listener turn of each
            built_in = [example for example in built_in if example["id"].endswith(":2")]
        path = tmp_path / f"{split}.jsonl"
        path.write_bytes(jsonl([written(c, fmt) for c in as_conversations(raw, split)]))
        parsed = parse_conversations(path.read_bytes(), str(path), fmt, {"emotion": "feeling"}, "feeling", "situation")
        assert parsed.read == len(parsed.records) > 0
        examples = reply_examples(parsed.records, SYSTEM).records
        assert len(examples) == len(built_in) > 0
        assert without_situation(examples) == without_situation(built_in)


def test_a_table_reads_the_same_from_jsonl_json_csv_and_parquet(tmp_path):
    rows = [{"prompt": "I lost my keys.", "completion": "That is annoying.", "system": ""},
            {"prompt": "My cat, Tom, is ill.", "completion": "I'm sorry \"Tom\" is ill.", "system": "Be kind."}]
    (tmp_path / "a.jsonl").write_bytes(jsonl(rows))
    (tmp_path / "a.json").write_text(json.dumps(rows))
    with open(tmp_path / "a.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    parquet.write_table(pyarrow.Table.from_pylist(rows), tmp_path / "a.parquet")
    found = {suffix: parse_conversations(read_bytes(tmp_path / f"a.{suffix}"), f"a.{suffix}", "prompt_completion", {},
                                         None, None).records for suffix in ("jsonl", "json", "csv", "parquet")}
    assert found["jsonl"] == found["json"] == found["csv"] == found["parquet"]
    assert [c.turns for c in found["csv"]] == [(("user", "I lost my keys."), ("assistant", "That is annoying.")),
                                               (("system", "Be kind."), ("user", "My cat, Tom, is ill."),
                                                ("assistant", "I'm sorry \"Tom\" is ill."))]


@pytest.mark.parametrize("name, body, fmt, message", [
    ("d.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n{"dialog": []}\n', "messages",
     r"d.jsonl:2: no column 'messages'; the row has 'dialog'"),
    ("d.jsonl", b'{"messages": "hi"}\n', "messages", r"d.jsonl:1: column 'messages' must be list, not str"),
    ("d.jsonl", b'{"messages": [{"role": "bot", "content": "hi"}]}\n', "messages",
     r"d.jsonl:1: messages\[0\]: unknown role 'bot'"),
    ("d.jsonl", b'{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}\n', "messages",
     r"d.jsonl:1: messages\[1\]: a system turn comes first or not at all"),
    ("d.json", b'{"conversations": []}', "sharegpt", r"d.json: expected a JSON array of objects, got dict"),
    ("d.json", b'[{"conversations": [{"from": "human"}]}]', "sharegpt",
     r"d.json: item 1: conversations\[0\]: a turn is an object with the strings 'from' and 'value'"),
    ("d.csv", b'instruction,output\nhi,"un,closed\n', "alpaca", r"d.csv:2: not a CSV file"),
    ("d.csv", b'instruction,output\nhi,there,extra\n', "alpaca", r"d.csv:2: 3 fields where the header names 2"),
    ("d.csv", b'instruction,output,output\nhi,a,b\n', "alpaca", r"d.csv:1: the header names 'output' twice"),
    ("d.jsonl", b'{"id": [1], "prompt": "a", "completion": "b"}\n', "prompt_completion",
     r"d.jsonl:1: column 'id' \(the id\) must hold text or a whole number, not list"),
    ("d.jsonl", b'{"id": 7, "prompt": "a", "completion": "b"}\n{"id": "7", "prompt": "c", "completion": "d"}\n',
     "prompt_completion", r"d.jsonl:2: the id '7' is already the id of d.jsonl:1"),
    ("d.jsonl", b'{"prompt": null, "completion": "b"}\n', "prompt_completion", r"d.jsonl:1: column 'prompt' is empty"),
    ("d.parquet", b"PAR1 not really", "alpaca", r"d.parquet: not a Parquet file"),
    ("d.txt", b"hi", "alpaca", r"d.txt: a data file ends in .jsonl, .json, .csv or .parquet"),
    ("d.jsonl", b'{"prompt": "hi", "completion": 5}\n', "prompt_completion",
     r"d.jsonl:1: column 'completion' must be str, not int"),
])
def test_a_file_that_is_not_what_its_format_says_stops_naming_file_row_and_field(name, body, fmt, message):
    with pytest.raises(DataError, match=message):
        parse_conversations(body, name, fmt, {}, None, None)


def test_a_column_map_renames_and_a_missing_mapped_column_says_both_names():
    body = jsonl([{"q": "hi", "a": "hello"}])
    parsed = parse_conversations(body, "d.jsonl", "prompt_completion", {"prompt": "q", "completion": "a"}, None, None)
    assert parsed.records[0].turns == (("user", "hi"), ("assistant", "hello"))
    with pytest.raises(DataError, match=r"d.jsonl:1: no column 'answer' \(mapped from 'completion'\)"):
        parse_conversations(body, "d.jsonl", "prompt_completion", {"prompt": "q", "completion": "answer"}, None, None)
    with pytest.raises(DataError, match=r"d.jsonl:1: no label in column 'topic'"):
        parse_conversations(body, "d.jsonl", "prompt_completion", {"prompt": "q", "completion": "a"}, "topic", None)


def test_bad_conversations_are_dropped_and_counted_by_reason():
    def chat(*turns):
        return {"messages": [{"role": role, "content": text} for role, text in turns]}

    rows = [chat(("user", "hi"), ("assistant", "hello")),
            chat(("user", "hi"), ("assistant", "hello")),  # a duplicate
            chat(("user", "hi"), ("assistant", "  ")),  # an empty reply
            chat(("user", "hi"), ("assistant", "hello"), ("user", "and?")),  # no reply at the end
            chat(("user", "x" * 20_001), ("assistant", "long")),
            {"messages": [{"role": "user", "content": "\ud83d"}, {"role": "assistant", "content": "ok"}]}]
    body = "".join(json.dumps(row) + "\n" for row in rows).encode()
    parsed = parse_conversations(body, "d.jsonl", "messages", {}, None, None)
    assert parsed.read == 6 and len(parsed.records) == 1
    assert dict(parsed.dropped) == {"duplicate": 1, "empty_turn": 1, "no_reply_at_end": 1, "field_too_long": 1,
                                    "not_utf8": 1}
    out_of_order = [chat(("assistant", "hello")), chat(("user", "a"), ("assistant", "b"), ("assistant", "c")),
                    {"id": "\ud800", **chat(("user", "a"), ("assistant", "b"))}]
    body = "".join(json.dumps(row) + "\n" for row in out_of_order).encode()
    assert dict(parse_conversations(body, "d.jsonl", "messages", {}, None, None).dropped) == {
        "turns_out_of_order": 2, "not_utf8": 1}


def test_every_assistant_turn_trains_with_its_history_and_the_own_system_turn_wins():
    conversation = Conversation("c", "g", None, (("system", "Be brief."), ("user", "a"), ("assistant", "b"),
                                                 ("user", "c"), ("assistant", "d")))
    examples = reply_examples([conversation], SYSTEM).records
    assert [e["id"] for e in examples] == ["c:2", "c:4"]
    assert examples[1]["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
                                     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert examples[1]["completion"] == [{"role": "assistant", "content": "d"}]
    plain = reply_examples([Conversation("c", "g", None, (("user", "a"), ("assistant", "b")))], SYSTEM).records
    assert plain[0]["prompt"][0] == {"role": "system", "content": SYSTEM}
    twins = reply_examples([conversation], SYSTEM, HeldOutConversations.of([Conversation("x", "g", None, ())]))
    assert twins.records == [] and twins.dropped["held_out_twin"] == 2


def test_held_out_groups_are_whole_fixed_and_sized_by_replies():
    convs = [Conversation(f"c{i}", f"g{i // 3}", None, (("user", "q"), ("assistant", f"r{i}"))) for i in range(300)]
    rest, held = hold_out(convs, 12, seed=7)
    assert 12 - 2 <= sum(1 for _ in held) <= 12 and len(rest) + len(held) == 300
    assert not {c.group for c in rest} & {c.group for c in held}  # no group on both sides
    assert hold_out(convs, 12, seed=7)[1] == held  # the same for every preset: rows, seed and size decide
    assert hold_out(convs[::-1], 12, seed=7)[1] != [] and hold_out(convs, 12, seed=8)[1] != held


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_real_preference_rows_read_the_same_in_every_format(suffix, tmp_path):
    raw = read_bytes(shared_file("human-like-dpo", "dpo_dataset_part1.json"))
    built_in = parse_dpo(raw, "part1", SYSTEM)
    items = json.loads(raw)
    renamed = [{"question": item["prompt"], "chosen": item["chosen"], "rejected": item["rejected"]} for item in items]
    path = tmp_path / f"pairs.{suffix}"
    if suffix == "jsonl":
        path.write_bytes(jsonl(renamed))
    elif suffix == "csv":
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["question", "chosen", "rejected"])
            writer.writeheader()
            writer.writerows(renamed)
    else:
        parquet.write_table(pyarrow.Table.from_pylist(renamed), path)
    parsed = parse_preferences(read_bytes(path), str(path), "strings", {"prompt": "question"}, SYSTEM)
    assert parsed.records == built_in.records and len(parsed.records) > 100
    assert parsed.read == built_in.read and dict(parsed.dropped) == {k: v for k, v in built_in.dropped.items() if v}

    conversational = [{"prompt": [{"role": "user", "content": item["prompt"]}],
                       "chosen": [{"role": "assistant", "content": item["chosen"]}],
                       "rejected": {"role": "assistant", "content": item["rejected"]}} for item in items]
    again = parse_preferences(jsonl(conversational), "pairs.jsonl", "conversational", {}, SYSTEM)
    assert again.records == built_in.records


def test_a_conversational_pair_must_hold_one_assistant_turn():
    row = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "user", "content": "x"}],
           "rejected": [{"role": "assistant", "content": "y"}]}
    with pytest.raises(DataError, match=r"p.jsonl:1: column 'chosen' must hold an assistant turn, not a user turn"):
        parse_preferences(jsonl([row]), "p.jsonl", "conversational", {}, "")
    row["chosen"] = []
    with pytest.raises(DataError, match=r"p.jsonl:1: column 'chosen' must hold one assistant turn, not 0"):
        parse_preferences(jsonl([row]), "p.jsonl", "conversational", {}, "")


def own(**data) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(data)
    return params


@pytest.mark.parametrize("data, message", [
    ({"sft": {"format": "messages", "own": None, "label": None, "group": None}}, "data.sft"),
    ({"sft": {"format": "messages", "own": {"files": {"valid": "v.jsonl"}, "columns": {}, "repo": None,
                                            "commit": None}, "label": None, "group": None}}, "must name a train file"),
    ({"sft": {"format": "messages", "own": {"files": {"train": "../t.jsonl"}, "columns": {}, "repo": None,
                                            "commit": None}, "label": None, "group": None}}, "without '.', '..'"),
    ({"sft": {"format": "messages", "own": {"files": {"train": "chats.txt"}, "columns": {}, "repo": None,
                                            "commit": None}, "label": None, "group": None}}, "a data file ends in"),
    ({"sft": {"format": "prompt_completion", "own": {"files": {"train": "t.csv"}, "columns": {"prompt": "q",
     "completion": "q"}, "repo": None, "commit": None}, "label": None, "group": None}}, "two fields to the column 'q'"),
    ({"sft": {"format": "messages", "own": {"files": {"train": "t.csv"}, "columns": {"chosen": "x"}, "repo": None,
                                            "commit": None}, "label": None, "group": None}}, "does not read"),
    ({"sft": {"format": "messages", "own": {"files": {"train": "t.jsonl"}, "columns": {}, "repo": "me/chats",
                                            "commit": None}, "label": None, "group": None}}, "repo and commit go"),
    ({"sft": {"format": "messages", "own": {"files": {"train": "t.jsonl"}, "columns": {}, "repo": "me/chats",
                                            "commit": "a" * 40}, "label": None, "group": None}},
     "exactly when source is 'hub'"),
    ({"dpo": {"format": "strings", "own": {"files": {"train": "p.jsonl", "test": "q.jsonl"}, "columns": {},
                                           "repo": None, "commit": None}}}, "train and eval, not"),
])
def test_the_params_refuse_data_that_cannot_be_read(data, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(own(**data))


def test_preprocess_and_judges_run_on_chats_of_your_own(pipeline_copy):
    """The sample's conversations as a messages file with its own splits: preprocess writes the built-in rows; as
    one sharegpt file without labels, the splits are held out by group and the emotion judge is left out."""
    from stages import judges, preprocess

    raw = pipeline_copy / "data/raw"
    system = yaml.safe_load((pipeline_copy / "params.yaml").read_text())["sft"]["system_prompt"]
    for split in ("train", "valid", "test"):
        convs = as_conversations(read_bytes(raw / f"empatheticdialogues/{split}.csv"), split, system)
        (raw / f"mine/{split}.jsonl").parent.mkdir(exist_ok=True)
        (raw / f"mine/{split}.jsonl").write_bytes(jsonl([written(c, "messages") for c in convs]))
    built_in = {split: read_jsonl(pipeline_copy / f"data/processed/sft/{split}.jsonl") for split in ("train", "eval",
                                                                                                      "test")}
    files = {split: f"mine/{split}.jsonl" for split in ("train", "valid", "test")}
    edit_params(pipeline_copy / "params.yaml", **{"data.sft": {
        "format": "messages", "own": {"files": files, "columns": {}, "repo": None, "commit": None},
        "label": "feeling", "group": "situation"}})
    preprocess.main()
    for split, rows in built_in.items():
        mine = read_jsonl(pipeline_copy / f"data/processed/sft/{split}.jsonl")
        assert len(rows) > 0 and without_situation(mine) == without_situation(rows)
    data = metrics(pipeline_copy, "data")
    assert data["sft.train.conversations.read"] > data["sft.train.conversations.kept"] - 1 > 0
    assert data["sft.train.replies.dropped.held_out_twin"] == 0  # the sample tells no held-out situation in train

    one_file = [written(c, "sharegpt") for split in ("train", "valid", "test")
                for c in as_conversations(read_bytes(raw / f"empatheticdialogues/{split}.csv"), split)]
    (raw / "mine/all.jsonl").write_bytes(jsonl(one_file))
    edit_params(pipeline_copy / "params.yaml", **{"data.sft": {
        "format": "sharegpt", "own": {"files": {"train": "mine/all.jsonl"}, "columns": {}, "repo": None,
                                      "commit": None}, "label": None, "group": "situation"}})
    preprocess.main()
    split_rows = {split: read_jsonl(pipeline_copy / f"data/processed/sft/{split}.jsonl") for split in built_in}
    conversation_of = {c["id"]: c["situation"] for c in one_file}
    situations = {split: {conversation_of[e["id"].rsplit(":", 1)[0]] for e in rows} for split, rows in split_rows.items()}
    assert not situations["train"] & (situations["eval"] | situations["test"])  # whole groups held out
    assert all(e["emotion"] is None for rows in split_rows.values() for e in rows)
    preprocess.main()
    assert read_jsonl(pipeline_copy / "data/processed/sft/test.jsonl") == split_rows["test"]  # fixed
    judges.main()
    found = metrics(pipeline_copy, "judges")
    assert found["emotion.available"] is False and "emotion.valid_accuracy" not in found
    assert not (pipeline_copy / "models/judges/emotion.joblib").exists()
    assert found["humanlike.held_out_pairs"] > 0

    # A label column with one value cannot train the emotion judge: said, naming the key.
    (raw / "mine/all.jsonl").write_bytes(jsonl([{**row, "feeling": "same"} for row in one_file]))
    edit_params(pipeline_copy / "params.yaml", **{"data.sft.label": "feeling"})
    with pytest.raises(DataError, match=r"data.sft.label: the column 'feeling' holds 1 value\(s\)"):
        judges.main()

    # Preference pairs with an eval file of their own: the training pairs that ask its prompts are left out, counted.
    pairs = json.loads((raw / "human_like_dpo/data.json").read_text())
    as_turns = [{"prompt": [{"role": "user", "content": p["prompt"]}], "chosen": {"role": "assistant", "content":
                 p["chosen"]}, "rejected": {"role": "assistant", "content": p["rejected"]}} for p in pairs]
    (raw / "mine/pairs.jsonl").write_bytes(jsonl(as_turns))
    (raw / "mine/pairs-eval.jsonl").write_bytes(jsonl(as_turns[:40]))
    edit_params(pipeline_copy / "params.yaml", **{"data.sft.label": None, "data.dpo": {
        "format": "conversational", "own": {"files": {"train": "mine/pairs.jsonl", "eval": "mine/pairs-eval.jsonl"},
                                            "columns": {}, "repo": None, "commit": None}}})
    preprocess.main()
    data = metrics(pipeline_copy, "data")
    twins = data["dpo.train.dropped.held_out_twin"]
    assert twins >= 36 and twins + data["dpo.train.pairs"] == data["dpo.rows.kept"]  # 40 asked, a few rows bad
    held = {row["prompt"][-1]["content"] for row in read_jsonl(pipeline_copy / "data/processed/dpo/eval.jsonl")}
    trained = {row["prompt"][-1]["content"] for row in read_jsonl(pipeline_copy / "data/processed/dpo/train.jsonl")}
    assert held and not held & trained


def test_an_evaluation_without_labels_leaves_the_emotion_metric_out():
    from chattune.evaluation.judging import Judges
    from stages.evaluate import judged

    class Always:
        def predict_proba(self, texts):
            import numpy as np

            return np.tile([0.2, 0.8], (len(texts), 1))

    found = judged(Judges(Always(), None), ["hi", "there"], [{"emotion": None}, {"emotion": None}])
    assert set(found) == {"humanlike"}


def test_the_format_presets_compose_and_validate(tmp_path):
    for preset in sorted(p.stem for p in (ROOT / "conf/data").glob("*.yaml") if p.stem not in ("_builtin", "local")):
        path = tmp_path / f"{preset}.yaml"
        compose([f"data={preset}"], output=path, conf_dir=ROOT / CONF_DIR)
        params = parse_params(yaml.safe_load(path.read_text()), path)
        for own_data in (params.data.sft.own, params.data.dpo.own):
            for file in (own_data.files.values() if own_data and params.data.source == "sample" else []):
                assert (ROOT / "data/sample" / file).is_file(), f"data={preset}: data/sample/{file} is missing"
                read_rows(read_bytes(ROOT / "data/sample" / file), file)



def test_hostile_rows_are_bounded_dropped_or_named(tmp_path, monkeypatch):
    from chattune.data import formats

    turns = [{"role": ("user", "assistant")[i % 2], "content": "x" * 19_000} for i in range(12)]
    long = parse_conversations(jsonl([{"messages": turns}]), "d.jsonl", "messages", {}, None, None)
    examples = reply_examples(long.records, SYSTEM)  # a dialogue so far over MAX_HISTORY_CHARS: dropped, counted
    assert len(examples.records) == 2 and examples.dropped["history_too_long"] == 4
    monkeypatch.setattr(formats, "MAX_TABLE_CHARS", 10_000)  # a little Parquet that decodes to more text
    path = tmp_path / "d.parquet"
    parquet.write_table(pyarrow.Table.from_pylist([{"prompt": "y" * 3000, "completion": "z"}] * 8), path)
    with pytest.raises(DataError, match=r"d.parquet: over 10,000 characters of text by row 4"):
        read_rows(path.read_bytes(), "d.parquet")
    bad = pyarrow.Array.from_buffers(pyarrow.string(), 1, [None, pyarrow.py_buffer(b"\0\0\0\0\2\0\0\0"),
                                                           pyarrow.py_buffer(b"\xff\xfe")])
    parquet.write_table(pyarrow.table({"prompt": bad, "completion": ["b"]}), path)
    with pytest.raises(DataError, match=r"d.parquet: row 1: a text column that is not UTF-8"):
        read_rows(path.read_bytes(), "d.parquet")
    bom = b"\xef\xbb\xbfprompt,completion\na,b\n"  # as a spreadsheet writes it
    assert read_rows(bom, "d.csv") == [("d.csv:2", {"prompt": "a", "completion": "b"})]
    with pytest.raises(DataError, match=r"d.jsonl:1: the label column 'l' must hold text or a whole number, not list"):
        parse_conversations(jsonl([{"prompt": "a", "completion": "b", "l": [1]}]), "d.jsonl", "prompt_completion",
                            {}, "l", None)


def test_a_conversation_in_train_and_held_out_under_another_group_is_still_a_twin():
    held = Conversation("c1", "z", None, (("user", "same"), ("assistant", "chat")), named=True)
    again = Conversation("c1", "a", None, (("user", "same"), ("assistant", "chat")), named=True)
    other_id = Conversation("c2", "a", None, (("user", "same"), ("assistant", "chat")), named=True)
    same_id = Conversation("c1", "b", None, (("user", "other"), ("assistant", "talk")), named=True)
    row_named = Conversation("c1", "b", None, (("user", "other"), ("assistant", "talk")), named=False)
    known = HeldOutConversations.of([held])
    assert known.twin(again) and known.twin(other_id) and known.twin(same_id) and not known.twin(row_named)
