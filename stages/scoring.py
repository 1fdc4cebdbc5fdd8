"""Scores for generated replies, and bootstrap intervals for them; and the blind human-rating sheet.

Every metric is a `Measure`: one row per reply (its score, or the metric's sufficient statistics, e.g.
n-gram matches for corpus BLEU) and the function that turns any selection of rows into the metric.
Resampling the rows with replacement gives a bootstrap interval; resampling two models' rows with the
same indices (their replies to the same prompts) gives a paired interval for their difference.
"""
from __future__ import annotations

import csv
import io
import math
import random
import secrets
from dataclasses import dataclass
from typing import Callable

import numpy as np
from nltk.tokenize import wordpunct_tokenize
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from sacrebleu.metrics import BLEU, CHRF

from stages.outputs import atomic_file, write_json
from stages.parsing import DataError, decode_utf8
from stages.paths import HUMAN_KEY, HUMAN_SHEET


@dataclass(frozen=True)
class Measure:
    rows: np.ndarray  # one row per reply
    reduce: Callable[[np.ndarray], float]  # rows -> the metric over those replies

    def value(self) -> float:
        return float(self.reduce(self.rows))


def mean_of(values) -> Measure:
    return Measure(np.asarray(values, dtype=float), np.mean)


def words(text: str) -> list[str]:
    return wordpunct_tokenize(text.lower())


def nltk_bleu(hypotheses: list[str], references: list[str]) -> Measure:
    """The notebook's BLEU: nltk sentence BLEU with smoothing method 4, averaged over replies (0-1).
    Cased, like the notebook's."""
    smooth = SmoothingFunction().method4
    return mean_of([sentence_bleu([wordpunct_tokenize(ref)], wordpunct_tokenize(hyp), smoothing_function=smooth)
                    for hyp, ref in zip(hypotheses, references)])


def _corpus_metric(metric, hypotheses: list[str], references: list[str]) -> Measure:
    # Per-reply sufficient statistics summed over any selection give the corpus score of that selection;
    # sacrebleu's own paired bootstrap works the same way.
    rows = np.array(metric._extract_corpus_statistics(hypotheses, [references]), dtype=np.int64)
    return Measure(rows, lambda rows: metric._compute_score_from_stats(list(rows.sum(axis=0))).score)


def sacrebleu_bleu(hypotheses: list[str], references: list[str]) -> Measure:
    """sacreBLEU corpus BLEU (0-100), with its default 13a tokenizer."""
    return _corpus_metric(BLEU(), hypotheses, references)


def chrf(hypotheses: list[str], references: list[str]) -> Measure:
    """Corpus chrF (0-100)."""
    return _corpus_metric(CHRF(), hypotheses, references)


def perplexity(logprobs: np.ndarray) -> Measure:
    """Perplexity over reference tokens, from rows of [sum of log-probabilities, token count]."""
    return Measure(np.asarray(logprobs, dtype=float), lambda rows: math.exp(-rows[:, 0].sum() / rows[:, 1].sum()))


def ngrams(tokens: list[str], n: int) -> list[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct(texts: list[str], n: int) -> float:
    """Distinct-n: unique n-grams over all n-grams, pooled over the replies (0 when there are none)."""
    grams = [gram for text in texts for gram in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_replies(texts: list[str]) -> float:
    """Share of replies that no other reply repeats word for word (case and spacing aside): 1 when every
    prompt got its own reply, 1/n when n prompts got one. Distinct-n pools words over all replies, so it
    misses a model that answers most prompts with the same sentence; this catches it."""
    return len({" ".join(words(text)) for text in texts}) / len(texts) if texts else 0.0


def repeats(text: str, n: int = 4) -> bool:
    """Whether a reply says the same n words (or more) twice: the loops the notebook's SFT6/SFT8 fell into."""
    grams = ngrams(words(text), n)
    return len(set(grams)) < len(grams)


def resample(n: int, samples: int, seed: int) -> np.ndarray:
    """Bootstrap indices: `samples` rows of n draws from range(n), with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def _percentiles(values) -> tuple[float, float]:
    low, high = np.percentile(np.asarray(values, dtype=float), [2.5, 97.5])
    return float(low), float(high)


def interval(measure: Measure, indices: np.ndarray) -> tuple[float, float]:
    """95% percentile bootstrap interval of the metric."""
    return _percentiles([measure.reduce(measure.rows[draw]) for draw in indices])


def paired_difference(before: Measure, after: Measure, indices: np.ndarray) -> tuple[float, float, float]:
    """after - before, with its 95% paired bootstrap interval (both resampled with the same draws)."""
    differences = [after.reduce(after.rows[draw]) - before.reduce(before.rows[draw]) for draw in indices]
    return (after.value() - before.value(), *_percentiles(differences))


# --- the blind rating sheet: evaluate writes it, raters fill copies, the human stage reads them ---

CRITERIA = ("helpfulness", "harmlessness", "relevance", "quality")
COLUMNS = ("code", "prompt", "reference", "response", *CRITERIA, "comment")
SCALE = ("1", "2", "3", "4", "5")
SPEAKERS = {"system": "Context", "user": "Person", "assistant": "Listener"}


def prompt_text(prompt, instructions: str = "") -> str:
    """A prompt as a rater reads it: one line per message, or the plain text of the seed format. The
    model's standing instructions (the SFT system prompt) are left out; what the system message adds to
    them, such as the situation, is kept."""
    if isinstance(prompt, str):
        return prompt.strip()
    lines = []
    for message in prompt:
        content = message["content"]
        if message["role"] == "system":
            content = content.removeprefix(instructions).strip()
        if content:
            lines.append(f"{SPEAKERS[message['role']]}: {content}")
    return "\n".join(lines)


def make_sheet(replies: list[dict], seed: int, instructions: str = "") -> tuple[list[dict], dict]:
    """Blind sheet rows in shuffled order, and the key (code -> set, id, model). Codes are random (not
    derived from anything a rater can see), so only the key un-blinds them; the order is shuffled with the seed.

    `replies`: {set, id, model, prompt, reference, response} per reply; `instructions`: the system prompt
    every prompt starts with, which raters need not read again on each row."""
    rows, key = [], {}
    for reply in replies:
        code = secrets.token_hex(4)
        while code in key:
            code = secrets.token_hex(4)
        key[code] = {field: reply[field] for field in ("set", "id", "model")}
        rows.append({"code": code, "prompt": prompt_text(reply["prompt"], instructions), "reference": reply["reference"],
                     "response": reply["response"], **{criterion: "" for criterion in (*CRITERIA, "comment")}})
    random.Random(seed).shuffle(rows)
    return rows, key


def write_sheet(replies: list[dict], seed: int, instructions: str = "") -> None:
    rows, key = make_sheet(replies, seed, instructions)
    with atomic_file(HUMAN_SHEET) as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    write_json(HUMAN_KEY, key)


def read_sheet(raw: bytes, name: str, key: dict) -> dict[str, dict[str, int]] | None:
    """A filled sheet's ratings by code, or None when none of its codes is in the key (a stale sheet).
    A row with no rating at all is not rated yet and left out; a row rated in part, or any bad cell, stops with
    the file, row, line and column. Every row of the sheet must be there."""
    reader = csv.reader(io.StringIO(decode_utf8(raw, name).lstrip("\ufeff"), newline=""))
    header = next(reader, None)
    if header is None or [cell.strip() for cell in header] != list(COLUMNS):
        raise DataError(f"{name}:1: expected the columns {','.join(COLUMNS)}, got {','.join(header or [])!r}")
    rows, number, first_line = [], 0, reader.line_num + 1
    for cells in reader:  # a row may span lines: the prompt cell holds one line per message
        where, first_line = f"{name}: row {number + 1} (line {first_line})", reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue
        number += 1
        if len(cells) != len(COLUMNS):
            raise DataError(f"{where}: expected {len(COLUMNS)} cells, got {len(cells)}")
        rows.append((where, dict(zip(COLUMNS, (cell.strip() for cell in cells)))))
    if not any(row["code"] in key for _, row in rows):
        return None
    ratings: dict[str, dict[str, int]] = {}
    for where, row in rows:
        code = row["code"]
        if code not in key:
            raise DataError(f"{where}, column 'code': unknown code {code!r} (not in {HUMAN_KEY})")
        if code in ratings:
            raise DataError(f"{where}, column 'code': code {code!r} appears twice")
        if not any(row[criterion] for criterion in CRITERIA):
            continue  # not rated yet: a sheet in progress (the rating page saves after every change)
        for criterion in CRITERIA:
            if not row[criterion]:
                raise DataError(f"{where}, column {criterion!r}: missing rating")
            if row[criterion] not in SCALE:
                raise DataError(f"{where}, column {criterion!r}: {row[criterion]!r} is not an integer from 1 to 5")
        ratings[code] = {criterion: int(row[criterion]) for criterion in CRITERIA}
    missing = sorted(set(key) - {row["code"] for _, row in rows})
    if missing:
        raise DataError(f"{name}: {len(missing)} of the sheet's {len(key)} rows are missing (codes {', '.join(missing[:5])}"
                        f"{', ...' if len(missing) > 5 else ''})")
    return ratings
