"""Property-based tests: the raw-format parsers never crash on garbage, and lose no valid text."""
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from chattune.common.errors import DataError
from chattune.data.parsing import ED_HEADER, conversations, listener_examples, parse_dpo, parse_empathetic

HEADER = ",".join(ED_HEADER)
# Utterance text as a person might type it: commas, quotes and non-ASCII included, no line breaks, and
# never the format's own escape word.
TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\n\r"),
               min_size=1, max_size=40).map(str.strip).filter(lambda t: t and "_comma_" not in t)
FAST = settings(max_examples=200, deadline=None)


@FAST
@given(st.binary(max_size=400))
def test_empathetic_parser_survives_random_bytes(raw):
    for data in (raw, HEADER.encode() + b"\n" + raw):
        try:
            parsed = parse_empathetic(data, "fuzz.csv")
        except DataError:
            continue
        assert parsed.read == len(parsed.records) + sum(parsed.dropped.values())


def escape(text: str) -> str:
    return text.replace(",", "_comma_")


@FAST
@given(st.lists(st.tuples(st.sampled_from(["sad", "proud", "afraid"]), TEXT, st.lists(TEXT, min_size=2, max_size=5)),
                min_size=1, max_size=5))
def test_valid_conversations_come_out_with_their_text_intact(convs):
    lines = [HEADER]
    for number, (emotion, situation, turns) in enumerate(convs):
        for idx, text in enumerate(turns, 1):
            lines.append(f"c{number},{idx},{emotion},{escape(situation)},{idx % 2},{escape(text)},5|5|5,")
    parsed = parse_empathetic(("\n".join(lines) + "\n").encode(), "fuzz.csv")
    assert not parsed.dropped
    grouped = conversations(parsed.records)
    for number, (emotion, situation, turns) in enumerate(convs):
        got = grouped[f"c{number}"]
        assert [t.text for t in got] == turns and {t.situation for t in got} == {situation}
    examples = listener_examples(parsed.records, "sys", seed_format=False).records
    assert len(examples) == sum(len(turns) // 2 for *_, turns in convs)
    for example in examples:
        conv, idx = example["id"].rsplit(":", 1)
        turns = convs[int(conv[1:])][2]
        assert example["completion"][0]["content"] == turns[int(idx) - 1]
        assert [m["content"] for m in example["prompt"][1:]] == turns[: int(idx) - 1]


@FAST
@given(st.binary(max_size=400))
def test_dpo_parser_survives_random_bytes(raw):
    try:
        parsed = parse_dpo(raw, "fuzz.json")
    except DataError:
        return
    assert parsed.read == len(parsed.records) + sum(parsed.dropped.values())


JSON_VALUE = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                          max_leaves=8)


@FAST
@given(JSON_VALUE)
def test_dpo_parser_rejects_other_json_shapes_cleanly(value):
    try:
        parsed = parse_dpo(json.dumps(value).encode(), "fuzz.json")
    except DataError:
        return
    assert isinstance(value, list) and parsed.read == len(value)


@FAST
@given(st.lists(st.fixed_dictionaries({"prompt": st.text(max_size=20), "chosen": st.text(max_size=20),
                                       "rejected": st.text(max_size=20)}), max_size=20))
def test_dpo_rows_are_kept_or_counted_and_kept_text_is_the_stripped_input(rows):
    parsed = parse_dpo(json.dumps(rows).encode(), "fuzz.json")
    assert parsed.read == len(rows) == len(parsed.records) + sum(parsed.dropped.values())
    stripped = [tuple(row[k].strip() for k in ("prompt", "chosen", "rejected")) for row in rows]
    kept = [(r["prompt"][0]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in parsed.records]
    assert kept == list(dict.fromkeys(t for t in stripped if all(t) and t[1] != t[2]))
