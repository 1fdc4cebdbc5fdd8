import math

import pytest
import torch

from stages import base_model
from stages.evaluate import bertscore_f1, generate, nltk_bleu, score
from stages.modeling import prompt_ids
from stages.params import load_params

from conftest import ROOT

HYP, REF = "the cat sat on the mat", "the cat sat on a mat"
# Clipped n-gram precisions 5/6, 3/5, 2/4, 1/3 and no brevity penalty (equal lengths).
HYP_REF_BLEU = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["I am so sorry to hear that.", "That sounds hard.", "My dog died.", "Sure thing."] * 20
    return base_model.train_tokenizer(texts, vocab_size=300, max_length=256)


@pytest.fixture(scope="module")
def cfg():
    return load_params(ROOT / "params.yaml").eval.model_copy(update={"batch_size": 2, "max_new_tokens": 6})


class ScriptedModel:
    """Stands in for a causal LM: answers each prompt with scripted token ids, and checks that the
    batch arrives left-padded with a matching attention mask."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, replies: dict[tuple, list[int]]):
        self.tokenizer, self.replies, self.batches = tokenizer, replies, []

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, generation_config):
        self.batches.append(input_ids.shape)
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            width = int(mask.sum())
            assert mask[-width:].all() and not mask[:-width].any(), "prompts must be left-padded"
            new = self.replies[tuple(ids[-width:].tolist())][: generation_config.max_new_tokens]
            rows.append(new + [self.tokenizer.pad_token_id] * (generation_config.max_new_tokens - len(new)))
        return torch.cat([input_ids, torch.tensor(rows)], dim=1)


def test_only_generated_tokens_are_scored_and_order_is_kept(tokenizer, cfg):
    eos = tokenizer.eos_token_id
    prompts = [
        prompt_ids(tokenizer, [{"role": "user", "content": "My dog died and I am so sorry to hear that."}]),
        prompt_ids(tokenizer, [{"role": "user", "content": "Hi"}]),
        prompt_ids(tokenizer, "Instruction: sad\nResponse: "),
    ]
    sure = tokenizer("Sure thing.", add_special_tokens=False).input_ids
    hard = tokenizer("That sounds hard.", add_special_tokens=False).input_ids
    model = ScriptedModel(tokenizer, {
        tuple(prompts[0]): hard + [eos],
        tuple(prompts[1]): sure + [eos, eos],
        tuple(prompts[2]): (sure * 5),  # never stops
    })
    replies, speed = generate(model, tokenizer, prompts, cfg)
    assert [r["text"] for r in replies[:2]] == ["That sounds hard.", "Sure thing."]
    assert [r["stopped"] for r in replies] == [True, True, False]
    assert replies[2]["new_tokens"] == cfg.max_new_tokens and speed > 0
    # Sorted by prompt length: the two shortest prompts share the first batch.
    assert [shape[0] for shape in model.batches] == [2, 1]
    assert model.batches[0][1] == max(len(prompts[1]), len(prompts[2]))
    for prompt, reply in zip(prompts, replies):
        assert tokenizer.decode(prompt, skip_special_tokens=True).strip() not in reply["text"]


def test_nltk_bleu_matches_a_hand_computed_value():
    assert nltk_bleu([HYP], [REF]) == pytest.approx(HYP_REF_BLEU, abs=1e-9)
    assert nltk_bleu([REF, HYP], [REF, REF]) == pytest.approx((1 + HYP_REF_BLEU) / 2)
    assert nltk_bleu([""], [REF]) == 0


def test_scores_on_fixed_strings(cfg):
    replies = [{"new_tokens": 4, "stopped": True}, {"new_tokens": 6, "stopped": False}]
    scores = score([HYP, REF], [REF, REF], replies, cfg)
    assert scores["sacrebleu"] == pytest.approx(100 * math.exp((math.log(11 / 12) + math.log(8 / 10) + math.log(6 / 8)
                                                                + math.log(4 / 6)) / 4), abs=1e-6)
    assert scores["stop_rate"] == 0.5 and scores["mean_new_tokens"] == 5


def test_bertscore_ranks_a_paraphrase_above_an_unrelated_reply(cfg):
    reference = "I'm so sorry about your dog."
    same = bertscore_f1([reference], [reference], cfg)
    close = bertscore_f1(["I am very sorry that your dog died."], [reference], cfg)
    far = bertscore_f1(["The invoice is attached as a PDF."], [reference], cfg)
    assert same == pytest.approx(1.0, abs=1e-5)
    assert same > close > far
