"""bench: training and generation throughput on TinyLlama's shape (random weights), the notebook's recipe
beside this project's, in one process and one run.

    python -m tools.bench --reference DIR   # on a GPU: TinyLlama-1.1B's shape, bf16
    python -m tools.bench --tiny            # CPU smoke run: a tiny shape and a few steps

DIR holds reference files: tinyllama/ (TinyLlama's config.json and tokenizer, as on the hub) and, if you have
them, human-like-dpo/*.json (Human-Like-DPO rows). Without it, the shape is TinyLlama's published numbers and
the tokenizer is trained on the sample. Data are the project's own: EmpatheticDialogues sample rows in the
notebook's seed format (short) and in this project's dialogue format (long), and DPO pairs (the real rows in
DIR when there are some). Each run goes through the same TRL trainers as the stages,
LoRA r 8 on the seven projections. Writes bench/results/<date>-<device>.json.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import platform
import resource
import tempfile
import time
import uuid
from pathlib import Path

import datasets.arrow_dataset
import torch
import transformers
from datasets import Dataset
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from stages.modeling import (cpu_only, encode, generation_config, left_padded, lora_config, placement, sample_texts,
                             train_tokenizer, use_bf16)
from stages.outputs import write_json
from stages.params import SEVEN_PROJECTIONS, LoraParams
from stages.parsing import listener_examples, parse_dpo, parse_empathetic, read_bytes
from stages.paths import DPO_FILE, DPO_SUBDIR, ED_SUBDIR, SAMPLE_DIR
from stages.training import throughput

RESULTS = Path("bench/results")
TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
TINY = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
LORA = LoraParams(r=8, alpha=16, dropout=0.05, target_modules=SEVEN_PROJECTIONS)
SYSTEM = "You are a kind, attentive listener. Reply to the user with empathy, in a few sentences."


class StepClock(TrainerCallback):
    """Times optimizer steps after the first (which pays for warm-up and allocation)."""

    def __init__(self):
        self.start, self.steps = None, 0

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if self.start is None:
            self.start = time.perf_counter()
        else:
            self.steps += 1
        self.seconds = time.perf_counter() - self.start


def model_config(tiny: bool, reference: Path | None = None) -> LlamaConfig:
    shape = dict(TINYLLAMA)
    if reference and (reference / "tinyllama/config.json").exists():
        published = json.loads((reference / "tinyllama/config.json").read_text())
        shape.update({key: published[key] for key in shape})
    if tiny:
        shape.update(TINY)
    return LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)


def tokenizer_for(tiny: bool, reference: Path | None = None):
    if not tiny and reference and (reference / "tinyllama/tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(reference / "tinyllama"), "TinyLlama"
    return train_tokenizer(sample_texts(), vocab_size=2048, max_length=2048), "sample BPE"


def new_model(config: LlamaConfig):
    torch.manual_seed(0)
    device, dtype = placement()
    with torch.device(device):  # initialised where it runs: 1.1B random weights take long on the CPU
        return LlamaForCausalLM(config).to(dtype=dtype)


def sft_rows(fmt: str, count: int) -> list[dict]:
    path = SAMPLE_DIR / ED_SUBDIR / "train.csv"
    turns = parse_empathetic(read_bytes(path), str(path)).records
    examples = listener_examples(turns, SYSTEM, seed_format=fmt == "seed").records
    return [{"prompt": e["prompt"], "completion": e["completion"]} for e in itertools.islice(itertools.cycle(examples), count)]


def dpo_rows(count: int, reference: Path | None = None) -> list[dict]:
    files = (sorted((reference / "human-like-dpo").glob("*.json")) if reference else []) or [SAMPLE_DIR / DPO_SUBDIR / DPO_FILE]
    pairs = [pair for path in files for pair in parse_dpo(read_bytes(path), str(path)).records]
    return list(itertools.islice(itertools.cycle(pairs), count))


def peak_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # on CPU: the process's peak so far


def common(batch: int, accum: int, steps: int, workdir: str) -> dict:
    return dict(output_dir=workdir, per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                max_steps=steps, learning_rate=1e-4, bf16=use_bf16(), use_cpu=cpu_only(),
                report_to="none", save_strategy="no", logging_steps=10**6, seed=0)


def run_sft(config, tokenizer, fmt: str, batch: int, accum: int, steps: int, *, notebook: bool = False,
            packing: bool = False, liger: bool = False) -> dict:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    clock = StepClock()
    rows = sft_rows(fmt, batch * accum * steps * (8 if packing else 1))  # a packed row holds several examples
    with tempfile.TemporaryDirectory() as workdir:
        args = SFTConfig(**common(batch, accum, steps, workdir), use_liger_kernel=liger,
                         # The notebook: every row padded to 512, loss on the whole text. Here: each batch
                         # padded to its longest row (or packed), loss on the reply.
                         max_length=512 if notebook else 1024, pad_to_multiple_of=512 if notebook else None,
                         completion_only_loss=not notebook, packing=packing, packing_strategy="bfd",
                         train_sampling_strategy="random" if notebook else "group_by_length")
        trainer = SFTTrainer(model=new_model(config), args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=lora_config(LORA), callbacks=[clock])
        trainer.train()
    # The timed steps consumed this share of the rows (packed rows hold several examples).
    passes = clock.steps * batch * accum / len(trainer.train_dataset)
    tokens_per_s, examples_per_s = throughput(trainer.train_dataset, passes, clock.seconds)
    return {"examples_per_s": examples_per_s, "real_tokens_per_s": tokens_per_s,
            "mean_tokens_per_example": tokens_per_s / examples_per_s,
            "batch": batch, "grad_accum": accum, "timed_steps": clock.steps, "peak_gib": peak_gib()}


def run_dpo(config, tokenizer, batch: int, accum: int, steps: int, max_length: int, reference: Path | None,
            liger: bool = False) -> dict:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    clock = StepClock()
    with tempfile.TemporaryDirectory() as workdir:
        args = DPOConfig(**common(batch, accum, steps, workdir), max_length=max_length, use_liger_kernel=liger)
        trainer = DPOTrainer(model=new_model(config), args=args, processing_class=tokenizer,
                             train_dataset=Dataset.from_list(dpo_rows(batch * accum * steps + batch, reference)),
                             peft_config=lora_config(LORA), callbacks=[clock])
        trainer.train()
    return {"pairs_per_s": clock.steps * batch * accum / clock.seconds, "batch": batch, "grad_accum": accum,
            "max_length": max_length, "timed_steps": clock.steps, "peak_gib": peak_gib()}


def run_generate(config, tokenizer, batch: int, new_tokens: int, rounds: int) -> dict:
    model = new_model(config).eval()
    ids, mask = (tensor.to(model.device) for tensor in left_padded(
        [encode(tokenizer, row["prompt"])[0] for row in sft_rows("dialogue", batch)], tokenizer.pad_token_id))
    config = generation_config(tokenizer, new_tokens, temperature=0.0)
    config.min_new_tokens = new_tokens  # a random model may emit EOS: fix the length so every run generates alike
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, generation_config=config)  # warm-up
        start = time.perf_counter()
        for _ in range(rounds):
            model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {"new_tokens_per_s": rounds * batch * new_tokens / seconds, "batch": batch, "new_tokens": new_tokens}


def random_fingerprints() -> None:
    """datasets on the GPU machine's Python 3.12 fails to hash some Arrow tables (PicklingError on
    MonthDayNano); fingerprints only name cache files, which these one-off runs never reuse."""
    datasets.arrow_dataset.generate_fingerprint = lambda dataset: uuid.uuid4().hex


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny shape and a few steps, for a CPU smoke run")
    parser.add_argument("--steps", type=int, help="timed optimizer steps per training run (default 20; tiny 2)")
    parser.add_argument("--liger", action="store_true", help="add runs with Liger kernels (needs liger-kernel)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    parser.add_argument("--reference", type=Path, help="a folder holding tinyllama/ (and human-like-dpo/)")
    args = parser.parse_args(argv)
    random_fingerprints()
    steps = (args.steps or (2 if args.tiny else 20)) + 1  # the first step is not timed
    config = model_config(args.tiny, args.reference)
    tokenizer, tokenizer_name = tokenizer_for(args.tiny, args.reference)
    if args.tiny:
        config.vocab_size = len(tokenizer)
    scale = 4 if args.tiny else 1  # smaller batches for the CPU smoke run
    runs = {
        "sft_notebook": run_sft(config, tokenizer, "seed", 4, 2, steps, notebook=True),
        "sft_project": run_sft(config, tokenizer, "dialogue", 32 // scale, 1, steps),
        "sft_project_packed": run_sft(config, tokenizer, "dialogue", 8 // scale, 1, steps, packing=True),
        "sft7_recipe": run_sft(config, tokenizer, "dialogue", 4, 2, steps),
        "dpo_notebook": run_dpo(config, tokenizer, 2, 4, steps, 768, args.reference),
        "dpo_project": run_dpo(config, tokenizer, 16 // scale, 1, steps, 768, args.reference),
        "generate_batch_1": run_generate(config, tokenizer, 1, 64 if args.tiny else 128, rounds=2),
        "generate_batch_64": run_generate(config, tokenizer, 64 // scale, 64 if args.tiny else 128, rounds=2),
    }
    if args.liger:
        runs["sft_project_liger"] = run_sft(config, tokenizer, "dialogue", 32 // scale, 1, steps, liger=True)
        runs["dpo_project_liger"] = run_dpo(config, tokenizer, 16 // scale, 1, steps, 768, args.reference, liger=True)
    best_sft = max((r for name, r in runs.items() if name.startswith("sft_project")), key=lambda r: r["real_tokens_per_s"])
    best_dpo = max((r for name, r in runs.items() if name.startswith("dpo_project")), key=lambda r: r["pairs_per_s"])
    result = {
        "device": device_name(),
        "date": datetime.date.today().isoformat(),
        "tiny": args.tiny,
        "shape": {key: getattr(config, key) for key in TINYLLAMA},
        "tokenizer": tokenizer_name,
        "dtype": "bfloat16" if use_bf16() else "float32",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "runs": runs,
        "ratio": {  # this project's best over the notebook's recipe, on the same card in the same run
            "sft_real_tokens": best_sft["real_tokens_per_s"] / runs["sft_notebook"]["real_tokens_per_s"],
            "dpo_pairs": best_dpo["pairs_per_s"] / runs["dpo_notebook"]["pairs_per_s"],
            "generate_tokens": runs["generate_batch_64"]["new_tokens_per_s"] / runs["generate_batch_1"]["new_tokens_per_s"],
        },
    }
    slug = "".join(c if c.isalnum() else "-" for c in result["device"].lower()).strip("-")
    path = args.out / f"{result['date']}-{slug}{'-tiny' if args.tiny else ''}.json"
    write_json(path, result)
    print(json.dumps({"device": result["device"], "ratio": result["ratio"],
                      **{name: {k: round(v, 1) for k, v in r.items() if k.endswith("_per_s") or k == "peak_gib"}
                         for name, r in runs.items()}}, indent=1))
    print(f"bench: {path}")
    return path


if __name__ == "__main__":
    main()
