"""Your own data: chat and preference datasets in the formats other fine-tuning tools take, read into the rows the
built-in parsers (chattune.data.parsing) make, so that everything after preprocess runs unchanged.

A file is JSONL, JSON (an array of objects), CSV or Parquet, told by its suffix. A column map renames the file's
columns to the format's fields (`{"messages": "dialog"}` reads the field `messages` from the column `dialog`).
SFT formats, each one row per conversation:
- messages: `messages`, a list of {role, content} (system, user, assistant), TRL's conversational format;
- sharegpt: `conversations`, a list of {from, value} (system, human/user, gpt/assistant);
- alpaca: `instruction`, `input` (may be empty or absent) and `output`: one user turn, one reply;
- prompt_completion: `prompt` and `completion`, two texts: one user turn, one reply;
alpaca and prompt_completion may also have a `system` column: the conversation's system turn.
Every assistant turn becomes an example with the conversation before it, as EmpatheticDialogues' listener turns do.
Preference formats, one row per pair: strings (`prompt`, `chosen`, `rejected` texts, as Human-Like-DPO) or
conversational (`prompt` a list of turns, `chosen` and `rejected` each one assistant turn, as a list or an object).

What is wrong with the file itself (not the format its suffix says, a missing column, a field of the wrong type, an
unknown role) stops with a DataError naming the file, row and field: the data is not what the params say it is.
What is wrong with one conversation or pair (an empty reply, no reply at the end, text UTF-8 cannot hold, a field
over MAX_FIELD_CHARS, a duplicate: the same turns under the same id, or with no id) drops it and counts it by reason, as the built-in parsers do.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from chattune.common.errors import DataError
from chattune.data.parsing import MAX_FIELD_CHARS, Parsed, decode_utf8, load_json, normalised, writable

OPTIONAL = {"input", "system"}  # alpaca's input, and a system turn, may be absent
ROLES = {"system": "system", "user": "user", "assistant": "assistant",  # messages
         "human": "user", "gpt": "assistant"}  # sharegpt's names
CONVERSATION_DROP_REASONS = ("not_utf8", "field_too_long", "empty_turn", "no_reply_at_end", "duplicate")
MAX_TURNS = 100  # as EmpatheticDialogues' MAX_TURN_INDEX: a conversation's examples stay bounded


@dataclass(frozen=True)
class Conversation:
    """One conversation of an SFT file: its turns (a system turn first, if it has one), its id and its group
    (what holds it on one side of a split), and its label (the column the emotion metric predicts), if any."""

    id: str
    group: str
    label: str | None
    turns: tuple[tuple[str, str], ...]  # (role, text)


def read_rows(raw: bytes, name: str) -> list[tuple[str, dict]]:
    """The rows of a JSONL, JSON, CSV or Parquet file, each with where it is (`file:line`, or `file: row N`)."""
    suffix = Path(name).suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as parquet

        try:
            table = parquet.read_table(io.BytesIO(raw))
        except Exception as error:  # pyarrow raises its own kinds for every way a file is not Parquet
            raise DataError(f"{name}: not a Parquet file ({type(error).__name__}: {str(error)[:200]})") from None
        return [(f"{name}: row {number}", row) for number, row in enumerate(table.to_pylist(), start=1)]
    text = decode_utf8(raw, name)
    if suffix == ".jsonl":
        rows = [(f"{name}:{number}", load_json(line, name, number))
                for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    elif suffix == ".json":
        items = load_json(text, name)
        if not isinstance(items, list):
            raise DataError(f"{name}: expected a JSON array of objects, got {type(items).__name__}")
        rows = [(f"{name}: item {number}", item) for number, item in enumerate(items)]
    elif suffix == ".csv":
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
            rows = [(f"{name}:{reader.line_num}", row) for row in reader]
        except csv.Error as error:
            raise DataError(f"{name}: not a CSV file: {error}") from None
        if any(None in row for _, row in rows):
            where = next(where for where, row in rows if None in row)
            raise DataError(f"{where}: more fields than the header names")
    else:
        raise DataError(f"{name}: a data file ends in .jsonl, .json, .csv or .parquet")
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    return rows


def field(row: dict, where: str, name: str, columns: dict, kind: type | tuple = str):
    """The format's field `name` of a row, read from the column the map names, checked for its type."""
    column = columns.get(name, name)
    if column not in row or row[column] is None:
        if name in OPTIONAL:
            return ""
        renamed = f" (mapped from {name!r})" if column != name else ""
        raise DataError(f"{where}: no column {column!r}{renamed}; the row has {', '.join(map(repr, row)) or 'none'}")
    value = row[column]
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: column {column!r} must be {expected}, not {type(value).__name__}")
    return value


def turns_of(value: list, where: str, column: str, keys: tuple[str, str]) -> list[tuple[str, str]]:
    """A list of turns ({role, content} or ShareGPT's {from, value}) as (role, text), roles checked."""
    found = []
    for number, turn in enumerate(value):
        at = f"{where}: {column}[{number}]"
        if not isinstance(turn, dict) or not isinstance(turn.get(keys[0]), str) or not isinstance(turn.get(keys[1]), str):
            raise DataError(f"{at}: a turn is an object with the strings {keys[0]!r} and {keys[1]!r}")
        role = ROLES.get(turn[keys[0]])
        if role is None or (role == "system" and number):
            raise DataError(f"{at}: unknown role {turn[keys[0]]!r} (system first, then user and assistant"
                            f"{', or human and gpt' if keys[0] == 'from' else ''})")
        found.append((role, turn[keys[1]].strip()))
    return found


def sft_turns(row: dict, where: str, fmt: str, columns: dict) -> list[tuple[str, str]]:
    if fmt == "messages":
        return turns_of(field(row, where, "messages", columns, list), where, columns.get("messages", "messages"),
                        ("role", "content"))
    if fmt == "sharegpt":
        return turns_of(field(row, where, "conversations", columns, list), where,
                        columns.get("conversations", "conversations"), ("from", "value"))
    system = field(row, where, "system", columns).strip()  # alpaca's and prompt_completion's optional system turn
    opening = [("system", system)] if system else []
    if fmt == "alpaca":
        instruction, extra = (field(row, where, name, columns).strip() for name in ("instruction", "input"))
        return opening + [("user", f"{instruction}\n\n{extra}" if extra else instruction),
                          ("assistant", field(row, where, "output", columns).strip())]
    return opening + [("user", field(row, where, "prompt", columns).strip()),
                      ("assistant", field(row, where, "completion", columns).strip())]


def label_of(row: dict, where: str, column: str | None) -> str | None:
    if column is None:
        return None
    if column not in row or row[column] is None or str(row[column]).strip() == "":
        raise DataError(f"{where}: no label in column {column!r} (data.sft.label names it)")
    return str(row[column]).strip()


def parse_conversations(raw: bytes, name: str, fmt: str, columns: dict, label: str | None,
                        group: str | None) -> Parsed:
    """An SFT file in `fmt` as Conversations. A conversation's id is its `id` column (mapped) or its row; its group
    is the `group` column, or else its first user turn, normalised."""
    parsed, seen = Parsed(records=[]), set()
    for number, (where, row) in enumerate(read_rows(raw, name)):
        parsed.read += 1
        turns = sft_turns(row, where, fmt, columns)
        given_id = row.get(columns.get("id", "id"))
        conversation_id = str(given_id) if given_id not in (None, "") else f"row-{number}"
        tag = label_of(row, where, label)
        texts = [text for _, text in turns]
        if not all(map(writable, texts)):
            parsed.dropped["not_utf8"] += 1
        elif len(turns) > MAX_TURNS or max(map(len, texts), default=0) > MAX_FIELD_CHARS:
            parsed.dropped["field_too_long"] += 1
        elif not all(texts):
            parsed.dropped["empty_turn"] += 1
        elif not turns or turns[-1][0] != "assistant":
            parsed.dropped["no_reply_at_end"] += 1
        elif (given_id, tuple(turns)) in seen:  # the same conversation twice; under two ids, two conversations
            parsed.dropped["duplicate"] += 1
        else:
            seen.add((given_id, tuple(turns)))
            first_user = next((text for role, text in turns if role == "user"), "")
            key = str(row[group]) if group and row.get(group) is not None else normalised(first_user)
            parsed.records.append(Conversation(conversation_id, key, tag, tuple(turns)))
    return parsed


def reply_examples(conversations: list[Conversation], system_prompt: str, held_out: set[str] | None = None) -> Parsed:
    """One SFT example per assistant turn, with the conversation before it, in the processed shape
    (data/processed/sft/*.jsonl): a conversation's own system turn, or else `system_prompt` (if not empty), opens
    the prompt. With `held_out` (groups), a conversation of a held-out group is dropped and counted."""
    parsed = Parsed(records=[])
    for conversation in conversations:
        turns = list(conversation.turns)
        system = turns.pop(0)[1] if turns and turns[0][0] == "system" else system_prompt
        opening = [{"role": "system", "content": system}] if system else []
        for position, (role, text) in enumerate(turns):
            if role != "assistant":
                continue
            parsed.read += 1
            if held_out is not None and conversation.group in held_out:
                parsed.dropped["held_out_twin"] += 1
                continue
            parsed.records.append({
                "id": f"{conversation.id}:{position + 1}", "emotion": conversation.label, "situation": None,
                "prompt": opening + [{"role": r, "content": t} for r, t in turns[:position]],
                "completion": [{"role": "assistant", "content": text}]})
    return parsed


def assistant_turn(value, where: str, column: str) -> str:
    """A conversational pair's chosen or rejected reply: one assistant turn, as an object or a list of one."""
    turns = value if isinstance(value, list) else [value]
    if len(turns) != 1:
        raise DataError(f"{where}: column {column!r} must hold one assistant turn, not {len(turns)}")
    [(role, text)] = turns_of(turns, where, column, ("role", "content"))
    if role != "assistant":
        raise DataError(f"{where}: column {column!r} must hold an assistant turn, not a {role} turn")
    return text


def parse_preferences(raw: bytes, name: str, fmt: str, columns: dict, system_prompt: str) -> Parsed:
    """A preference file in `fmt` as processed pairs ({prompt: turns, chosen: [turn], rejected: [turn]}); a prompt
    without a system turn is opened with `system_prompt` (if not empty), as chattune.data.parsing.parse_dpo does."""
    parsed, seen = Parsed(records=[]), set()
    for where, row in read_rows(raw, name):
        parsed.read += 1
        if fmt == "strings":
            prompt = [("user", field(row, where, "prompt", columns).strip())]
            chosen, rejected = (field(row, where, key, columns).strip() for key in ("chosen", "rejected"))
        else:
            prompt = turns_of(field(row, where, "prompt", columns, list), where, columns.get("prompt", "prompt"),
                              ("role", "content"))
            chosen, rejected = (assistant_turn(field(row, where, key, columns, (list, dict)), where,
                                               columns.get(key, key)) for key in ("chosen", "rejected"))
        texts = [text for _, text in prompt] + [chosen, rejected]
        if not all(map(writable, texts)):
            parsed.dropped["not_utf8"] += 1
        elif max(map(len, texts)) > MAX_FIELD_CHARS or len(prompt) > MAX_TURNS:
            parsed.dropped["field_too_long"] += 1
        elif not all(texts) or not prompt:
            parsed.dropped["empty_field"] += 1
        elif prompt[-1][0] != "user":
            parsed.dropped["no_user_turn_at_end"] += 1
        elif chosen == rejected:
            parsed.dropped["chosen_equals_rejected"] += 1
        elif (tuple(prompt), chosen, rejected) in seen:
            parsed.dropped["duplicate"] += 1
        else:
            seen.add((tuple(prompt), chosen, rejected))
            opening = [] if prompt[0][0] == "system" or not system_prompt else [("system", system_prompt)]
            parsed.records.append({"prompt": [{"role": r, "content": t} for r, t in opening + prompt],
                                   "chosen": [{"role": "assistant", "content": chosen}],
                                   "rejected": [{"role": "assistant", "content": rejected}]})
    return parsed
