"""Parsers for the two raw formats. Pure functions: bytes or rows in, records and drop counts out.

EmpatheticDialogues is not a standard CSV: its authors split each line on ',' and write commas inside
text as `_comma_`; quotes are plain characters and some rows carry extra trailing fields. A CSV reader
would choke on the quotes or (with the notebook's on_bad_lines='skip') silently drop rows. Here every
row is either kept or counted under the reason it was dropped.
"""
from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from chattune.common.errors import DataError

# Every reason a parser may drop a row for; metrics list each one, zero or not, so columns stay stable.
ED_DROP_REASONS = ("not_utf8", "too_few_fields", "bad_utterance_idx", "utterance_idx_over_limit", "field_too_long",
                   "empty_utterance", "duplicate_turn")
EXAMPLE_DROP_REASONS = ("missing_earlier_turn", "held_out_twin", "history_too_long", "too_long")
# not_utf8: text with a lone surrogate escape ("\ud83d"), which JSON allows and no UTF-8 file can hold
DPO_DROP_REASONS = ("not_utf8", "field_too_long", "empty_field", "chosen_equals_rejected", "duplicate")

# What one row may claim, far above the real data (EmpatheticDialogues: 8 turns, 558 characters; Human-Like-DPO:
# 3,351 characters), so that one hostile row cannot take the memory or time of the whole file. A conversation
# numbers its turns from 1 without gaps or repeats, so MAX_TURN_INDEX also bounds its turns, and the examples
# made of it (each with its history) stay within MAX_TURN_INDEX**2 / 4 messages.
MAX_TURN_INDEX = 100
MAX_FIELD_CHARS = 20_000
# An example carries its dialogue so far: past this many characters (some 25,000 tokens, beyond any context a
# small model has) it is dropped, so that a conversation's examples cannot take more than a bounded multiple of it.
MAX_HISTORY_CHARS = 100_000

ED_HEADER = ["conv_id", "utterance_idx", "context", "prompt", "speaker_idx", "utterance", "selfeval", "tags"]




@dataclass(frozen=True)
class Turn:
    conv_id: str
    idx: int
    emotion: str
    situation: str
    text: str


@dataclass
class Parsed:
    records: list
    read: int = 0
    dropped: Counter = field(default_factory=Counter)
    extra_fields: int = 0

    def counts(self, prefix: str, reasons: tuple[str, ...]) -> dict[str, int]:
        """Flat metrics: rows read, kept, and dropped per reason."""
        counts = {f"{prefix}.read": self.read, f"{prefix}.kept": len(self.records)}
        counts.update({f"{prefix}.dropped.{reason}": self.dropped[reason] for reason in reasons})
        return counts


def unescape(text: str) -> str:
    return text.replace("_comma_", ",").strip()


def decode_utf8(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataError(f"{name}:{line}: not valid UTF-8 (byte 0x{raw[error.start]:02x})") from None


def parse_empathetic(raw: bytes, name: str) -> Parsed:
    """Parse one EmpatheticDialogues split into turns. A row that is not valid UTF-8 is dropped and counted
    (the header must be)."""
    first, _, rest = raw.partition(b"\n")
    header_line = decode_utf8(first, name)
    header = header_line.strip().lstrip("\ufeff").split(",")
    if header != ED_HEADER:
        raise DataError(f"{name}:1: expected header {','.join(ED_HEADER)!r}, got {header_line.strip()!r}")
    parsed = Parsed(records=[])
    seen = set()
    for raw_line in rest.split(b"\n"):
        if not raw_line.strip():
            continue
        parsed.read += 1
        try:
            line = raw_line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            parsed.dropped["not_utf8"] += 1
            continue
        fields = line.split(",")
        if len(fields) < len(ED_HEADER):
            parsed.dropped["too_few_fields"] += 1
            continue
        if len(fields) > len(ED_HEADER):
            parsed.extra_fields += 1
        conv_id, idx, emotion, situation, _speaker, text = fields[:6]
        digits = idx.strip().lstrip("0")  # int() of 5,000 digits fails, leading zeros included
        if not re.fullmatch(r"[0-9]*", idx.strip()) or not digits:  # "²".isdigit(), yet int("²") fails
            parsed.dropped["bad_utterance_idx"] += 1
            continue
        if len(digits) > len(str(MAX_TURN_INDEX)) or int(digits) > MAX_TURN_INDEX:
            parsed.dropped["utterance_idx_over_limit"] += 1
            continue
        if max(map(len, fields[:6])) > MAX_FIELD_CHARS:
            parsed.dropped["field_too_long"] += 1
            continue
        text = unescape(text)
        if not conv_id.strip() or not text:
            parsed.dropped["empty_utterance"] += 1
            continue
        key = (conv_id, int(digits))
        if key in seen:
            parsed.dropped["duplicate_turn"] += 1
            continue
        seen.add(key)
        parsed.records.append(Turn(conv_id, int(digits), emotion.strip(), unescape(situation), text))
    return parsed


def load_json(text: str, name: str, line: int | None = None):
    """json.loads of a file's text (or of its `line`), with its failures as a DataError naming the file and line."""
    where = name if line is None else f"{name}:{line}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{name}:{line or error.lineno}: invalid JSON: {error.msg}") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise DataError(f"{where}: invalid JSON: {error}") from None
    except RecursionError:
        raise DataError(f"{where}: invalid JSON: nested too deeply to read") from None


def writable(text: str) -> bool:
    """Whether UTF-8 can hold `text`: a JSON string may carry a lone surrogate escape ("\\ud83d"), which it cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def normalised(text: str) -> str:
    """Text as the splits compare it: lower case, runs of whitespace as one space."""
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class HeldOut:
    """What the held-out EmpatheticDialogues conversations (valid.csv and test.csv) are known by: their ids and
    their situations. A training conversation that shares either is their twin: the same conversation under
    another split, or another telling of the same situation."""

    conv_ids: frozenset[str]
    situations: frozenset[str]

    @staticmethod
    def of(turns: list[Turn]) -> "HeldOut":
        return HeldOut(frozenset(t.conv_id for t in turns), frozenset(normalised(t.situation) for t in turns))

    def twin(self, turn: Turn) -> bool:
        return turn.conv_id in self.conv_ids or normalised(turn.situation) in self.situations


def conversations(turns: list[Turn]) -> dict[str, list[Turn]]:
    """Group turns by conversation (in file order), each sorted by utterance index."""
    grouped: dict[str, list[Turn]] = {}
    for turn in turns:
        grouped.setdefault(turn.conv_id, []).append(turn)
    return {conv_id: sorted(group, key=lambda t: t.idx) for conv_id, group in grouped.items()}


def listener_turns(turns: list[Turn], held_out: HeldOut | None = None) -> list[Turn]:
    """Every listener turn (even utterance index) of a split; with `held_out`, none of a conversation that is a
    held-out one's twin (as preprocess leaves them out of SFT)."""
    return [turn for turn in turns if turn.idx % 2 == 0 and not (held_out and held_out.twin(turn))]


def listener_examples(turns: list[Turn], system_prompt: str, seed_format: bool,
                      held_out: HeldOut | None = None) -> Parsed:
    """One SFT example per listener turn (even utterance index); with `held_out`, a turn of a conversation that is
    a held-out one's twin (HeldOut) is dropped and counted, so no held-out prompt has a training twin.

    dialogue format: TRL conversational prompt-completion; the system message carries the situation,
    speaker turns are `user`, earlier listener turns `assistant`. seed format: the notebook's
    `Instruction: <emotion>` / `Response: <utterance>` text, for comparison; the space before the reply
    belongs to the reply, so the prompt tokenizes the same alone as before it.
    """
    parsed = Parsed(records=[])
    for conv_id, conv in conversations(turns).items():
        whole = next((position for position, t in enumerate(conv) if t.idx != position + 1), len(conv))
        told = list(itertools.accumulate(len(t.text) for t in conv))  # characters up to and including each turn
        for position, turn in enumerate(conv):
            if turn.idx % 2:
                continue
            parsed.read += 1
            if held_out and held_out.twin(turn):
                parsed.dropped["held_out_twin"] += 1
                continue
            if position >= whole:  # a turn before it is missing: turns 1..idx are not all there
                parsed.dropped["missing_earlier_turn"] += 1
                continue
            if told[position] > MAX_HISTORY_CHARS:
                parsed.dropped["history_too_long"] += 1
                continue
            example = {"id": f"{conv_id}:{turn.idx}", "emotion": turn.emotion, "situation": turn.situation}
            if seed_format:
                example["prompt"] = f"Instruction: {turn.emotion}\nResponse:"
                example["completion"] = f" {turn.text}"
            else:
                system = "\n".join(filter(None, [system_prompt, f"What the user is going through: {turn.situation}"]))
                history = [{"role": "user" if t.idx % 2 else "assistant", "content": t.text} for t in conv[:position]]
                example["prompt"] = [{"role": "system", "content": system}] + history
                example["completion"] = [{"role": "assistant", "content": turn.text}]
            parsed.records.append(example)
    return parsed


def parse_dpo(raw: bytes, name: str, system_prompt: str = "") -> Parsed:
    """Parse Human-Like-DPO data.json: strip; drop empty fields, chosen == rejected, exact duplicates.
    A non-empty `system_prompt` opens every prompt as a system message, as in the SFT examples."""
    items = load_json(decode_utf8(raw, name), name)
    if not isinstance(items, list):
        raise DataError(f"{name}: expected a JSON array of {{prompt, chosen, rejected}}, got {type(items).__name__}")
    parsed = Parsed(records=[], read=len(items))
    seen = set()
    for number, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{name}: item {number}: expected an object, got {type(item).__name__}")
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(item.get(key), str):
                raise DataError(f"{name}: item {number}: '{key}' must be a string")
        prompt, chosen, rejected = (item[key].strip() for key in ("prompt", "chosen", "rejected"))
        if not all(map(writable, (prompt, chosen, rejected))):
            parsed.dropped["not_utf8"] += 1
        elif max(map(len, (prompt, chosen, rejected))) > MAX_FIELD_CHARS:
            parsed.dropped["field_too_long"] += 1
        elif not (prompt and chosen and rejected):
            parsed.dropped["empty_field"] += 1
        elif chosen == rejected:
            parsed.dropped["chosen_equals_rejected"] += 1
        elif (prompt, chosen, rejected) in seen:
            parsed.dropped["duplicate"] += 1
        else:
            seen.add((prompt, chosen, rejected))
            parsed.records.append({
                "prompt": ([{"role": "system", "content": system_prompt}] if system_prompt else [])
                + [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            })
    return parsed


PROMPT_FIELDS = ("id", "system", "user", "reference")


def parse_prompts(raw: bytes, name: str, system_prompt: str) -> list[dict]:
    """Parse an evaluation prompts file: JSONL of {id (optional), system (optional), user, reference}.

    Every line must be valid; the first bad one stops with its line number. Records come out in the
    processed SFT shape (prompt messages, completion = the reference), so every prompt set is scored alike.
    A missing `system` gets the SFT system prompt; an empty one means no system message.
    """
    records, ids = [], set()
    for number, line in enumerate(decode_utf8(raw, name).split("\n"), start=1):
        if not line.strip():
            continue
        item = load_json(line, name, number)
        if not isinstance(item, dict):
            raise DataError(f"{name}:{number}: expected an object with 'user' and 'reference', "
                            f"got {type(item).__name__}")
        unknown = sorted(set(item) - set(PROMPT_FIELDS))
        if unknown:
            raise DataError(f"{name}:{number}: unknown field {unknown[0]!r} (expected {', '.join(PROMPT_FIELDS)})")
        for key in ("user", "reference"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise DataError(f"{name}:{number}: '{key}' must be a non-empty string")
        for key in ("id", "system"):
            if key in item and not isinstance(item[key], str):
                raise DataError(f"{name}:{number}: '{key}' must be a string")
        for key, value in item.items():
            if not writable(value):
                raise DataError(f"{name}:{number}: '{key}' holds a lone surrogate escape (such as \\ud83d), "
                                "which is not text")
            if len(value) > MAX_FIELD_CHARS:
                raise DataError(f"{name}:{number}: '{key}' has {len(value)} characters; at most {MAX_FIELD_CHARS}")
        example_id = item.get("id", f"line-{number}")
        if example_id in ids:
            raise DataError(f"{name}:{number}: duplicate id {example_id!r}")
        ids.add(example_id)
        system = item.get("system", system_prompt).strip()
        records.append({
            "id": example_id,
            "prompt": ([{"role": "system", "content": system}] if system else [])
            + [{"role": "user", "content": item["user"].strip()}],
            "completion": [{"role": "assistant", "content": item["reference"].strip()}],
        })
    if not records:
        raise DataError(f"{name}: no prompts")
    return records


# --- splits (preprocess makes the training and held-out sets; the judges stage holds out the same pairs) ---

def subsample(rows: list, size: int, seed: int) -> list:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[:size]


def prompt_group(pair: dict) -> str:
    """A DPO pair's group: its user turn, normalised. Human-Like-DPO asks one prompt several times with other
    answers; the pairs of one prompt stay on one side of the split."""
    return normalised(pair["prompt"][-1]["content"])


def split_pairs(rows: list, train_size: int, eval_size: int, seed: int, group=prompt_group) -> tuple[list, list]:
    """Hold out `eval_size` pairs (a tenth of the rows when there are fewer than ten times that many) by whole
    groups (`group` of a row: its normalised prompt), and train on up to `train_size` of the rest, so that no
    held-out prompt has a training twin. Groups are taken in an order shuffled with the seed, skipping any that
    would overshoot the count (which grows to the smallest group's size, so that some group is held out). The
    held-out pairs depend on the rows, the seed and eval_size only, never on train_size."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(group(row), []).append(row)
    shuffled = subsample(groups.values(), len(groups), seed)
    target = max(min(eval_size, max(1, len(rows) // 10)), min(map(len, shuffled), default=0))
    held_out, rest = [], []
    for members in shuffled:
        (held_out if len(held_out) + len(members) <= target else rest).extend(members)
    return subsample(rest, train_size, seed), held_out


def groups_across(train: list, held_out: list, group=prompt_group) -> int:
    """How many groups have rows on both sides of a split (0 for split_pairs'; preprocess records it)."""
    return len({group(row) for row in train} & {group(row) for row in held_out})


def repeated_groups(rows: list, group=prompt_group) -> tuple[int, int, int]:
    """Groups, groups of more than one row, and the rows in those."""
    sizes = Counter(group(row) for row in rows)
    repeated = [size for size in sizes.values() if size > 1]
    return len(sizes), len(repeated), sum(repeated)


def read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror}") from None
