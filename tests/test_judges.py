"""The learned metrics: classifiers trained on training rows only, held out exactly as preprocess holds out,
deterministic, and an empty reply neither human-like nor naming an emotion."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from chattune.common.outputs import read_jsonl
from chattune.common.params import load_params
from chattune.common.paths import DPO_DATA, JUDGES_DIR, RAW_DIR
from chattune.data.parsing import HeldOut, Turn, listener_turns, parse_empathetic, read_bytes
from chattune.evaluation.judging import (
    Judges,
    chance,
    clears_chance,
    conversation_accuracy,
    matched_replies,
    mean_pooled,
)
from chattune.evaluation.replies import reply_budget
from chattune.evaluation.scoring import interval, resample
from chattune.modeling.loading import load_tokenizer
from conftest import ROOT, shared_file
from stages import base_model, download, judges, preprocess


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
    # Its held-out accuracy is what it scores on exactly those pairs, cut as it was trained.
    tokenizer, budget = load_tokenizer(), reply_budget(load_params())
    assert metrics["humanlike.reply_budget"] == budget
    texts, labels = matched_replies(held_out, tokenizer, budget)
    assert metrics["humanlike.held_out_accuracy"] == pytest.approx(
        (judge.humanlike_share(texts).rows == np.array(labels)).mean())
    assert metrics["humanlike.held_out_accuracy_low"] <= metrics["humanlike.held_out_accuracy"]
    assert metrics["humanlike.informative"] == (metrics["humanlike.held_out_accuracy_low"] > 0.5)
    # Its vocabulary is exactly the words of the training pairs (here all of dpo/train.jsonl) as it read them: no
    # held-out text.
    vectorizer = judge.humanlike[0]
    analyze = vectorizer.build_analyzer()
    train_texts, _ = matched_replies(read_jsonl(DPO_DATA / "train.jsonl"), tokenizer, budget)
    train_features = {feature for text in train_texts for feature in analyze(text)}
    assert set(vectorizer.vocabulary_) == train_features
    assert {feature for text in texts for feature in analyze(text)} - train_features  # the held-out pairs have others


def test_both_replies_of_a_pair_are_cut_to_one_length_within_the_budget():
    """The chosen replies are the longer ones: a classifier shown them whole could learn length. Each pair's two
    replies are cut to the shorter one's tokens, and never past the reply budget."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(shared_file("tinyllama"))

    def pair(chosen, rejected):
        return {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}

    long_chosen = "Oh wow, that's such a fun question, honestly I love thinking about it all day long! 😄"
    texts, labels = matched_replies([pair(long_chosen, "I am an AI."), pair("Yes!", "I do not have opinions.")],
                                    tokenizer, budget=64)
    assert labels == [1, 0, 1, 0]
    lengths = [len(tokenizer(text, add_special_tokens=False).input_ids) for text in texts]
    assert lengths[0] == lengths[1] == len(tokenizer("I am an AI.", add_special_tokens=False).input_ids)
    assert texts[0] == "Oh wow, that'" and texts[1] == "I am an AI."  # six tokens each
    assert texts[2:] == ["Yes!", "I do"]
    assert [len(tokenizer(text, add_special_tokens=False).input_ids) for text in
            matched_replies([pair(long_chosen, long_chosen + " As an AI.")], tokenizer, budget=5)[0]] == [5, 5]


def test_a_classifier_that_cannot_tell_its_classes_apart_is_uninformative(trained):
    """A check's verdict: the lower end of its 95% interval above chance. The emotion classifier on replies whose
    labels were shuffled names them at chance, and is called uninformative; on their real labels it is not."""
    _, judge = trained
    path = ROOT / "data/sample/empatheticdialogues/valid.csv"
    valid = listener_turns(parse_empathetic(read_bytes(path), str(path)).records)
    texts, emotions, conversations = ([getattr(turn, key) for turn in valid] for key in ("text", "emotion", "conv_id"))
    shuffled = dict(zip(sorted(set(conversations)), np.random.default_rng(0).permutation(
        [next(e for e, c in zip(emotions, conversations) if c == conv) for conv in sorted(set(conversations))])))
    for labels, expected in ((emotions, True), ([shuffled[c] for c in conversations], False)):
        measure = conversation_accuracy(judge, texts, labels, conversations)
        assert len(measure.rows) == len(set(conversations))  # resampled by conversation, not by reply
        low, _ = interval(measure, resample(len(measure.rows), 500, 0))
        assert clears_chance(low, chance(labels)) is expected, (measure.value(), low, chance(labels))


def test_the_emotion_classifier_is_checked_on_valid_csv_beside_chance(trained, monkeypatch):
    repo, judge = trained
    monkeypatch.chdir(repo)
    metrics = json.loads((repo / "metrics/judges.json").read_text())
    path = RAW_DIR / "empatheticdialogues/valid.csv"
    valid = listener_turns(parse_empathetic(read_bytes(path), str(path)).records)
    texts, emotions = [turn.text for turn in valid], [turn.emotion for turn in valid]
    assert metrics["emotion.valid_replies"] == len(texts)
    assert metrics["emotion.valid_conversations"] == len({turn.conv_id for turn in valid})
    assert metrics["emotion.valid_chance"] == chance(emotions)
    assert metrics["emotion.valid_accuracy"] == pytest.approx(judge.emotion_accuracy(texts, emotions).value())
    assert metrics["emotion.labels"] == 10  # the sample's emotions
    assert metrics["emotion.informative"] == (metrics["emotion.valid_accuracy_low"] > metrics["emotion.valid_chance"])


def test_the_emotion_classifier_never_learns_from_a_held_out_conversations_twin():
    """A training conversation that tells a held-out conversation's situation again (or shares its id) is left out,
    as preprocess leaves it out of SFT."""
    turns = [Turn("c1", 1, "sad", "My dog died.", "My dog died."), Turn("c1", 2, "sad", "My dog died.", "So sorry."),
             Turn("c2", 1, "joyful", "I got the job!", "Guess what!"), Turn("c2", 2, "joyful", "I got the job!", "Yay!"),
             Turn("t9", 2, "proud", "I won.", "Nice one.")]
    held_out = HeldOut.of([Turn("t1", 1, "sad", "  my DOG died. ", "..."), Turn("t9", 1, "proud", "Other.", "...")])
    assert [turn.text for turn in listener_turns(turns, held_out)] == ["Yay!"]
    assert len(listener_turns(turns)) == 3


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
