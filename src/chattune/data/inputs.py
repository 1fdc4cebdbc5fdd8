"""What preprocess and judges read: the SFT conversations and the preference pairs in data/raw/, built-in or of your
own (chattune.data.formats), in the splits every preset shares.

SFT splits are train, valid and test. EmpatheticDialogues has its own; data of your own uses its valid and test files
where it gives them, and otherwise holds conversations out of train by group (data.sft.group, or the first user turn
normalised), with the seed, to eval.sft_eval_size and eval.test_size replies: the same conversations for every preset.
A training conversation that shares a group with a held-out one is left out (held_out_twin), as an EmpatheticDialogues
one that shares its id or situation is. Preference pairs: an eval file, or held out of train by prompt
(chattune.data.parsing.split_pairs).
"""
from __future__ import annotations

from dataclasses import dataclass

from chattune.common.errors import DataError
from chattune.common.paths import DPO_FILE, DPO_SUBDIR, ED_SPLITS, ED_SUBDIR, RAW_DIR
from chattune.data.formats import (
    CONVERSATION_DROP_REASONS,
    HeldOutConversations,
    parse_conversations,
    parse_preferences,
    reply_examples,
)
from chattune.data.parsing import (
    DPO_DROP_REASONS,
    ED_DROP_REASONS,
    EXAMPLE_DROP_REASONS,
    HeldOut,
    Parsed,
    listener_examples,
    listener_turns,
    normalised,
    parse_dpo,
    parse_empathetic,
    prompt_group,
    read_bytes,
    split_pairs,
    subsample,
)

PROCESSED_SPLITS = {"train": "train", "eval": "valid", "test": "test"}  # processed split -> the data's own split
REPLY_DROP_REASONS = ("held_out_twin", "history_too_long", "too_long")
PREFERENCE_DROP_REASONS = (*DPO_DROP_REASONS, "turns_out_of_order")


@dataclass
class SftSplits:
    """Each processed split's examples (before fitting and sizing), the file they came from, the counts
    metrics/data.json records of how the files were read, and what the examples are counted as
    (`sft.<split>.<kind>.*`, with `reasons` to drop one)."""

    examples: dict[str, Parsed]
    sources: dict[str, str]
    counts: dict[str, int]
    kind: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Reply:
    """A reply of the SFT data with the conversation's label: what the emotion judge learns from and is checked on."""

    text: str
    label: str
    conversation: str


def sft_splits(params, seed_format: bool = False) -> SftSplits:
    data = params.data.sft
    if data.own is None:
        return empathetic_splits(params.sft.system_prompt, seed_format)
    return own_sft_splits(params)


def empathetic_turns() -> tuple[dict[str, tuple[str, Parsed]], HeldOut]:
    """EmpatheticDialogues' raw splits as (file, its turns), and what the held-out conversations (valid and test)
    are known by."""
    turns = {}
    for split in ED_SPLITS:
        path = RAW_DIR / ED_SUBDIR / f"{split}.csv"
        turns[split] = str(path), parse_empathetic(read_bytes(path), str(path))
    return turns, HeldOut.of([turn for split in ("valid", "test") for turn in turns[split][1].records])


def empathetic_splits(system_prompt: str, seed_format: bool) -> SftSplits:
    turns, held_out = empathetic_turns()
    found = SftSplits({}, {}, {}, "listener_turns", EXAMPLE_DROP_REASONS)
    for split, own in PROCESSED_SPLITS.items():
        name, parsed = turns[own]
        found.examples[split] = listener_examples(parsed.records, system_prompt, seed_format,
                                                  held_out if split == "train" else None)
        found.sources[split] = name
        found.counts.update(parsed.counts(f"ed.{own}.rows", ED_DROP_REASONS))
        found.counts[f"ed.{own}.rows.extra_fields"] = parsed.extra_fields
    trained = {normalised(example["situation"]) for example in found.examples["train"].records}
    found.counts["sft.situations_across_splits"] = len(trained & held_out.situations)
    return found


def own_conversations(params) -> tuple[dict, dict[str, int], HeldOutConversations]:
    """split -> (file, its conversations), with held-out splits the data does not give cut from train by group; the
    counts of how the files were read; and what the held-out conversations (valid and test) are known by."""
    data, counts = params.data.sft, {}
    read = {}
    for split, file in data.own.files.items():
        path = RAW_DIR / file
        parsed = parse_conversations(read_bytes(path), str(path), data.format, data.own.columns, data.label,
                                     data.group)
        counts.update(parsed.counts(f"sft.{split}.conversations", CONVERSATION_DROP_REASONS))
        read[split] = str(path), parsed.records
    name, train = read["train"]
    for split, size in (("valid", params.eval.sft_eval_size), ("test", params.eval.test_size)):
        if split not in read:
            train, held = hold_out(train, size, params.seed + (split == "test"))
            read[split] = f"{name} (held out by group)", held
            read["train"] = name, train
    return read, counts, HeldOutConversations.of([c for split in ("valid", "test") for c in read[split][1]])


def own_sft_splits(params) -> SftSplits:
    read, counts, held = own_conversations(params)
    found = SftSplits({}, {}, counts, "replies", REPLY_DROP_REASONS)
    for split, own in PROCESSED_SPLITS.items():
        name, conversations = read[own]
        if not conversations:
            raise DataError(f"{name}: no conversations left for the {own} split")
        found.examples[split] = reply_examples(conversations, params.sft.system_prompt,
                                               held if split == "train" else None)
        found.sources[split] = name
    return found


def hold_out(conversations: list, replies: int, seed: int) -> tuple[list, list]:
    """Whole groups of conversations, in an order shuffled with the seed, held out until they hold `replies`
    assistant turns (a tenth of the data's when it has fewer than ten times that); the rest stays. The held-out
    conversations depend on the conversations, the seed and `replies` only."""
    groups: dict[str, list] = {}
    for conversation in conversations:
        groups.setdefault(conversation.group, []).append(conversation)

    def count(members):
        return sum(role == "assistant" for c in members for role, _ in c.turns)

    target = min(replies, max(1, count(conversations) // 10))
    held, rest, taken = [], [], 0
    for members in subsample(groups.values(), len(groups), seed):
        if taken < target and (not held or taken + count(members) <= target):
            held.extend(members)
            taken += count(members)
        else:
            rest.extend(members)
    return rest, held


def labelled_replies(params) -> tuple[dict[str, list[Reply]], str]:
    """train (held-out twins left out) and valid replies with their conversation's label, for the emotion judge; {}
    where the SFT data has no label. Also the name of the valid split's source."""
    data = params.data.sft
    if data.own is None:
        turns, held = empathetic_turns()
        found = {"train": listener_turns(turns["train"][1].records, held),
                 "valid": listener_turns(turns["valid"][1].records)}
        return ({split: [Reply(t.text, t.emotion, t.conv_id) for t in found[split]] for split in found},
                turns["valid"][0])
    if data.label is None:
        return {}, ""
    read, _, held = own_conversations(params)
    found = {}
    for split in ("train", "valid"):
        found[split] = [Reply(text, c.label, c.id) for c in read[split][1] if split != "train" or not held.twin(c)
                        for role, text in c.turns if role == "assistant"]
    labels = {reply.label for reply in found["train"]}
    if len(labels) < 2:
        raise DataError(f"data.sft.label: the column {data.label!r} holds {len(labels)} value(s) over the training "
                        "replies; the emotion metric needs at least 2 (or set data.sft.label: null)")
    return found, read["valid"][0]


def preference_pairs(params, system_prompt: str) -> tuple[str, Parsed, Parsed | None]:
    """The preference data's file, its pairs (a prompt without a system turn opened with `system_prompt`, if not
    empty), and the pairs of its own eval file (None: to be held out of train)."""
    data = params.data.dpo
    if data.own is None:
        path = RAW_DIR / DPO_SUBDIR / DPO_FILE
        return str(path), parse_dpo(read_bytes(path), str(path), system_prompt), None
    parsed = {}
    for split, file in data.own.files.items():
        path = RAW_DIR / file
        parsed[split] = str(path), parse_preferences(read_bytes(path), str(path), data.format, data.own.columns,
                                                     system_prompt)
    return parsed["train"][0], parsed["train"][1], parsed.get("eval", (None, None))[1]


def preference_split(params, pairs: Parsed, given: Parsed | None) -> tuple[list, list, int]:
    """Every pair that may train, the held-out pairs, and how many training pairs were left out as their twins: the
    data's eval file (cut to eval.dpo_eval_size with the seed), the pairs of its prompts left out of train; or held
    out by prompt (split_pairs, which leaves no twin)."""
    if given is None:
        return (*split_pairs(pairs.records, len(pairs.records), params.eval.dpo_eval_size, params.seed), 0)
    held = subsample(given.records, params.eval.dpo_eval_size, params.seed)
    prompts = {prompt_group(pair) for pair in held}
    train = [pair for pair in pairs.records if prompt_group(pair) not in prompts]
    return subsample(train, len(train), params.seed), held, len(pairs.records) - len(train)
