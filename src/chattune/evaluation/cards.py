"""Model cards in the Hugging Face format (YAML metadata, then Markdown), for a folder that may be pushed to the
Hub as it is: each adapter's README.md, written by the stage that trains it in place of PEFT's empty template,
and the stack's card, written by evaluate with the headline metrics and their intervals (tools.export puts
it beside an exported model).

Everything on a card is read from files the stage already depends on: params.yaml, models/source.json (what the
base model is), metrics/data.json (the rows), the stage's own metrics.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from chattune.common.params import DPOParams, ModelParams, Params, SFTParams
from chattune.common.paths import DATA_METRICS, MODEL_SOURCE
from chattune.evaluation.verdicts import LEARNED, informative

# The built-in datasets: hub id, what a card calls them, their terms. The trained weights carry EmpatheticDialogues'
# terms (CC BY-NC 4.0): the SFT adapter is trained on it, and the DPO adapter on top of the SFT adapter.
BUILT_IN = {
    "sft": ("facebook/empathetic_dialogues", "EmpatheticDialogues listener turns",
            "EmpatheticDialogues: CC BY-NC 4.0 (non-commercial use, with attribution); it binds both adapters, since "
            "the\n  DPO adapter is trained on top of the SFT adapter.", ", so the model answers people with empathy"),
    "dpo": ("HumanLLMs/Human-Like-DPO-Dataset", "Human-Like-DPO pairs",
            "HumanLLMs/Human-Like-DPO-Dataset: the terms on its dataset card.", ", so the model sounds human"),
}
LICENSE = "cc-by-nc-4.0"
STACK = {"sft": ["sft"], "dpo": ["sft", "dpo"]}


@dataclass(frozen=True)
class TrainingData:
    """What a card says one training's data was: its hub id (None for files of your own), a name for prose, a
    line on its terms, and what training on it was for (said of the built-in datasets only)."""

    hub_id: str | None
    name: str
    terms: str
    aim: str = ""


def training_data(params: Params, stage: str) -> TrainingData:
    """The data `stage` ("sft" or "dpo") trained on, as params say: a built-in dataset, a hub dataset of your own
    at its commit, or files of your own, whose terms this project cannot know."""
    data = params.data.sft if stage == "sft" else params.data.dpo
    if data.own is None:
        return TrainingData(*BUILT_IN[stage])
    own = data.own
    name = (f"{own.repo} at commit {own.commit[:12]} ({data.format})" if own.repo
            else f"data of your own ({data.format}, {own.files['train']})")
    return TrainingData(own.repo, name, f"{name}: its own terms, which bind the adapters trained on it; check them "
                                        "before you share the adapters.")


def licence_of(params: Params) -> str:
    """The card's licence: EmpatheticDialogues' where the SFT data is it (it binds both adapters), else "other"
    (the terms of data of your own, named in the card's text)."""
    return LICENSE if params.data.sft.own is None else "other"


def licences(params: Params) -> str:
    lines = [training_data(params, stage).terms for stage in ("sft", "dpo")]
    return "\n".join(f"- {line}" for line in [
        *lines, "The base model: its own licence (TinyLlama-1.1B-Chat-v1.0 and SmolLM2-135M-Instruct: Apache-2.0).",
        "The code that trained them: MIT."])


def prompt_sets(params: Params) -> dict[str, tuple[str, str]]:
    """The prompt sets as the Hub's model-index names them: (dataset type, dataset name)."""
    sft = training_data(params, "sft")
    name = "EmpatheticDialogues test" if params.data.sft.own is None else f"the test split of {sft.name}"
    return {"ed_test": (sft.hub_id or "test", name), "probe": ("probe", "probe prompts")}


# (metrics/eval.json key, what it is): the headline rows of the stack card
HEADLINES = [
    ("ed_test.{model}.humanlike", "human-like replies (share, DPO-data classifier)"),
    ("ed_test.{model}.emotion_accuracy", "emotion named from the reply (accuracy)"),
    ("ed_test.{model}.bertscore_raw_f1", "BERTScore F1 (raw) against the real listener"),
    ("ed_test.{model}.bertscore_rescaled_f1", "BERTScore F1 against the real listener, rescaled with bert-score's "
                                              "baseline"),
    ("ed_test.{model}.stop_rate", "replies that end with EOS"),
    ("ed_test.{model}.cut_rate", "replies cut at the reply budget, without EOS"),
    # Beside the human-like share: a model that answers many prompts with one stock sentence scores high on it.
    ("ed_test.{model}.mean_new_tokens", "new tokens per reply (mean)"),
    ("ed_test.{model}.distinct_openings", "replies whose first sentence no other reply repeats (share)"),
    ("probe.{model}.humanlike", "human-like replies (share, DPO-data classifier)"),
]


def recorded() -> tuple[dict, dict]:
    """What the cards are made of besides params and a stage's metrics: the base model's pin and the row counts."""
    return json.loads(MODEL_SOURCE.read_text()), json.loads(DATA_METRICS.read_text())


def base_metadata(model: ModelParams, source: dict) -> dict:
    """`base_model` (a hub id, where the base has one) and `base_model_pin`: which bytes it was. `source` is
    models/source.json, the pin the base model was built from."""
    if source["kind"] == "hub":
        return {"base_model": source["name"], "base_model_pin": f"revision {source['revision']}"}
    if source["kind"] == "gguf":
        return {"base_model": model.name,  # the GGUF file's hub id
                "base_model_pin": f"GGUF file {source['file']} of the {source['distribution']} wheel, "
                                  f"sha256 {source['sha256']}"}
    if source["kind"] == "folder":
        return {"base_model_pin": f"local folder {source['name']}, sha256 of its files {source['sha256']}"}
    return {"base_model_pin": "the tiny random-weight Llama that the base_model stage builds from data/sample/"}


def _loading(stage: str, base: str) -> str:
    lines = ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f'base = AutoModelForCausalLM.from_pretrained("{base}")',
             'tokenizer = AutoTokenizer.from_pretrained("<sft adapter folder>")',
             'model = PeftModel.from_pretrained(base, "<sft adapter folder>", adapter_name="sft")']
    if stage == "dpo":
        lines += ['model.load_adapter("<dpo adapter folder>", adapter_name="dpo")',
                  "# both adapters active, unmerged, as in training: base -> SFT -> DPO",
                  'model.base_model.set_adapter(["sft", "dpo"], inference_mode=True)']
    return "```python\n" + "\n".join(lines) + "\n```"


def _training_rows(stage: str, train: SFTParams | DPOParams, trained: dict, data: dict) -> list[tuple[str, str]]:
    lora = train.lora
    targets = lora.target_modules if isinstance(lora.target_modules, str) else ", ".join(lora.target_modules)
    rows = [("preset", train.preset), ("learning rate used", f"{trained['lr']:g}"),
            ("batch", f"{trained['examples_per_step']} {'pairs' if stage == 'dpo' else 'examples'} a step: "
                      f"{trained['processes']} process(es) x {trained['grad_accum']} micro-batch(es) of "
                      f"{trained['micro_batch']}"),
            ("LoRA", f"r {lora.r}, alpha {lora.alpha}, dropout {lora.dropout}, on {targets}"),
            ("trained on", f"{trained['device']}, in {trained['dtype']}" + (
                " mixed precision (the LoRA weights float32)" if trained["dtype"] != "float32" else ""))]
    if stage == "sft":
        rows += [("epochs", str(train.epochs)), ("max length", f"{train.max_length} tokens"),
                 ("training examples", str(data["sft.train.examples"])),
                 ("eval examples", str(data["sft.eval.examples"]))]
    else:
        rows += [("beta", f"{train.beta:g}"), ("max steps", f"{train.max_steps} (or {train.max_epochs} passes)"),
                 ("max length", f"{train.max_length} tokens"),
                 ("training pairs", str(data["dpo.train.pairs"])), ("held-out pairs", str(data["dpo.eval.pairs"]))]
    return rows


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def adapter_card(stage: str, params: Params, source: dict, data: dict, trained: dict) -> ModelCard:
    """The card of the adapter `stage` trains. `trained`: the stage's own metrics (metrics/<stage>.json)."""
    train = params.sft if stage == "sft" else params.dpo
    meta = base_metadata(params.model, source)
    metadata = ModelCardData(
        **meta, library_name="peft", license=licence_of(params), language="en", pipeline_tag="text-generation",
        datasets=hub_ids(params, stage), tags=["peft", "lora", "trl", stage],
        model_name=f"{stage}-adapter", stack=["base", *STACK[stage]], preset=train.preset, lr=trained["lr"],
        lora_r=train.lora.r, lora_alpha=train.lora.alpha, **({"beta": params.dpo.beta} if stage == "dpo" else {}))
    if stage == "sft":
        sft = training_data(params, "sft")
        purpose = (f"A LoRA adapter from supervised fine-tuning on {sft.name}{sft.aim}. The loss was on each reply "
                   "and its end-of-sequence token only.")
        result = _table([("eval loss, base model", f"{trained['base_eval_loss']:.4f}"),
                         ("eval loss, with this adapter", f"{trained['eval_loss']:.4f}")], ("", "value"))
    else:
        dpo = training_data(params, "dpo")
        purpose = (f"A LoRA adapter from Direct Preference Optimization on {dpo.name}{dpo.aim}. It was trained on "
                   "top of the SFT adapter (unmerged, frozen), and the DPO reference was base + SFT adapter: load it "
                   "on exactly that stack.")
        result = _table([("reward accuracy", f"{trained['eval.rewards_accuracies']:.3f}"),
                         ("reward margin", f"{trained['eval.rewards_margins']:.3f}"),
                         ("eval loss", f"{trained['eval.loss']:.4f}")], ("held-out pairs", "value"))
    body = f"""
# {stage.upper()} adapter: {meta.get('base_model', 'the embedded tiny model')}

{purpose}

Base model: {meta.get('base_model', 'none on the Hub')} ({meta['base_model_pin']}).

## How to load it

The stack is base, then SFT{', then DPO' if stage == 'dpo' else ''}, in that order, with the adapters unmerged as
they were trained:

{_loading(stage, meta.get('base_model', '<base model folder>'))}

## Training

{_table(_training_rows(stage, train, trained, data), ('', 'value'))}

## Results at the end of training

{result}

The stack's evaluation (held-out prompts, with intervals) is in the evaluate stage's card.

## Licences

{licences(params)}
"""
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n{body}")


def hub_ids(params: Params, model: str) -> list[str]:
    """The hub ids of the datasets the stack up to `model` trained on (files of your own have none)."""
    return [found.hub_id for found in (training_data(params, stage) for stage in STACK[model]) if found.hub_id]


def stack_card(params: Params, source: dict, data: dict, scores: dict, model: str = "dpo") -> ModelCard:
    """The card of the stack up to `model`, with its headline metrics (metrics/eval.json) as the Hub's
    model-index and as a table with 95% intervals."""
    meta = base_metadata(params.model, source)
    present = [(key.format(model=model), name) for key, name in HEADLINES if key.format(model=model) in scores]
    sets = prompt_sets(params)
    results = [EvalResult(task_type="text-generation", dataset_type=sets[key.split(".")[0]][0],
                          dataset_name=sets[key.split(".")[0]][1], metric_type=key.rsplit(".", 1)[1],
                          metric_name=name, metric_value=scores[key])
               for key, name in present]
    metadata = ModelCardData(
        **meta, library_name="peft", license=licence_of(params), language="en", pipeline_tag="text-generation",
        datasets=hub_ids(params, model), tags=["peft", "lora", "trl", *STACK[model]],
        model_name=f"base+{'+'.join(STACK[model])}", eval_results=results, stack=["base", *STACK[model]],
        sft_preset=params.sft.preset, dpo_preset=params.dpo.preset)
    rows = [(name, sets[key.split(".")[0]][1],
             f"{scores[key]:.3f}" + (" (uninformative)" if not informative(scores, key) else ""),
             f"[{scores[key + '_low']:.3f}, {scores[key + '_high']:.3f}]" if key + "_low" in scores else "")
            for key, name in present]
    differences = [(f"{key}", f"{scores[key]:+.3f}", f"[{scores[key + '_low']:+.3f}, {scores[key + '_high']:+.3f}]",
                    "no (uninformative)" if not informative(scores, key)
                    else "yes" if scores[key + "_low"] > 0 or scores[key + "_high"] < 0 else "no")
                   for key in sorted(scores) if "_minus_" in key and not key.endswith(("_low", "_high"))
                   and key + "_low" in scores and key.rsplit(".", 1)[1] in (*LEARNED, "bertscore_raw_f1",
                                                                            "bertscore_rescaled_f1")]
    caveats = "".join(f"\nThe {judge} classifier did not clear chance on its own check (metrics/judges.json), so its "
                      "metric cannot tell these models apart on this data: it is uninformative, and none of its "
                      "differences is decided.\n"
                      for judge in sorted({LEARNED[key.rsplit(".", 1)[1]] for key, _ in present
                                           if not informative(scores, key)}))
    replies = ("Greedy replies" if params.eval.temperature == 0
               else f"Replies sampled at temperature {params.eval.temperature:g}")
    reference = [f"{name} {scores[key]:.3f}" for key, name in (
        ("ed_test.reference.humanlike", "human-like"), ("ed_test.reference.emotion_accuracy", "emotion named"),
        ("ed_test.reference.distinct_openings", "distinct openings"),
        ("ed_test.emotion_chance", "emotion by chance (the commonest label)")) if key in scores]
    body = f"""
# base + {' + '.join(a.upper() for a in STACK[model])}: {meta.get('base_model', 'the embedded tiny model')}

The base model ({meta['base_model_pin']}) with the LoRA adapter from SFT on {training_data(params, 'sft').name}
(preset {params.sft.preset}){f' and the one from DPO on {training_data(params, "dpo").name} (preset {params.dpo.preset})' if model == 'dpo' else ''},
loaded in that order and unmerged.

## Evaluation

{replies} of at most {scores['ed_test.max_new_tokens']} new tokens (the reply budget) to
{scores['ed_test.prompts']} held-out test prompts ({sets['ed_test'][1]}) and to the probe prompts; 95% bootstrap
intervals over prompts.

{_table(rows, ('metric', 'prompts', 'value', '95% interval'))}
{caveats}
The real listeners' replies to the same prompts, scored alike: {'; '.join(reference) or 'not scored'}.

Paired differences (decided: the interval excludes 0):

{_table(differences, ('difference', 'value', '95% interval', 'decided'))}

## Training data

{data['sft.train.examples']} SFT examples, {data['dpo.train.pairs']} DPO pairs.

## Licences

{licences(params)}
"""
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n{body}")
