"""bench: training and generation throughput on TinyLlama's shape (random weights): this project's settings beside
what a user would run instead (plain TRL with its defaults: the peer) and the notebook's recipe.

    python -m harness.bench --reference DIR            # on a GPU: TinyLlama-1.1B's shape and tokenizer, bf16
    python -m harness.bench --reference DIR --memory-cap-gib 16   # and the recipes under a 16 GiB cap (a T4's)
    python -m harness.bench --tiny                     # CPU smoke run: a tiny shape, a few steps

DIR holds reference files: tinyllama/ (TinyLlama's config.json and tokenizer, as on the hub) and, if you have
them, ed-real/train.csv (EmpatheticDialogues' raw format) and human-like-dpo/*.json (Human-Like-DPO rows).
Without it, the shape is TinyLlama's published numbers and the tokenizer is trained on the sample. Rows:
EmpatheticDialogues listener turns in the notebook's seed format (short) and in this project's dialogue format
(long), and DPO pairs: the real ones in DIR where it has them, else the embedded sample's (the result names them).

How it measures: every configuration runs in a process of its own, so each peak is its own; the model is made
in the placement's dtype on the device and the peak counter is reset after that. A training run makes
`--warmup` optimizer steps untimed (allocation, autotuning), then `--steps` timed ones; the tokens are those of
the batches those timed steps trained on, real (attention mask) and padded (the tensor) alike. Generation
times `--rounds` calls after one untimed call (its time recorded apart: a static cache compiles there).
`--profile` records `--profile-steps` more steps (or one more generate call, cut to 16 new tokens) under
torch.profiler after the timed ones, in the same process, so the profile costs no second model and never slows
the timed steps. Writes bench/results/<date>-<device>.json, rewritten after every run (a run cut short keeps
what finished); `--budget-s` starts no run past that many seconds.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import itertools
import json
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch
from datasets import Dataset
from peft import get_peft_model
from torch.profiler import ProfilerActivity, profile
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TrainerCallback,
)
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from chattune.basemodel.tiny import sample_texts, train_tokenizer
from chattune.common.outputs import write_json
from chattune.common.params import SEVEN_PROJECTIONS, LoraParams
from chattune.common.paths import DPO_FILE, DPO_SUBDIR, ED_SUBDIR, SAMPLE_DIR
from chattune.data.datasets import dpo_dataset, sft_dataset
from chattune.data.parsing import listener_examples, parse_dpo, parse_empathetic, read_bytes
from chattune.evaluation.replies import generation_config, left_padded
from chattune.modeling.loading import combined_adapters, lora_config, lora_under_autocast
from chattune.modeling.placement import accelerator, attention_kernels, compute_dtype, cpu_only, use_bf16, use_fp16
from chattune.modeling.prompt import encode
from chattune.training import packed_attention
from chattune.training.batching import liger_kernels, planned_bytes
from chattune.training.dpo import TokenizedDPOTrainer, policy_model, reference_model

RESULTS = Path("bench/results")
DTYPE = "auto"  # model.dtype for every run: the accelerator's fastest (bf16 on a GPU from Ampere on)
TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
TINY = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
LORA = LoraParams(r=8, alpha=16, dropout=0.05, target_modules=SEVEN_PROJECTIONS)
SYSTEM = "You are a kind, attentive listener. Reply to the user with empathy, in a few sentences."
VERSIONED = ("torch", "transformers", "trl", "peft", "accelerate", "liger-kernel")

# name: (what runs, its settings). Batch sizes are for the GPU; --tiny divides the larger ones by 4. In the order
# they run: what the goals are read from first, so a time budget (--budget-s) cuts the least needed.
RUNS = {
    # plain TRL, as a user would run it: its defaults (batch 8, checkpointing on, TRL's own tokenization and
    # collator, padding to the longest in the batch, rows in random order), LoRA as here
    "sft_peer": ("sft", dict(peer=True, batch=8, accum=1)),
    # packed rows (sft.packing): each example attends within itself (chattune.training.packed_attention)
    "sft_project_packed": ("sft", dict(batch=8, accum=1, packing=True)),
    # four times the tokens a step: whether the host's fixed cost per step (launching every kernel) still bounds it
    "sft_project_packed_batch_32": ("sft", dict(batch=32, accum=1, packing=True)),
    "dpo_peer": ("dpo", dict(peer=True, batch=8, accum=1)),
    "dpo_project": ("dpo", dict(batch=16, accum=1)),
    # what evaluate runs for "dpo": base + SFT + DPO adapters, combined into one (chattune.modeling.loading.combined_adapters)
    "generate_stack_batch_64": ("generate", dict(batch=64, stack=True)),
    # what a user's own loop would run instead: the same stack as PEFT loads it (both adapters active, unmerged),
    # 16 prompts a call (evaluate's batch before it sized batches for the device)
    "generate_peer": ("generate", dict(batch=16, stack=True, peer=True)),
    # the default presets' shapes under a memory cap (--memory-cap-gib: a T4's 16 GiB)
    "sft7_recipe": ("sft", dict(batch=4, accum=2, capped=True)),
    "dpo1_recipe": ("dpo", dict(batch=2, accum=4, capped=True)),
    # twice the pairs a step, if the host's fixed cost per step bounds batch 16. Its longest batch holds 64 rows of
    # 768 tokens, twice batch 16's (46 GiB on an H200): about 92 GiB. Batch 64's, twice that again, would not fit.
    "dpo_project_batch_32": ("dpo", dict(batch=32, accum=1)),
    # this project without packing: dialogue rows grouped by length, each batch padded to its longest, loss on
    # the reply
    "sft_project": ("sft", dict(batch=32, accum=1)),
    # the stack's generation with a static KV cache, which transformers' generate compiles (torch.compile) on a
    # GPU: whether that pays is what this run shows (the compiling call is the untimed one)
    "generate_stack_batch_64_static": ("generate", dict(batch=64, stack=True, static=True)),
    # four times evaluate's GPU batch (eval.batch_size auto): if a decoding step's time is the host's, nearly four
    # times the tokens a second, and evaluate's batch should grow
    "generate_stack_batch_256": ("generate", dict(batch=256, stack=True)),
    # the notebook: seed-format rows padded to 512, loss on the whole text, batch 4 x 2; DPO at batch 2 x 4
    "sft_notebook": ("sft", dict(notebook=True, fmt="seed", batch=4, accum=2)),
    "dpo_notebook": ("dpo", dict(batch=2, accum=4, notebook=True)),
    # packed rows as transformers runs them by itself under sdpa: across the whole row, through a dense
    # block-diagonal mask
    "sft_project_packed_dense_mask": ("sft", dict(batch=8, accum=1, packing=True, dense_mask=True)),
    "generate_batch_1": ("generate", dict(batch=1)),
    "generate_batch_64": ("generate", dict(batch=64)),
}


# --- what every run shares ------------------------------------------------------------------------------

def model_config(tiny: bool, reference: Path | None = None):
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


def shape_and_tokenizer(tiny: bool, reference: Path | None = None):
    """A run's model config and tokenizer; the tiny shape's vocabulary is the sample tokenizer's."""
    config = model_config(tiny, reference)
    tokenizer, _ = tokenizer_for(tiny, reference)
    if tiny:
        config.vocab_size = len(tokenizer)
    return config, tokenizer


def new_model(config, packed: bool = False):
    """Random weights made in the placement's dtype on its device (not float32 first and cast: that transient
    would be every run's peak), then the peak counter reset, so a run's peak is its own. `packed`: with the
    packed rows' attention, as the sft stage loads it."""
    torch.manual_seed(0)
    device, dtype = accelerator(), compute_dtype(DTYPE)
    attention = dict(attn_implementation=packed_attention.register()) if packed else {}
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **attention)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    return model


def random_lora():
    """LoRA as the benchmark's adapters have it, with random weights: nonzero, so an adapter computes something."""
    lora = lora_config(LORA)
    lora.init_lora_weights = False
    return lora


def sft_stack(config):
    """base + a random SFT adapter, frozen and unmerged: what the dpo stage trains on (chattune.modeling.loading.stack). Made
    twice, it is the same model twice (new_model seeds the generator)."""
    model = get_peft_model(new_model(config), random_lora(), adapter_name="sft")
    model.requires_grad_(False)
    return model


def peak_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # on a CPU: the process's peak


def row_files(reference: Path | None) -> dict[str, list[Path]]:
    """Where the rows come from: the reference folder's real EmpatheticDialogues turns (ed-real/train.csv) and
    Human-Like-DPO pairs (human-like-dpo/*.json) where it has them, else the embedded sample's."""
    turns = reference / "ed-real/train.csv" if reference else None
    pairs = sorted((reference / "human-like-dpo").glob("*.json")) if reference else []
    return {"sft": [turns] if turns and turns.exists() else [SAMPLE_DIR / ED_SUBDIR / "train.csv"],
            "dpo": pairs or [SAMPLE_DIR / DPO_SUBDIR / DPO_FILE]}


def sft_rows(fmt: str, count: int, reference: Path | None = None) -> list[dict]:
    [path] = row_files(reference)["sft"]
    turns = parse_empathetic(read_bytes(path), str(path)).records
    examples = listener_examples(turns, SYSTEM, seed_format=fmt == "seed").records
    return [{"prompt": e["prompt"], "completion": e["completion"]}
            for e in itertools.islice(itertools.cycle(examples), count)]


def dpo_rows(count: int, reference: Path | None = None) -> list[dict]:
    pairs = [pair for path in row_files(reference)["dpo"] for pair in parse_dpo(read_bytes(path), str(path)).records]
    return list(itertools.islice(itertools.cycle(pairs), count))


class TimedSteps(TrainerCallback):
    """Counts the tokens of every micro-batch a timed optimizer step trains on (wrapping the trainer's
    training_step), and times those steps: from the end of the last warm-up step to the end of the last timed
    step, with the GPU synchronized at both ends. With a profiler, the steps after the timed ones run under it."""

    def __init__(self, trainer, warmup: int, steps: int, profiler=None):
        self.warmup, self.last, self.profiler = warmup, warmup + steps, profiler
        self.real, self.padded, self.rows, self.start, self.seconds, self.began = 0, 0, 0, None, 0.0, None
        self.longest = 0  # the most tokens of any micro-batch, warm-up included: where the peak comes from
        train_step = trainer.training_step

        def counted_step(model, inputs, *rest):
            self.count(inputs, trainer.state.global_step + 1)  # train() makes a new state: read it now
            return train_step(model, inputs, *rest)

        trainer.training_step = counted_step
        trainer.add_callback(self)

    def on_train_begin(self, args, state, control, **kwargs):
        self.began = time.perf_counter()  # the model, the rows and the trainer are ready

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if state.global_step == self.warmup:
            self.start = now
        elif self.warmup < state.global_step <= self.last:
            self.seconds = now - self.start
        if self.profiler is not None and state.global_step == self.last:
            self.profiler.start()

    def on_train_end(self, args, state, control, **kwargs):
        if self.profiler is not None:
            self.profiler.stop()

    def count(self, inputs: dict, step: int) -> None:
        ids = inputs["input_ids"]
        self.longest = max(self.longest, ids.numel())
        if not self.warmup < step <= self.last:
            return
        mask = inputs.get("attention_mask")
        self.padded += ids.numel()
        # summed where the batch is (the GPU, once accelerate placed it): reading it out now would wait for the GPU
        # in every timed step; train_result reads it once, after training
        self.real += mask.sum() if mask is not None else ids.numel()  # a packed row has no padding
        self.rows += ids.shape[0]


def trainer_settings(steps: int, batch: int, accum: int, workdir: str, peer: bool, notebook: bool) -> dict:
    settings = dict(output_dir=workdir, per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                    max_steps=steps, report_to="none", save_strategy="no", logging_steps=10**6, seed=0,
                    use_cpu=cpu_only(), bf16=use_bf16(DTYPE), fp16=use_fp16(DTYPE))
    if not peer:  # the project's settings (chattune.training.settings.trainer_kwargs); the peer keeps TRL's
        settings.update(learning_rate=1e-4, gradient_checkpointing=False,
                        # Liger as the stages' default (auto: wherever it runs); the notebook had none
                        use_liger_kernel=not notebook and liger_kernels("bench", "auto"))
    return settings


def estimated_peak_gib(trainer, tokens: int) -> float:
    """The peak the stages plan micro-batches by (chattune.training.batching.batch_split): the models' weights and `tokens`
    tokens' activations. Beside each run's measured peak, it shows whether that plan is safe on this card."""
    models = [trainer.model] + ([trainer.ref_model] if getattr(trainer, "ref_model", None) is not None else [])
    return planned_bytes(models, tokens, trainer.args.use_liger_kernel) / 2**30


def train_result(trainer, timed: TimedSteps, batch: int, accum: int, unit: str, per_row: float) -> dict:
    real = int(timed.real)
    return {f"{unit}_per_s": timed.rows / per_row / timed.seconds,
            "real_tokens_per_s": real / timed.seconds, "padded_tokens_per_s": timed.padded / timed.seconds,
            "real_tokens": real, "padded_tokens": timed.padded, "padding_share": 1 - real / timed.padded,
            "timed_steps": timed.last - timed.warmup, "warmup_steps": timed.warmup, "seconds": timed.seconds,
            "batch": batch, "grad_accum": accum, "peak_gib": peak_gib(), "longest_batch_tokens": timed.longest,
            "estimated_peak_gib": estimated_peak_gib(trainer, timed.longest), "training_began": timed.began}


def recorded_settings(trainer, plain: bool) -> dict:
    """What the result records of a run's settings: Liger, and whether the LoRA layers skip PEFT's float32 input
    cast under autocast, as the stages run them (`plain`: the peer and the notebook keep PEFT's)."""
    return {"liger": trainer.args.use_liger_kernel, "lora_under_autocast": not plain}


# --- the three kinds of run -----------------------------------------------------------------------------

def run_sft(config, tokenizer, warmup: int, steps: int, batch: int, accum: int, reference: Path | None,
            fmt: str = "dialogue", peer: bool = False, notebook: bool = False, packing: bool = False,
            dense_mask: bool = False, profiler=None, profile_steps: int = 0) -> dict:
    total = warmup + steps + (profile_steps if profiler else 0)
    # a packed row holds several examples
    rows = sft_rows(fmt, batch * accum * total * (8 if packing else 1), reference)
    with tempfile.TemporaryDirectory() as workdir:
        settings = trainer_settings(total, batch, accum, workdir, peer, notebook)
        if peer:  # TRL tokenizes the conversations itself
            data = Dataset.from_list(rows)
        else:
            Path(workdir, "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
            data = sft_dataset(Path(workdir, "rows.jsonl"), tokenizer)
            settings.update(
                # The notebook: every row padded to 512, loss on the whole text, rows in random order.
                max_length=512 if notebook else 1024, pad_to_multiple_of=512 if notebook else None,
                completion_only_loss=not notebook, packing=packing, packing_strategy="bfd",
                train_sampling_strategy="random" if notebook else "group_by_length")
        trainer = SFTTrainer(model=new_model(config, packed=packing and not dense_mask), args=SFTConfig(**settings),
                             train_dataset=data, processing_class=tokenizer, peft_config=lora_config(LORA))
        if not (peer or notebook):
            lora_under_autocast(trainer.model)  # as the sft stage does, once the trainer added the adapter
        timed = TimedSteps(trainer, warmup, steps, profiler)
        trainer.train()
    result = train_result(trainer, timed, batch, accum, "examples", per_row=1)
    return result | recorded_settings(trainer, peer or notebook) | (
        {"examples_per_s": None} if packing else {})  # a packed row's examples are not counted per batch


def run_dpo(config, tokenizer, warmup: int, steps: int, batch: int, accum: int, reference: Path | None,
            peer: bool = False, notebook: bool = False, profiler=None, profile_steps: int = 0) -> dict:
    total = warmup + steps + (profile_steps if profiler else 0)
    rows = dpo_rows(batch * accum * total, reference)
    with tempfile.TemporaryDirectory() as workdir:
        settings = trainer_settings(total, batch, accum, workdir, peer, notebook)
        if peer:  # TRL tokenizes the conversations itself
            trainer = DPOTrainer(model=new_model(config), args=DPOConfig(**settings), processing_class=tokenizer,
                                 train_dataset=Dataset.from_list(rows), peft_config=lora_config(LORA))
        else:
            Path(workdir, "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
            pairs, _ = dpo_dataset(Path(workdir, "pairs.jsonl"), tokenizer, max_prompt_length=512)
            # the notebook drew pairs at random; the project groups them by length (chattune.training.dpo)
            settings.update(max_length=768, train_sampling_strategy="random" if notebook else "group_by_length")
            if notebook:  # one model: TRL adds the adapter, and switches it off for the reference's pass
                models = dict(model=new_model(config), peft_config=lora_config(LORA))
            else:  # the dpo stage's: base + frozen SFT adapter + the new one, the reference a second base + SFT
                settings.update(disable_dropout=False)  # policy_model keeps the new adapter's dropout, as the stage
                models = dict(model=policy_model(sft_stack(config), LORA), ref_model=reference_model(sft_stack(config)))
            trainer = TokenizedDPOTrainer(**models, args=DPOConfig(**settings), processing_class=tokenizer,
                                          train_dataset=pairs)
        timed = TimedSteps(trainer, warmup, steps, profiler)
        trainer.train()
    # a pair is two rows: chosen, rejected
    return train_result(trainer, timed, batch, accum, "pairs", per_row=2) | recorded_settings(trainer, peer or notebook)


# The profiled generate call stops after this many new tokens: its decoding steps are alike, and a profile's table
# costs time for every event (128 tokens of a 22-layer stack at batch 16 on a CPU: 1.2 million events, 92 s to
# tabulate; 16 tokens: 155,000 events, 11 s).
PROFILED_NEW_TOKENS = 16


class StopAfter(StoppingCriteria):
    """Ends a generate call at `length` tokens in all, its settings (and a static cache's size) left as the timed
    calls had them."""

    def __init__(self, length: int):
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full(input_ids.shape[:1], input_ids.shape[1] >= self.length, device=input_ids.device)


def generation_model(config, stack: bool, peer: bool):
    """The model a generation run times: the plain model, or base + two random adapters (SFT, DPO) combined into
    one as evaluate runs them, or for the peer stacked as PEFT loads them."""
    if not stack:
        return new_model(config).eval()
    model = sft_stack(config)
    model.add_adapter("dpo", random_lora())
    if peer:
        model.base_model.set_adapter(["sft", "dpo"])
    else:
        model = combined_adapters(model).to(accelerator())
    return model.eval()


def generation_prompts(tokenizer, batch: int, reference: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` dialogue prompts, left-padded on the placement's device: ids and attention mask."""
    return tuple(tensor.to(accelerator()) for tensor in left_padded(
        [encode(tokenizer, row["prompt"])[0] for row in sft_rows("dialogue", batch, reference)],
        tokenizer.pad_token_id))


def run_generate(config, tokenizer, batch: int, rounds: int, new_tokens: int, reference: Path | None,
                 stack: bool = False, peer: bool = False, static: bool = False, profiler=None) -> dict:
    model = generation_model(config, stack, peer)
    ids, mask = generation_prompts(tokenizer, batch, reference)
    settings = generation_config(tokenizer, new_tokens, temperature=0.0)
    settings.min_new_tokens = new_tokens  # a random model may emit EOS: every call generates alike
    if static:
        settings.cache_implementation = "static"
    with torch.no_grad():
        start = time.perf_counter()
        # not in the throughput, but recorded: with a static cache on a GPU it is mostly compiling, a cost evaluate
        # would pay once per model
        model.generate(input_ids=ids, attention_mask=mask, generation_config=settings)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        first_call = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(rounds):
            model.generate(input_ids=ids, attention_mask=mask, generation_config=settings)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if profiler is not None:
            with profiler:
                model.generate(input_ids=ids, attention_mask=mask, generation_config=settings,
                               stopping_criteria=StoppingCriteriaList([StopAfter(ids.shape[1] + PROFILED_NEW_TOKENS)]))
    return {"new_tokens_per_s": rounds * batch * new_tokens / seconds, "batch": batch, "new_tokens": new_tokens,
            "adapters": ("stacked" if peer else "combined") if stack else None,
            "cache": "static" if static else "dynamic", "rounds": rounds, "seconds": seconds,
            "first_call_seconds": first_call, "peak_gib": peak_gib(),
            **({"profiled_new_tokens": PROFILED_NEW_TOKENS} if profiler is not None else {})}


def random_fingerprints() -> None:
    """datasets on the GPU machine's Python 3.12 fails to hash some Arrow tables (PicklingError on
    MonthDayNano); fingerprints only name cache files, which these one-off runs never reuse."""
    import datasets.arrow_dataset

    datasets.arrow_dataset.generate_fingerprint = lambda dataset: uuid.uuid4().hex


def run_one(name: str, args) -> dict:
    """One configuration, in this process."""
    start = time.perf_counter()
    random_fingerprints()
    kind, settings = RUNS[name]
    settings = dict(settings)
    scale = 4 if args.tiny else 1
    settings["batch"] = max(1, settings["batch"] // scale) if settings["batch"] > 4 else settings["batch"]
    cap = args.memory_cap_gib if settings.pop("capped", False) and torch.cuda.is_available() else None
    if cap:  # what a 16 GiB card (a T4) leaves: an allocation past it fails as it would there
        torch.cuda.set_per_process_memory_fraction(cap * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    if not (settings.get("peer") or settings.get("notebook")):
        attention_kernels()  # as the stages load models; the peer and the notebook keep PyTorch's choice
    config, tokenizer = shape_and_tokenizer(args.tiny, args.reference)
    profiler = new_profiler() if args.profile else None
    shared = dict(reference=args.reference, profiler=profiler, **settings)
    if kind == "sft":
        result = run_sft(config, tokenizer, args.warmup, args.steps, profile_steps=args.profile_steps, **shared)
    elif kind == "dpo":
        result = run_dpo(config, tokenizer, args.warmup, args.steps, profile_steps=args.profile_steps, **shared)
    else:
        result = run_generate(config, tokenizer, rounds=args.rounds, new_tokens=64 if args.tiny else 128, **shared)
    if profiler is not None:  # where the time goes, in the steps after the timed ones
        sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
        result["profile"] = profiler.key_averages().table(sort_by=sort, row_limit=25)
    # where a run's time goes beside its timed steps (with process_seconds, measured by the parent: the imports)
    result["run_seconds"] = time.perf_counter() - start
    if "training_began" in result:
        result["setup_seconds"] = result.pop("training_began") - start
    return result | {"cudnn_attention": torch.backends.cuda.cudnn_sdp_enabled()} | (
        {"memory_cap_gib": cap} if cap else {})


def new_profiler():
    return profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else []))


# --- the run of runs ------------------------------------------------------------------------------------

def versions() -> dict:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def described(path: Path, reference: Path | None) -> str:
    """A rows file as the result names it: within the reference folder, or the project's sample."""
    if reference and path.is_relative_to(reference):
        return f"reference: {path.relative_to(reference)}"
    return f"sample: {path.relative_to(SAMPLE_DIR)}"


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()})"


def result_path(folder: Path, kind: str) -> Path:
    """bench/results/<date>-<device>[-<kind>].json: one file per run of a tool, per day and card."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name().lower()).strip("-")  # "CPU (x86_64)" -> cpu-x86-64
    return folder / f"{datetime.date.today().isoformat()}-{slug}{'-' + kind if kind else ''}.json"


def ratios(runs: dict) -> dict:
    """The headline: the project's best over the peer (plain TRL) and over the notebook, on the same card in the
    same run; for generation, the stack as evaluate runs it over the peer's and over plain batch 1."""
    def best(prefix, key):
        return max((r[key] for name, r in runs.items() if name.startswith(prefix) and r.get(key)), default=None)

    def over(a, b):
        return a / b if a and b else None

    sft, dpo = best("sft_project", "real_tokens_per_s"), best("dpo_project", "pairs_per_s")
    stack = runs.get("generate_stack_batch_64", {}).get("new_tokens_per_s")
    return {"sft_real_tokens_over_peer": over(sft, runs.get("sft_peer", {}).get("real_tokens_per_s")),
            "sft_real_tokens_over_notebook": over(sft, runs.get("sft_notebook", {}).get("real_tokens_per_s")),
            "dpo_pairs_over_peer": over(dpo, runs.get("dpo_peer", {}).get("pairs_per_s")),
            "dpo_pairs_over_notebook": over(dpo, runs.get("dpo_notebook", {}).get("pairs_per_s")),
            "generate_stack_over_peer": over(stack, runs.get("generate_peer", {}).get("new_tokens_per_s")),
            "generate_stack_over_batch_1": over(stack, runs.get("generate_batch_1", {}).get("new_tokens_per_s"))}


def in_own_process(name: str, args) -> dict:
    """One configuration in a child process of its own (its peak memory, allocator and compiled kernels its own)."""
    settings = ["--warmup", str(args.warmup), "--steps", str(args.steps), "--rounds", str(args.rounds),
                "--memory-cap-gib", str(args.memory_cap_gib), *(["--tiny"] if args.tiny else []),
                *(["--profile", "--profile-steps", str(args.profile_steps)] if args.profile else []),
                *(["--reference", str(args.reference)] if args.reference else [])]
    start = time.perf_counter()
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        done = subprocess.run([sys.executable, "-m", "harness.bench", *settings, "--only", name, "--result", out.name])
        # the whole process, its start and set-up included: what a run costs of a lease
        wall = {"process_seconds": time.perf_counter() - start}
        if done.returncode:
            return {"failed": f"exit status {done.returncode} (its output is above)"} | wall
        return json.loads(Path(out.name).read_text()) | wall


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny shape and a few steps, for a CPU smoke run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps per training run (default 3)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per training run (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="timed generate calls per generation run (default 3)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of: {', '.join(RUNS)}")
    parser.add_argument("--memory-cap-gib", type=float, default=16,
                        help="cap the recipes' runs (sft7_recipe, dpo1_recipe) at this much GPU memory (default 16)")
    parser.add_argument("--profile", action="store_true",
                        help="after the timed steps, profile more (torch.profiler) and keep the top kernels")
    parser.add_argument("--profile-steps", type=int, default=3, help="optimizer steps profiled per run (default 3)")
    parser.add_argument("--budget-s", type=float,
                        help="start no run after this many seconds; the rest are marked skipped")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    parser.add_argument("--reference", type=Path, help="a folder holding tinyllama/ (and ed-real/, human-like-dpo/)")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # one configuration, in this process (a child)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)  # where the child writes it
    args = parser.parse_args(argv)
    args.reference = args.reference and args.reference.resolve()
    names = [name for name in args.runs.split(",") if name]
    unknown = [name for name in names if name not in RUNS]
    if unknown:
        parser.error(f"--runs: {', '.join(unknown)} unknown; the runs are {', '.join(RUNS)}")
    if min(args.warmup, args.steps, args.rounds, args.profile_steps) < 1:
        parser.error("--warmup, --steps, --rounds and --profile-steps must be at least 1")
    return args, names


def main(argv: list[str] | None = None) -> Path:
    args, names = parse(argv)
    if args.only:
        write_json(args.result, run_one(args.only, args))
        return args.result
    config = model_config(args.tiny, args.reference)
    device = device_name()
    path = result_path(args.out, "tiny" if args.tiny else "")
    result = {
        "device": device, "date": datetime.date.today().isoformat(), "tiny": args.tiny,
        "shape": {key: getattr(config, key) for key in TINYLLAMA if key != "vocab_size" or not args.tiny},
        "tokenizer": tokenizer_for(args.tiny, args.reference)[1],
        "rows": {kind: [described(path, args.reference) for path in files]
                 for kind, files in row_files(args.reference).items()},
        "dtype": str(compute_dtype(DTYPE)).removeprefix("torch."),
        "warmup_steps": args.warmup, "timed_steps": args.steps,
        "versions": versions(),
        "runs": {},
    }
    start = time.perf_counter()
    for name in names:
        if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
            result["runs"][name] = {"skipped": f"the {args.budget_s:g} s budget was spent"}
        else:
            print(f"bench: {name}", flush=True)
            result["runs"][name] = in_own_process(name, args)
        result["ratio"] = ratios(result["runs"])
        write_json(path, result)  # after every run: a session cut short keeps what finished
    headline = {name: {key: round(value, 2) for key, value in run.items()
                       if isinstance(value, float) and (key.endswith("_per_s") or key.endswith("peak_gib"))}
                for name, run in result["runs"].items()}
    print(json.dumps({"device": device, "ratio": result["ratio"], **headline}, indent=1))
    print(f"bench: {path}")
    return path


if __name__ == "__main__":
    main()
