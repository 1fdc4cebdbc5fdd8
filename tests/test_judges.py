"""The learned metrics: classifiers trained on training rows only, held out exactly as preprocess holds out,
deterministic, and an empty reply neither human-like nor naming an emotion."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from stages import base_model, download, judges, preprocess
from stages.judging import Judges, chance, listener_replies, mean_pooled
from stages.outputs import read_jsonl
from stages.parsing import parse_empathetic, read_bytes
from stages.paths import DPO_DATA, JUDGES_DIR, RAW_DIR


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """download, base_model, preprocess and judges on the embedded sample, in a copy of the project."""
    from conftest import copy_project

    repo = copy_project(tmp_path_factory.mktemp("judges"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(repo)
        for stage in (download, base_model, preprocess, judges):
            stage.main()
        yield repo, Judges.load(repo / JUDGES_DIR)


def test_the_human_likeness_classifier_holds_out_the_dpo_stages_eval_pairs(trained, monkeypatch):
    repo, judge = trained
    monkeypatch.chdir(repo)
    metrics = json.loads((repo / "metrics/judges.json").read_text())
    held_out = read_jsonl(DPO_DATA / "eval.jsonl")
    data = json.loads((repo / "metrics/data.json").read_text())
    assert metrics["humanlike.held_out_pairs"] == len(held_out) == data["dpo.eval.pairs"]
    assert metrics["humanlike.train_pairs"] == data["dpo.rows.kept"] - len(held_out)  # every other pair
    # Its held-out accuracy is what it scores on exactly those pairs.
    texts = [text for pair in held_out for text in (pair["chosen"][0]["content"], pair["rejected"][0]["content"])]
    labels = np.array([1, 0] * len(held_out))
    assert metrics["humanlike.held_out_accuracy"] == pytest.approx(judge.humanlike_share(texts).rows.__eq__(labels).mean())
    # Its vocabulary is exactly the words of the training pairs (here all of dpo/train.jsonl): no held-out text.
    vectorizer = judge.humanlike[0]
    analyze = vectorizer.build_analyzer()
    train_features = {feature for pair in read_jsonl(DPO_DATA / "train.jsonl") for side in ("chosen", "rejected")
                      for feature in analyze(pair[side][0]["content"])}
    assert set(vectorizer.vocabulary_) == train_features
    assert {feature for text in texts for feature in analyze(text)} - train_features  # the held-out pairs have others


def test_the_emotion_classifier_is_checked_on_valid_csv_beside_chance(trained, monkeypatch):
    repo, judge = trained
    monkeypatch.chdir(repo)
    metrics = json.loads((repo / "metrics/judges.json").read_text())
    path = RAW_DIR / "empatheticdialogues/valid.csv"
    texts, emotions = listener_replies(parse_empathetic(read_bytes(path), str(path)).records)
    assert metrics["emotion.valid_replies"] == len(texts)
    assert metrics["emotion.valid_chance"] == chance(emotions)
    assert metrics["emotion.valid_accuracy"] == pytest.approx(judge.emotion_accuracy(texts, emotions).value())
    assert metrics["emotion.labels"] == 10  # the sample's emotions


def test_an_empty_reply_is_neither_human_like_nor_names_its_emotion(trained):
    _, judge = trained
    texts = ["", "I'm so sorry, that sounds really hard. How are you holding up?"]
    emotion = judge.emotion.predict(texts[1:])[0]
    assert judge.humanlike_share(texts).rows[0] == 0
    assert list(judge.emotion_accuracy(texts, [emotion, emotion]).rows) == [0, 1]


def test_two_trainings_judge_alike(trained, monkeypatch):
    repo, judge = trained
    monkeypatch.chdir(repo)
    texts = [pair["chosen"][0]["content"] for pair in read_jsonl(DPO_DATA / "eval.jsonl")]
    first = json.loads((repo / "metrics/judges.json").read_text())
    judges.main()  # train again from the same rows
    assert json.loads((repo / "metrics/judges.json").read_text()) == first
    retrained = Judges.load(repo / JUDGES_DIR)
    assert (retrained.humanlike.predict_proba(texts) == judge.humanlike.predict_proba(texts)).all()
    assert (retrained.emotion.predict_proba(texts) == judge.emotion.predict_proba(texts)).all()

    # trained again in another process, the files are the same to the byte: DVC sees the judges unchanged
    files = {path.name: path.read_bytes() for path in (repo / JUDGES_DIR).iterdir()}
    subprocess.run([sys.executable, "-m", "stages.judges"], cwd=repo, check=True, capture_output=True)
    assert {path.name: path.read_bytes() for path in (repo / JUDGES_DIR).iterdir()} == files


def test_mean_pooling_ignores_padding_and_follows_the_hidden_states_device():
    hidden = torch.tensor([[[3.0, 4.0], [100.0, -7.0]], [[1.0, 0.0], [0.0, 1.0]]])
    mask = torch.tensor([[1, 0], [1, 1]])  # the first row's second token is padding
    pooled = mean_pooled(hidden, mask)
    assert torch.allclose(pooled, torch.tensor([[0.6, 0.8], [2**-0.5, 2**-0.5]]))
    # the embedder on a GPU with the tokenizer's mask on the CPU (the real run's crash on an H200): the meta device
    # stands in for the GPU
    assert mean_pooled(hidden.to("meta"), mask).device.type == "meta"
