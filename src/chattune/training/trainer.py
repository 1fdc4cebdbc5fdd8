"""What the sft and dpo stages share: splits as token ids, the trainer settings both take from params,
checkpoints to resume from, dvclive logging, the final evaluation, a training-only clock, and saving the
adapter."""
from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset, Features, Sequence, Value
from torch.utils.data import Sampler
from transformers import TrainerCallback
from transformers.integrations import DVCLiveCallback
from transformers.trainer_pt_utils import get_length_grouped_indices

from chattune.modeling.model import cpu_only, encode, use_bf16, use_fp16
from chattune.outputs import atomic_dir, read_jsonl
from chattune.params import Params, TrainParams
from chattune.paths import CHECKPOINTS_DIR, LIVE_DIR
from chattune.modeling.stacks import Stage, record_base


def sft_dataset(path, tokenizer) -> Dataset:
    """An SFT split as token ids through the one prompt format (modeling.encode), with the reply (and its
    EOS) marked for the loss. preprocess already fitted every example into sft.max_length."""
    rows = []
    for example in read_jsonl(path):
        prompt, reply = encode(tokenizer, example["prompt"], example["completion"])
        rows.append({"input_ids": prompt + reply, "completion_mask": [0] * len(prompt) + [1] * len(reply)})
    return Dataset.from_list(rows)


def dpo_dataset(path, tokenizer, max_prompt_length: int) -> tuple[Dataset, int]:
    """A DPO split as token ids through the one prompt format, without the pairs whose prompt exceeds
    `max_prompt_length` tokens (TRL 1.x has no max_prompt_length), and how many were left out. The dpo
    stage trains on these; evaluate scores them."""
    rows, dropped = [], 0
    for pair in read_jsonl(path):
        prompt, chosen = encode(tokenizer, pair["prompt"], pair["chosen"])
        if len(prompt) > max_prompt_length:
            dropped += 1
            continue
        rows.append({"prompt_ids": prompt, "chosen_ids": chosen,
                     "rejected_ids": encode(tokenizer, pair["prompt"], pair["rejected"])[1]})
    return Dataset.from_list(rows, features=PAIR_FEATURES), dropped


PAIR_FEATURES = Features({name: Sequence(Value("int64")) for name in ("prompt_ids", "chosen_ids", "rejected_ids")})


def liger_kernels(stage: str, setting) -> bool:
    """Whether a stage runs Liger's kernels: "auto" wherever they run (a CUDA GPU with liger-kernel installed, which
    `make install` does on a machine with a CUDA torch), true insists, false never."""
    runnable = torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None
    if setting is True and not runnable:
        raise SystemExit(f"{stage}.liger: true, but Liger's kernels need a CUDA GPU and liger-kernel "
                         "(pip install -r requirements-gpu.txt); set it to auto or false")
    return runnable if setting == "auto" else setting


# Bytes a token's activations take in the backward pass, per decoder layer and per unit of its two widths (hidden +
# intermediate), in bf16 or fp16. With Liger's kernels, measured on an H200 from whole runs' peaks: 11.6 (DPO, no
# LoRA dropout), 13.6 (packed SFT, dropout 0.05; bench/results/2026-12-04-nvidia-h200.json). Without them, what
# autograd saves, counted on the CPU: 17.2 with dropout 0.05 on TinyLlama's shape, 17.6 on SmolLM2's, plus the
# logits' bf16 copy and float32 log-softmax (about 10 bytes a vocabulary entry). Each rounded up, for the backward
# pass's transient tensors.
ACTIVATION_BYTES = {True: 16, False: 22}  # by whether Liger's kernels run
LOGIT_BYTES = {True: 0, False: 10}  # Liger's fused loss never holds a row's logits for the whole sequence
# The share of a GPU's free memory a micro-batch may plan on: the allocator's cache and fragmentation take the rest.
USABLE_MEMORY = 0.85


def token_bytes(config, liger: bool) -> int:
    """The estimated activation memory of one trained token of a decoder-only model with this config."""
    widths = config.hidden_size + config.intermediate_size
    return config.num_hidden_layers * widths * ACTIVATION_BYTES[liger] + config.vocab_size * LOGIT_BYTES[liger]


def weight_bytes(model) -> int:
    return sum(param.numel() * param.element_size() for param in model.parameters())


def planned_bytes(models, tokens: int, liger: bool) -> int:
    """The peak a micro-batch of `tokens` tokens is planned at: the models' weights and the tokens' activations."""
    return sum(map(weight_bytes, models)) + tokens * token_bytes(models[0].config, liger)


def micro_batch(share: int, preset: int, fits=None) -> int:
    """The examples one micro-batch takes of a process's `share` of an optimizer step: a divisor of it (every
    micro-batch alike), the largest up to `preset` (the micro-batch a T4 holds); given `fits`, the largest at or above
    that for which `fits(examples)` holds."""
    divisors = [size for size in range(1, share + 1) if share % size == 0]
    smallest = max(size for size in divisors if size <= preset)
    return max((size for size in divisors if size >= smallest and fits(size)), default=smallest) if fits else smallest


def batch_split(train: TrainParams, stage: str, liger: bool, processes: int, *models) -> tuple[int, int, int]:
    """The micro-batch, gradient accumulation and eval batch each of `processes` runs, so that every optimizer step
    trains the preset's examples_per_step examples (a DPO pair counts one) whatever the number of processes: each
    takes an equal share, in equal micro-batches of the largest size up to batch_size that divides it, or with
    `fill_gpu` on a CUDA GPU the largest its free memory is estimated to hold beside `models` (an example of
    max_length tokens; a DPO pair is two rows). The eval batch grows (or shrinks) alike. A step that cannot be shared
    evenly stops the stage before any training.

    The loss of a step is the mean over its examples however they are split, so only float rounding differs, and
    WholeSteps deals every process the same step. On an H200, dpo1's share of 16 pairs goes in one micro-batch, not
    eight of 2, and a step costs the host an eighth of the kernel launches."""
    step = train.examples_per_step
    if step % processes:
        raise SystemExit(f"{stage}.examples_per_step: {step} examples a step cannot be shared evenly by {processes} "
                         f"processes; make it a multiple of {processes}, or train on a number of processes that "
                         f"divides {step}")
    share = step // processes
    fits = None
    if train.fill_gpu and torch.cuda.is_available():
        # on this process's GPU (accelerate made it the current one); every process of a multi-GPU run must split
        # alike, so the least free memory decides
        free = min(gather_object([torch.cuda.mem_get_info()[0]]))
        example_tokens = (2 if stage == "dpo" else 1) * train.max_length

        def fits(size: int) -> bool:
            return planned_bytes(models, size * example_tokens, liger) <= free * USABLE_MEMORY
    micro = micro_batch(share, train.batch_size, fits)
    split = micro, share // micro, max(1, train.eval_batch_size * micro // train.batch_size)
    print(f"{stage}: each step's {step} examples: {processes} process(es) x {split[1]} micro-batch(es) of {micro}"
          + (f" ({stage}.fill_gpu: {free / 2**30:.0f} GiB free on the GPU)" if fits else "")
          + f"; evaluation {split[2]} at a time", flush=True)
    return split


def trainer_kwargs(params: Params, stage: str, output_dir: str, *models) -> dict:
    """Arguments common to SFTConfig and DPOConfig, from the params of `stage` ("sft" or "dpo"); `models` are
    those the trainer will hold on the device (their size bounds its micro-batches: batch_split)."""
    train: TrainParams = getattr(params, stage)
    liger = liger_kernels(stage, train.liger)
    processes = PartialState(cpu=cpu_only()).num_processes
    micro_batch_size, grad_accum, eval_batch = batch_split(train, stage, liger, processes, *models)
    return dict(
        output_dir=output_dir,
        learning_rate=train.lr * params.model.lr_scale,
        per_device_train_batch_size=micro_batch_size,
        per_device_eval_batch_size=eval_batch,
        gradient_accumulation_steps=grad_accum,
        max_length=train.max_length,
        seed=params.seed,
        data_seed=params.seed,
        bf16=use_bf16(),
        fp16=use_fp16(),
        # Without a GPU, several processes (torchrun) must be told to train as one gloo group, not each alone.
        use_cpu=cpu_only(),
        logging_steps=5,
        logging_first_step=True,  # so the curves start at step 1, and even a run of a few steps logs
        report_to="none",
        eval_strategy="steps",
        eval_steps=train.checkpoint_steps,
        save_strategy="steps",
        save_steps=train.checkpoint_steps,
        save_total_limit=1,  # the latest checkpoint is all a resumed run needs; the final adapter is kept
        use_liger_kernel=liger,
        gradient_checkpointing=train.gradient_checkpointing,
    )


def check_step(examples: int, step: int, stage: str, unit: str) -> None:
    """Stop before training when one optimizer step would take more than the training set."""
    if examples < step:
        raise SystemExit(f"{stage}.examples_per_step: a step of {step} is more than the {examples} training {unit}; "
                         "lower it, or train on more rows")


class WholeSteps(Sampler):
    """The training order of both trainers, alike on any number of processes: each pass a permutation drawn from a
    generator of its own, seeded with the seed and the pass (set_epoch, which PassOfWholeSteps calls as each pass
    begins, a resumed one included), cut to whole optimizer steps and grouped by length a step at a time, as
    transformers groups batches (get_length_grouped_indices), but with the step's examples as the group, where
    transformers takes one process's share of it. Every process draws the same order, whatever else it drew from
    torch's generators (dropout masks, an evaluation), and accelerate deals its micro-batches to the processes in
    turn, so a step trains the same examples on 1, 2 or 8 processes, and a run resumed in the middle of a pass
    skips exactly the micro-batches it trained. The examples past the last whole step sit that pass out (a
    different few each pass)."""

    def __init__(self, lengths: list[int], step: int, seed: int):
        self.lengths, self.step, self.seed, self.epoch = lengths, step, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths) - len(self.lengths) % self.step

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        kept = torch.randperm(len(self.lengths), generator=generator)[: len(self)].tolist()
        grouped = get_length_grouped_indices([self.lengths[i] for i in kept], self.step, generator=generator)
        return iter([kept[i] for i in grouped])


class PassOfWholeSteps(TrainerCallback):
    """Tells the trainer's WholeSteps which pass begins, from the optimizer steps trained (every pass is the same
    whole number of steps). transformers' own set_epoch does not reach it through the wrappers around it in a run
    resumed on several processes (accelerate's BatchSamplerShard inside transformers' SkipBatchSampler): that run drew
    the first pass's order again, and skipped and trained other examples than the run it continued."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        batches = train_dataloader.batch_sampler
        while not isinstance(getattr(batches, "sampler", None), WholeSteps):
            batches = batches.batch_sampler  # accelerate's shard of a process, around the BatchSampler
        sampler = batches.sampler
        sampler.set_epoch(state.global_step // (len(sampler) // sampler.step))


def whole_steps(trainer, lengths: list[int]) -> WholeSteps:
    """A trainer's WholeSteps sampler, over the examples of its whole optimizer step (every process's share)."""
    args = trainer.args  # transformers' rule: the data's seed, else the run's
    return WholeSteps(lengths, step_split(trainer)["examples_per_step"],
                      args.seed if args.data_seed is None else args.data_seed)


def step_split(trainer) -> dict:
    """How the run split each optimizer step (batch_split), for its metrics and model card: the examples a step
    trains, and the processes, micro-batches and micro-batch size that trained them."""
    args = trainer.args
    return {"examples_per_step": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
            "processes": args.world_size, "grad_accum": args.gradient_accumulation_steps,
            "micro_batch": args.per_device_train_batch_size}


def on_every_gpu(module: str) -> None:
    """Run `python -m module` as one process per GPU (accelerate launch, DDP) when this process sees several GPUs
    and no launcher started it, and exit with that run's status: `dvc repro` on Kaggle's two T4s then trains on
    both. Left alone, HF Trainer would wrap the model in nn.DataParallel, which TRL refuses. Each process takes an
    equal share of every step (batch_split), so the recipe is the preset's on any number of GPUs."""
    gpus = torch.cuda.device_count()
    if gpus > 1 and "LOCAL_RANK" not in os.environ:
        print(f"{module}: {gpus} GPUs: one process on each (accelerate launch --multi_gpu)", flush=True)
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
                  "--num_machines", "1", "-m", module]
        raise SystemExit(subprocess.run(launch).returncode)
    if "LOCAL_RANK" in os.environ:  # one of a launcher's processes
        atexit.register(leave_process_group)


def leave_process_group() -> None:
    """Destroy this process's torch.distributed group before the interpreter tears down: a gloo group left to the
    teardown aborted a process that had finished its work ("terminate called without an active exception")."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


COMPLETE = "complete"  # marker written once a checkpoint is fully on disk


class MarkComplete(TrainerCallback):
    """The trainer calls on_save after a checkpoint's every file is written; only then is it usable."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            (Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE).touch()


def inputs_fingerprint(*parts) -> str:
    """sha256 of a run's inputs: params sections (pydantic models), files (paths) and strings."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.read_bytes() if isinstance(part, Path) else
                      part.model_dump_json().encode() if hasattr(part, "model_dump_json") else str(part).encode())
    return digest.hexdigest()


def resume_or_start(stage: str, *inputs) -> tuple[Path, str | None]:
    """The stage's checkpoint folder and the checkpoint to resume from (None: start afresh).

    The folder is fixed and kept by DVC between runs (persist), so a killed run resumes, and every process
    of an `accelerate launch` run shares it; the main process tidies it before the others look."""
    run_dir = CHECKPOINTS_DIR / stage
    with PartialState(cpu=cpu_only()).main_process_first():
        checkpoint = resume_point(run_dir, inputs_fingerprint(*inputs))
    if checkpoint:
        print(f"{stage}: resuming from {checkpoint}")
    return run_dir, checkpoint


def resume_point(run_dir: Path, fingerprint: str) -> str | None:
    """The last complete checkpoint of an interrupted run with the same inputs, or None.

    A run folder left by other inputs is cleared; a checkpoint without its marker (killed while
    saving) is deleted."""
    stamp = run_dir / "inputs.sha256"
    if not stamp.exists() or stamp.read_text() != fingerprint:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        stamp.write_text(fingerprint)
        return None
    checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for partial in [p for p in checkpoints if not (p / COMPLETE).exists()]:
        shutil.rmtree(partial)
    complete = [p for p in checkpoints if (p / COMPLETE).exists()]
    return str(complete[-1]) if complete else None


class LiveCallback(DVCLiveCallback):
    """transformers' dvclive callback, but stepping by the trainer's global step, so train and eval
    points of one step line up on the same x."""

    def on_log(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # the only process with a Live (live_callback)
            self.live.step = state.global_step
        super().on_log(args, state, control, **kwargs)


def live_callback(stage: str, resume: bool) -> LiveCallback:
    from dvclive import Live  # here, not at the top: harness.gpu_check runs the stages where dvc is not installed

    # Only the main process opens the curves' folder: a fresh Live empties it, and two processes emptying it at
    # once crash on each other's deleted files. The callback logs from the main process alone anyway.
    if not PartialState(cpu=cpu_only()).is_main_process:
        return LiveCallback()
    # dvcyaml=None: the project's dvc.yaml declares the plots; dvclive must not rewrite it.
    # resume=True continues the curves of an interrupted run instead of starting them over.
    return LiveCallback(live=Live(dir=str(LIVE_DIR / stage), resume=resume, dvcyaml=None, save_dvc_exp=False))


class LogLastStep(TrainerCallback):
    """Log the last step as well, so a stage reports the end of training's figures and not those of the last
    multiple of logging_steps (in a 4-step DPO run, step 1, where every reward is still 0)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == state.max_steps:
            control.should_log = True


class TrainClock(TrainerCallback):
    """Seconds spent in optimizer steps (forward, backward, update) by this process, and how many: no
    evaluation, checkpointing or logging, and after a resume only the steps this run made."""

    def __init__(self):
        self.seconds, self.steps, self._start = 0.0, 0, 0.0

    @staticmethod
    def of(trainer) -> "TrainClock":
        return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TrainClock))

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # GPU work is asynchronous: count it when it is done
        return time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += self._now() - self._start
        self.steps += 1


def throughput(dataset: Dataset, passes: float, seconds: float) -> tuple[float, float]:
    """Real (unpadded) tokens and examples per second, for `passes` over `dataset` in `seconds`. A packed row
    (TRL's packing) holds several examples; its `seq_lengths` lists them."""
    tokens = sum(len(ids) for ids in dataset["input_ids"])
    examples = sum(map(len, dataset["seq_lengths"])) if "seq_lengths" in dataset.column_names else len(dataset)
    return (tokens * passes / seconds, examples * passes / seconds) if seconds > 0 else (0.0, 0.0)


def reply_token_loss(trainer, dataset=None) -> dict[str, float]:
    """An SFT eval set's loss and token accuracy per trained token (every reply token and its EOS), over the whole set
    whatever its batching. transformers' eval_loss averages each eval batch's mean over its examples, so it moved
    with the eval batch: SmolLM2's base model on 16 real valid.csv examples scored 3.895 in batches of 1, 3.726 of 3,
    3.664 of 8 and 3.625 of 16, more than some SFT runs change it. Presets (their eval batches differ), GPUs (fill_gpu
    grows the batch) and numbers of processes could not be compared.

    The model is run as it is (evaluate puts it in eval mode). Each process scores its share of the examples, one
    row of [loss, tokens right, tokens] an example (a padding-free batch, one flattened row, is cut back into its
    examples where cu_seq_lens_q says they start), and the rows are gathered batch by batch, which drops the examples
    accelerate repeats to even out the last batch."""
    model, totals = trainer.model, torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader(dataset):
            batch = trainer._prepare_inputs(batch)
            labels = batch.pop("labels")
            logits = model(**batch).logits
            starts = batch["cu_seq_lens_q"].tolist() if "cu_seq_lens_q" in batch else [0, labels.shape[1]]
            rows = []
            for row_logits, row_labels in zip(logits, labels):
                targets = row_labels[1:]  # logits at t predict token t + 1
                kept = targets != -100
                scores = row_logits[:-1].float()
                loss = torch.nn.functional.cross_entropy(scores, targets.clamp(min=0), reduction="none") * kept
                right = (scores.argmax(-1) == targets) & kept
                for start, end in zip(starts, starts[1:]):  # an example's first label is -100: no cut loses a token
                    rows.append(torch.stack([loss[start:end - 1].sum(), right[start:end - 1].sum().float(),
                                             kept[start:end - 1].sum().float()]))
            totals += trainer.accelerator.gather_for_metrics(torch.stack(rows)).cpu().double().sum(0)
    return {"loss": float(totals[0] / totals[2]), "mean_token_accuracy": float(totals[1] / totals[2])}


def final_evaluation(trainer) -> dict:
    """The evaluation at the last step: the in-loop one when the last step was an evaluation step, else
    one more, so the end of training is always evaluated and never twice."""
    step = trainer.state.global_step
    logged = [log for log in trainer.state.log_history if log.get("step") == step and "eval_loss" in log]
    return logged[-1] if logged else trainer.evaluate()


def save_adapter(trainer, out: Path, below: Stage, card) -> None:
    """Write the trained adapter, the tokenizer, its model card (a huggingface_hub ModelCard, in place of PEFT's
    empty template) and a fingerprint of the stack `below` it to `out` atomically, then empty the run's
    checkpoint folder (DVC keeps the folder itself: persist)."""
    with atomic_dir(out) as tmp:
        trainer.model.save_pretrained(tmp, selected_adapters=["default"])  # the trained one, not the SFT beneath
        # PEFT keeps target_modules as a set and writes it in the order of the process's string hashes: sorted,
        # two runs write the same file
        config_path = tmp / "adapter_config.json"
        config = json.loads(config_path.read_text())
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        trainer.processing_class.save_pretrained(tmp)
        card.save(tmp / "README.md")
        record_base(tmp, below)
    run_dir = Path(trainer.args.output_dir)
    shutil.rmtree(run_dir)
    run_dir.mkdir()
