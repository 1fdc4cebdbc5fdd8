"""Scores for generated replies, and bootstrap intervals for them.

Every metric is a `Measure`: one row per reply (its score, or the metric's sufficient statistics, e.g.
n-gram matches for corpus BLEU) and the function that turns any selection of rows into the metric.
Resampling the rows with replacement gives a bootstrap interval; resampling two models' rows with the
same indices (their replies to the same prompts) gives a paired interval for their difference.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
from nltk.tokenize import wordpunct_tokenize
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from sacrebleu.metrics import BLEU, CHRF


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


def opening(text: str) -> str:
    """A reply's first sentence (to its first . ! ? or line break), in words: what a reader meets first."""
    return " ".join(words(re.split(r"(?<=[.!?])\s|\n", text.strip(), maxsplit=1)[0]))


def distinct_openings(texts: list[str]) -> float:
    """Share of replies whose first sentence no other reply's repeats: a stock opener ("I'm sorry for your loss.")
    on many prompts lowers it even when every reply goes on differently, which distinct_replies misses."""
    return distinct_replies([opening(text) for text in texts])


def repeats(text: str, n: int = 4) -> bool:
    """Whether a reply says the same n words (or more) twice: the loops the notebook's SFT6/SFT8 fell into."""
    grams = ngrams(words(text), n)
    return len(set(grams)) < len(grams)


def preference_accuracy(policy: np.ndarray, reference: np.ndarray) -> float:
    """Share of held-out pairs whose implicit DPO reward, log pi(y|x) - log pi_ref(y|x), is higher for the
    chosen reply than for the rejected one. Rows: [logp chosen, logp rejected] per pair."""
    margin = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    return float((margin > 0).mean())


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
