import json
from collections import Counter

import pytest

from chattune.common.errors import DataError
from chattune.data.parsing import (
    ED_DROP_REASONS,
    conversations,
    groups_across,
    listener_examples,
    parse_dpo,
    parse_empathetic,
    parse_prompts,
    prompt_group,
    repeated_groups,
    split_pairs,
    subsample,
)
from conftest import ROOT, shared_file

HEADER = "conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags\n"


def ed(*rows: str) -> bytes:
    return (HEADER + "\n".join(rows) + "\n").encode()


def test_empathetic_quirks_are_parsed_not_dropped():
    raw = ed(
        "hit:1_conv:2,1,sad,My cat_comma_ Tom_comma_ died.,7,He was 15_comma_ and so sweet.,5|5|5_2|2|5,",
        'hit:1_conv:2,2,sad,My cat_comma_ Tom_comma_ died.,9,I\'m so sorry. "Fifteen years is a long time.,5|5|5_2|2|5,',
        "hit:1_conv:2,3,sad,My cat_comma_ Tom_comma_ died.,7,Thanks.,1|1|1,WHY,extra,fields",
    )
    parsed = parse_empathetic(raw, "train.csv")
    assert parsed.read == 3 and len(parsed.records) == 3 and parsed.extra_fields == 1
    first, second, third = parsed.records
    assert first.situation == "My cat, Tom, died." and first.text == "He was 15, and so sweet."
    assert second.text == 'I\'m so sorry. "Fifteen years is a long time.'  # a stray quote is just a character
    assert third.text == "Thanks." and third.idx == 3 and third.emotion == "sad"


def test_every_bad_row_is_counted_under_its_reason():
    parsed = parse_empathetic(ed(
        "c1,1,sad,s,1,hello,x,",
        "c1,1,sad,s,1,hello again,x,",        # same turn twice
        "c1,two,sad,s,2,hi,x,",               # not an index
        "c1,²,sad,s,2,hi,x,",                 # a digit to str.isdigit(), yet not a number to int()
        "c1,3,sad,s,1,   ,x,",                # empty after stripping
        "c1,4,sad,s",                         # truncated row
        "",                                   # blank lines are not rows
    ), "valid.csv")
    assert parsed.read == 6 and len(parsed.records) == 1
    assert parsed.dropped == Counter(duplicate_turn=1, bad_utterance_idx=2, empty_utterance=1, too_few_fields=1)
    counts = parsed.counts("ed.valid.rows", ED_DROP_REASONS)
    assert counts["ed.valid.rows.read"] == counts["ed.valid.rows.kept"] + sum(parsed.dropped.values())


def test_what_one_row_may_claim_is_bounded_and_the_rest_counted():
    """A turn index of 20 million or of 5,000 digits, a field of a million characters: each a counted drop,
    never gigabytes of memory or Python's own error."""
    parsed = parse_empathetic(ed(
        "c1,1,sad,s,1,hello,x,",
        "c1,20000000,sad,s,2,hi,x,",
        "c1," + "9" * 5000 + ",sad,s,2,hi,x,",
        "c1,0,sad,s,2,hi,x,",
        "c1,2,sad,s,2," + "a" * 1_000_000 + ",x,",
        "c1,0002,sad,s,2,hi,x,",
        "c2," + "0" * 5000 + "1,sad,s,1,hello,x,",  # turn 1, however many zeros lead
    ), "train.csv")
    assert [(turn.conv_id, turn.idx) for turn in parsed.records] == [("c1", 1), ("c1", 2), ("c2", 1)]
    assert parsed.dropped == Counter(utterance_idx_over_limit=2, bad_utterance_idx=1, field_too_long=1)


def test_an_example_whose_dialogue_so_far_is_too_long_is_dropped_and_counted():
    """Five turns of 20,000 characters each fill the history; the examples after it would only repeat it."""
    rows = [f"c1,{idx},sad,s,{idx % 2}," + "w" * 20_000 + ",x," for idx in range(1, 101)]
    examples = listener_examples(parse_empathetic(ed(*rows), "train.csv").records, "Be kind.", seed_format=False)
    assert len(examples.records) == 2 and examples.dropped == Counter(history_too_long=48)


def test_the_examples_of_a_long_conversation_take_linear_time():
    """8,000 turns of one conversation (3.2 GB and quadratic work before the bounds): the turns past the limit
    are dropped and counted, and the examples come out at once."""
    rows = [f"c1,{idx},sad,s,{idx % 2},turn {idx},x," for idx in range(1, 8001)]
    parsed = parse_empathetic(ed(*rows), "train.csv")
    assert len(parsed.records) == 100 and parsed.dropped == Counter(utterance_idx_over_limit=7900)
    examples = listener_examples(parsed.records, "Be kind.", seed_format=False)
    assert len(examples.records) == 50 and len(examples.records[-1]["prompt"]) == 1 + 99
    gapped = listener_examples([t for t in parsed.records if t.idx != 51], "Be kind.", seed_format=False)
    assert len(gapped.records) == 25 and gapped.dropped == Counter(missing_earlier_turn=25)


def test_text_no_utf8_file_can_hold_and_huge_fields_are_dropped_and_counted():
    rows = [pair(chosen="hi \ud83d there"), pair(prompt="\udcff?"), pair(rejected="x" * 20_001), pair(prompt="Ok?")]
    parsed = parse_dpo(json.dumps(rows).encode(), "data.json")
    assert parsed.dropped == Counter(not_utf8=2, field_too_long=1) and len(parsed.records) == 1


def test_wrong_header_names_the_file_and_line():
    with pytest.raises(DataError, match=r"test.csv:1: expected header"):
        parse_empathetic(b"id,text\n1,hello\n", "test.csv")


def test_a_row_that_is_not_utf8_is_dropped_and_counted_and_a_bad_header_is_named():
    raw = ed("c1,1,sad,s,1,hello,x,", "c1,2,sad,s,2,cafe,x,", "c1,3,sad,s,1,thanks,x,").replace(b"cafe", b"caf\xe9")
    parsed = parse_empathetic(raw, "train.csv")  # one Latin-1 byte costs its row, not the file
    assert parsed.read == 3 and [turn.idx for turn in parsed.records] == [1, 3]
    assert parsed.dropped == Counter(not_utf8=1)
    with pytest.raises(DataError, match=r"train.csv:1: not valid UTF-8"):
        parse_empathetic(b"conv_id,\xe9" + raw[10:], "train.csv")


def test_one_example_per_listener_turn_with_the_dialogue_so_far():
    turns = parse_empathetic(ed(
        "c1,1,anxious,Interview tomorrow,1,I have an interview tomorrow.,x,",
        "c1,2,anxious,Interview tomorrow,2,You must be nervous.,x,",
        "c1,3,anxious,Interview tomorrow,1,Very.,x,",
        "c1,4,anxious,Interview tomorrow,2,You will do great.,x,",
        "c1,5,anxious,Interview tomorrow,1,Thanks!,x,",
    ), "t.csv").records
    examples = listener_examples(turns, "Be kind.", seed_format=False)
    assert examples.read == 2 and [e["id"] for e in examples.records] == ["c1:2", "c1:4"]
    last = examples.records[1]
    assert last["prompt"][0]["role"] == "system"
    assert "Be kind." in last["prompt"][0]["content"] and "Interview tomorrow" in last["prompt"][0]["content"]
    assert [(m["role"], m["content"]) for m in last["prompt"][1:]] == [
        ("user", "I have an interview tomorrow."), ("assistant", "You must be nervous."), ("user", "Very.")]
    assert last["completion"] == [{"role": "assistant", "content": "You will do great."}]
    assert last["emotion"] == "anxious" and last["situation"] == "Interview tomorrow"


def test_listener_turn_after_a_gap_is_dropped_and_counted():
    turns = parse_empathetic(ed("c1,1,sad,s,1,a,x,", "c1,2,sad,s,2,b,x,", "c1,4,sad,s,2,d,x,"), "t.csv").records
    examples = listener_examples(turns, "", seed_format=False)
    assert len(examples.records) == 1 and examples.dropped["missing_earlier_turn"] == 1


def test_seed_format_reproduces_the_notebook_text():
    turns = parse_empathetic(ed("c1,1,proud,s,1,I won!,x,", "c1,2,proud,s,2,Congrats!,x,"), "t.csv").records
    (example,) = listener_examples(turns, "ignored", seed_format=True).records
    assert example["prompt"] + example["completion"] == "Instruction: proud\nResponse: Congrats!"
    assert example["prompt"].endswith("Response:")  # the space opens the reply (see test_prompt_format)


def test_sample_data_is_rich_enough_and_fully_parsed():
    conv_count, emotions = 0, set()
    for split in ("train", "valid", "test"):
        path = ROOT / "data/sample/empatheticdialogues" / f"{split}.csv"
        parsed = parse_empathetic(path.read_bytes(), str(path))
        assert len(parsed.records) == parsed.read, f"{split}: sample rows were dropped: {parsed.dropped}"
        convs = conversations(parsed.records)
        conv_count += len(convs)
        emotions |= {t.emotion for t in parsed.records}
        assert listener_examples(parsed.records, "", False).dropped == Counter()
    assert conv_count >= 200 and len(emotions) >= 8
    text = b"".join((ROOT / "data/sample/empatheticdialogues" / f"{s}.csv").read_bytes() for s in ("train", "valid", "test"))
    assert b"_comma_" in text and b'"' in text
    dpo = parse_dpo((ROOT / "data/sample/human_like_dpo/data.json").read_bytes(), "data.json")
    assert len(dpo.records) >= 300


def pair(prompt="Hi?", chosen="Hey! 😄", rejected="As an AI, I greet you."):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def test_dpo_rows_are_stripped_filtered_and_deduplicated():
    rows = [pair(prompt="  Hi?\n"), pair(), pair(chosen=" "), pair(chosen="same", rejected="same"), pair(prompt="Yo?")]
    parsed = parse_dpo(json.dumps(rows).encode(), "data.json")
    assert parsed.read == 5
    assert parsed.dropped == Counter(duplicate=1, empty_field=1, chosen_equals_rejected=1)
    assert [r["prompt"][0]["content"] for r in parsed.records] == ["Hi?", "Yo?"]
    assert parsed.records[0]["chosen"] == [{"role": "assistant", "content": "Hey! 😄"}]


@pytest.mark.parametrize("raw, message", [
    (b'{"prompt": "x"}', r"data.json: expected a JSON array"),
    (b'[{"prompt": "x", "chosen": "y"}]', r"data.json: item 0: 'rejected' must be a string"),
    (b'[1]', r"data.json: item 0: expected an object"),
    (b'[{"prompt": "x",\n', r"data.json:2: invalid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, r"data.json: invalid JSON: nested too deeply to read"),
    (b'[{"prompt": ' + b"7" * 5000 + b"}]", r"data.json: invalid JSON: Exceeds the limit"),
])
def test_malformed_dpo_json_is_rejected_with_its_location(raw, message):
    with pytest.raises(DataError, match=message):
        parse_dpo(raw, "data.json")


def test_real_dpo_rows_parse_cleanly():
    folder = shared_file("human-like-dpo")
    rows = []
    for path in sorted(folder.glob("*.json")):
        rows += json.loads(path.read_text())
    parsed = parse_dpo(json.dumps(rows).encode(), "parts.json")
    assert parsed.read == len(rows) > 0
    assert parsed.read == len(parsed.records) + sum(parsed.dropped.values())
    triples = {(r["prompt"][0]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in parsed.records}
    assert len(triples) == len(parsed.records)
    assert all(all(t) and t[1] != t[2] for t in triples)


def itself(row):
    return row


def test_splits_are_seeded_disjoint_and_shrink_in_proportion():
    rows = list(range(100))
    train, held_out = split_pairs(rows, 900, 100, seed=1, group=itself)
    assert (len(train), len(held_out)) == (90, 10) and not set(train) & set(held_out)
    assert split_pairs(rows, 900, 100, seed=1, group=itself) == (train, held_out)
    assert split_pairs(rows, 900, 100, seed=2, group=itself) != (train, held_out)
    assert split_pairs(rows, 50, 20, seed=1, group=itself)[0].__len__() == 50
    assert subsample(rows, 10, seed=3) == subsample(rows, 10, seed=3) and len(subsample(rows, 500, 3)) == 100


def dpo_rows(prompts: list[str]) -> list[dict]:
    return parse_dpo(json.dumps([pair(prompt=p, chosen=f"Sure! {i}", rejected=f"As an AI, {i}.")
                                 for i, p in enumerate(prompts)]).encode(), "data.json").records


def test_a_prompt_asked_several_times_sits_on_one_side_of_the_split():
    # one prompt asked five times, written differently (case, spaces), among 95 prompts asked once
    prompts = ["What's your favourite food?", "what's your  favourite FOOD?", " What's your favourite food? ",
               "WHAT'S YOUR FAVOURITE FOOD?", "What's\tyour favourite food?"] + [f"Question {i}?" for i in range(95)]
    rows = dpo_rows(prompts)
    assert repeated_groups(rows) == (96, 1, 5)
    for seed in range(20):
        train, held_out = split_pairs(rows, 1000, 10, seed)
        assert groups_across(train, held_out) == 0 and len(train) + len(held_out) == 100
        assert len(held_out) == 10  # groups that would overshoot are skipped, singles fill the rest
        assert sum(prompt_group(row) == "what's your favourite food?" for row in held_out) in (0, 5)
    # a split by rows (the old one) puts part of the group on each side for some seed
    assert any(groups_across(subsample(rows, 100, seed)[10:], subsample(rows, 100, seed)[:10]) for seed in range(20))


def test_no_real_prompt_crosses_the_split_and_the_held_out_pairs_never_depend_on_the_train_size():
    """The 7,162 real rows ask 1,242 prompts more than once (case and spacing aside), over 3,166 rows."""
    rows = [row for path in sorted(shared_file("human-like-dpo").glob("*.json")) for row in json.loads(path.read_text())]
    pairs = parse_dpo(json.dumps(rows).encode(), "parts.json").records
    groups, repeated, in_repeated = repeated_groups(pairs)
    assert repeated > 1000 and in_repeated > 2 * repeated
    train, held_out = split_pairs(pairs, len(pairs), 1000, seed=42)
    assert len(held_out) == min(1000, len(pairs) // 10) and len(train) + len(held_out) == len(pairs)
    assert groups_across(train, held_out) == 0
    assert {prompt_group(row) for row in held_out} & {g for g, n in Counter(map(prompt_group, pairs)).items() if n > 1}
    assert split_pairs(pairs, 4500, 1000, seed=42)[1] == held_out


def test_prompts_file_becomes_chat_examples_with_the_default_system_prompt():
    raw = (b'{"user": " I lost my job. ", "reference": "That is hard."}\n\n'
           b'{"id": "x", "system": "", "user": "Hi", "reference": "Hello!"}\n'
           b'{"system": "Be brief.", "user": "Hey", "reference": "Hi."}\n')
    first, second, third = parse_prompts(raw, "mine.jsonl", "Be kind.")
    assert first == {"id": "line-1", "prompt": [{"role": "system", "content": "Be kind."},
                                                {"role": "user", "content": "I lost my job."}],
                     "completion": [{"role": "assistant", "content": "That is hard."}]}
    assert second["id"] == "x" and second["prompt"] == [{"role": "user", "content": "Hi"}]
    assert third["prompt"][0] == {"role": "system", "content": "Be brief."}


BAD_PROMPT_FILES = [
    (b'{"user": "a", "reference": "b"}\n{"user": "a"', "mine.jsonl:2: invalid JSON"),
    (b'["a", "b"]', "mine.jsonl:1: expected an object with 'user' and 'reference', got list"),
    (b'{"user": "a", "refrence": "b"}', "mine.jsonl:1: unknown field 'refrence'"),
    (b'{"user": "a", "reference": "b"}\n{"user": "  ", "reference": "b"}', "mine.jsonl:2: 'user' must be a non-empty string"),
    (b'{"user": "a", "reference": 3}', "mine.jsonl:1: 'reference' must be a non-empty string"),
    (b'{"user": "a", "reference": "b", "system": null}', "mine.jsonl:1: 'system' must be a string"),
    (b'{"id": "q", "user": "a", "reference": "b"}\n{"id": "q", "user": "c", "reference": "d"}',
     "mine.jsonl:2: duplicate id 'q'"),
    (b'{"user": "caf\xe9", "reference": "b"}', "mine.jsonl:1: not valid UTF-8 (byte 0xe9)"),
    (b"\n\n", "mine.jsonl: no prompts"),
    (b"[" * 100_000, "mine.jsonl:1: invalid JSON: nested too deeply to read"),
    (b'{"user": "a", "reference": ' + b"7" * 5000 + b"}", "mine.jsonl:1: invalid JSON: Exceeds the limit"),
    (b'{"user": "hi \\ud83d there", "reference": "b"}', "mine.jsonl:1: 'user' holds a lone surrogate escape"),
    (b'{"user": "' + b"a" * 20_001 + b'", "reference": "b"}', "mine.jsonl:1: 'user' has 20001 characters; at most"),
]


@pytest.mark.parametrize("raw, message", BAD_PROMPT_FILES, ids=[m.split(": ", 1)[-1] for _, m in BAD_PROMPT_FILES])
def test_a_bad_prompts_file_is_rejected_at_its_line(raw, message):
    with pytest.raises(DataError) as error:
        parse_prompts(raw, "mine.jsonl", "Be kind.")
    assert message in str(error.value)


def test_the_probe_set_is_valid_and_spans_many_feelings():
    probe = parse_prompts((ROOT / "data/eval/probe.jsonl").read_bytes(), "probe.jsonl", "Be kind.")
    assert len(probe) >= 30
    feelings = Counter(example["id"].split("-")[0] for example in probe)
    assert len(feelings) >= 12 and {"grief", "anxiety", "lonely", "proud", "angry", "joy"} <= set(feelings)
