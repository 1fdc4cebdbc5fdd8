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
import itertools
from dataclasses import dataclass
from pathlib import Path

from chattune.common.errors import DataError
from chattune.data.parsing import (
    MAX_FIELD_CHARS,
    MAX_HISTORY_CHARS,
    Parsed,
    decode_utf8,
    load_json,
    normalised,
    writable,
)

OPTIONAL = {"input", "system"}  # alpaca's input, and a system turn, may be absent
ROLES = {"system": "system", "user": "user", "assistant": "assistant",  # messages
         "human": "user", "gpt": "assistant"}  # sharegpt's names
CONVERSATION_DROP_REASONS = ("not_utf8", "too_many_turns", "field_too_long", "empty_turn", "no_reply_at_end",
                             "turns_out_of_order", "duplicate")
MAX_TURNS = 100  # as EmpatheticDialogues' MAX_TURN_INDEX: a conversation's examples stay bounded
MAX_TABLE_CHARS = 2 << 30  # the text one file may hold, as the downloads' MAX_BYTES


@dataclass(frozen=True)
class Conversation:
    """One conversation of an SFT file: its turns (a system turn first, if it has one), its id and its group
    (what holds it on one side of a split), and its label (the column the emotion metric predicts), if any."""

    id: str
    group: str
    label: str | None
    turns: tuple[tuple[str, str], ...]  # (role, text)
    named: bool = False  # its id came from the data (an id column), not from its row


def read_rows(raw: bytes, name: str) -> list[tuple[str, dict]]:
    """The rows of a JSONL, JSON, CSV or Parquet file, each with where it is (`file:line`, `file: item N`, or
    `file: row N`, counted from 1)."""
    suffix = Path(name).suffix.lower()
    if suffix == ".parquet":
        rows = parquet_rows(raw, name)
    elif suffix in (".jsonl", ".json", ".csv"):
        text = decode_utf8(raw, name)
        if suffix == ".jsonl":
            rows = [(f"{name}:{number}", load_json(line, name, number))
                    for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
        elif suffix == ".json":
            items = load_json(text, name)
            if not isinstance(items, list):
                raise DataError(f"{name}: expected a JSON array of objects, got {type(items).__name__}")
            rows = [(f"{name}: item {number}", item) for number, item in enumerate(items, start=1)]
        else:
            rows = csv_rows(text.removeprefix("\ufeff"), name)  # a spreadsheet's byte order mark is not a column
    else:
        raise DataError(f"{name}: a data file ends in .jsonl, .json, .csv or .parquet")
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    return rows


def csv_rows(text: str, name: str) -> list[tuple[str, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if not header:
            raise DataError(f"{name}: an empty CSV file (no header)")
        repeated = sorted({column for column in header if header.count(column) > 1})
        if repeated:
            raise DataError(f"{name}:1: the header names {repeated[0]!r} twice")
        rows = []
        for values in reader:
            where = f"{name}:{reader.line_num}"
            if len(values) != len(header) and any(values):
                raise DataError(f"{where}: {len(values)} fields where the header names {len(header)}")
            if any(values):
                rows.append((where, dict(zip(header, values))))
    except csv.Error as error:  # among them a field over the csv module's limit (131,072 characters)
        raise DataError(f"{name}:{reader.line_num}: not a CSV file: {error}") from None
    return rows


def parquet_rows(raw: bytes, name: str) -> list[tuple[str, dict]]:
    """A Parquet file's rows, read a batch at a time and refused once their text passes MAX_TABLE_CHARS: a few
    kilobytes of dictionary-encoded Parquet can stand for gigabytes of text."""
    import pyarrow.parquet as parquet

    rows, chars = [], 0
    try:
        for batch in parquet.ParquetFile(io.BytesIO(raw)).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                chars += sum(len(value) for value in row.values() if isinstance(value, (str, bytes)))
                if chars > MAX_TABLE_CHARS:
                    raise DataError(f"{name}: over {MAX_TABLE_CHARS:,} characters of text by row {len(rows) + 1}; "
                                    "split the file")
                rows.append((f"{name}: row {len(rows) + 1}", row))
    except DataError:
        raise
    except UnicodeDecodeError as error:
        raise DataError(f"{name}: row {len(rows) + 1}: a text column that is not UTF-8 ({error.reason})") from None
    except Exception as error:  # pyarrow raises its own kinds for every way a file is not Parquet
        raise DataError(f"{name}: not a Parquet file ({type(error).__name__}: {str(error)[:200]})") from None
    return rows


def field(row: dict, where: str, name: str, columns: dict, kind: type | tuple = str):
    """The format's field `name` of a row, read from the column the map names, checked for its type."""
    column = columns.get(name, name)
    if column not in row or row[column] is None:
        if name in OPTIONAL:
            return ""
        renamed = f" (mapped from {name!r})" if column != name else ""
        if column in row:
            raise DataError(f"{where}: column {column!r}{renamed} is empty (null)")
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
        if role is None:
            raise DataError(f"{at}: unknown role {turn[keys[0]]!r} (system, user or human, assistant or gpt)")
        if role == "system" and number:
            raise DataError(f"{at}: a system turn comes first or not at all")
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


def key_of(row: dict, where: str, column: str, what: str) -> str:
    """A label or group value: a string or a whole number, never empty, a list, a boolean or a float (a NaN)."""
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: no {what} in column {column!r} (data.sft.{what} names it)")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: the {what} column {column!r} must hold text or a whole number, not "
                        f"{type(value).__name__}")
    return str(value).strip()


def conversation_id(row: dict, where: str, columns: dict) -> str | None:
    value = row.get(columns.get("id", "id"))
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: column {columns.get('id', 'id')!r} (the id) must hold text or a whole number, "
                        f"not {type(value).__name__}")
    return str(value)


def in_order(turns: list[tuple[str, str]]) -> bool:
    """After an optional system turn, user and assistant take turns, the user first."""
    spoken = [role for role, _ in turns if role != "system"]
    return bool(spoken) and all(role == ("user", "assistant")[i % 2] for i, role in enumerate(spoken))


def parse_conversations(raw: bytes, name: str, fmt: str, columns: dict, label: str | None,
                        group: str | None) -> Parsed:
    """An SFT file in `fmt` as Conversations. A conversation's id is its `id` column (mapped; two rows may not share
    one) or its row; its group is the `group` column, or else its first user turn, normalised."""
    parsed, seen, ids = Parsed(records=[]), set(), {}
    for number, (where, row) in enumerate(read_rows(raw, name), start=1):
        parsed.read += 1
        turns = sft_turns(row, where, fmt, columns)
        given = conversation_id(row, where, columns)
        if given is not None:
            if given in ids:
                raise DataError(f"{where}: the id {given!r} is already the id of {ids[given]}")
            ids[given] = where
        tag = key_of(row, where, label, "label") if label else None
        texts = [text for _, text in turns]
        if not all(map(writable, [*texts, given or "", tag or ""])):
            parsed.dropped["not_utf8"] += 1
        elif len(turns) > MAX_TURNS:
            parsed.dropped["too_many_turns"] += 1
        elif max(map(len, texts), default=0) > MAX_FIELD_CHARS:
            parsed.dropped["field_too_long"] += 1
        elif not all(texts):
            parsed.dropped["empty_turn"] += 1
        elif not turns or turns[-1][0] != "assistant":
            parsed.dropped["no_reply_at_end"] += 1
        elif not in_order(turns):
            parsed.dropped["turns_out_of_order"] += 1
        elif (given, tuple(turns)) in seen:  # the same conversation twice
            parsed.dropped["duplicate"] += 1
        else:
            seen.add((given, tuple(turns)))
            first_user = next(text for role, text in turns if role == "user")
            key = key_of(row, where, group, "group") if group else normalised(first_user)
            parsed.records.append(Conversation(given or f"row-{number}", key, tag, tuple(turns), given is not None))
    return parsed


@dataclass(frozen=True)
class HeldOutConversations:
    """What the held-out conversations are known by: their groups, the ids they were given, and their turns. A
    training conversation that shares any is their twin."""

    groups: frozenset[str]
    ids: frozenset[str]
    turns: frozenset[tuple]

    @staticmethod
    def of(conversations: list[Conversation]) -> "HeldOutConversations":
        return HeldOutConversations(frozenset(c.group for c in conversations),
                                    frozenset(c.id for c in conversations if c.named),
                                    frozenset(c.turns for c in conversations))

    def twin(self, conversation: Conversation) -> bool:
        return (conversation.group in self.groups or (conversation.named and conversation.id in self.ids)
                or conversation.turns in self.turns)


def reply_examples(conversations: list[Conversation], system_prompt: str,
                   held_out: HeldOutConversations | None = None) -> Parsed:
    """One SFT example per assistant turn, with the conversation before it, in the processed shape
    (data/processed/sft/*.jsonl): a conversation's own system turn, or else `system_prompt` (if not empty), opens
    the prompt. With `held_out`, a held-out conversation's twin is dropped and counted (held_out_twin); an example
    whose dialogue so far passes MAX_HISTORY_CHARS is too (history_too_long), as the built-in path does."""
    parsed = Parsed(records=[])
    for conversation in conversations:
        turns = list(conversation.turns)
        system = turns.pop(0)[1] if turns and turns[0][0] == "system" else system_prompt
        opening = [{"role": "system", "content": system}] if system else []
        told = list(itertools.accumulate(len(text) for _, text in turns))
        for position, (role, text) in enumerate(turns):
            if role != "assistant":
                continue
            parsed.read += 1
            if held_out is not None and held_out.twin(conversation):
                parsed.dropped["held_out_twin"] += 1
                continue
            if told[position] > MAX_HISTORY_CHARS:
                parsed.dropped["history_too_long"] += 1
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
        elif not in_order([*prompt, ("assistant", chosen)]):  # the prompt ends with the user's turn
            parsed.dropped["turns_out_of_order"] += 1
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
