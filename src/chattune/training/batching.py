"""What one optimizer step trains, and how a process puts its share through the model: the memory planner (what a token and the weights cost, with or without Liger's kernels), the micro-batch that fits, and the sampler that draws whole steps of similar length, alike on any number of processes."""
from __future__ import annotations

import importlib.util

import torch
from accelerate.utils import gather_object
from torch.utils.data import Sampler
from transformers import TrainerCallback
from transformers.trainer_pt_utils import get_length_grouped_indices

from chattune.common.errors import ParamsError
from chattune.common.params import TrainParams


def liger_kernels(stage: str, setting) -> bool:
    """Whether a stage runs Liger's kernels: "auto" wherever they run (a CUDA GPU with liger-kernel installed, which
    `make install` does on a machine with a CUDA torch), true insists, false never."""
    runnable = torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None
    if setting is True and not runnable:
        raise ParamsError(f"{stage}.liger: true, but Liger's kernels need a CUDA GPU and liger-kernel "
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
        raise ParamsError(f"{stage}.examples_per_step: {step} examples a step cannot be shared evenly by {processes} "
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


def check_step(examples: int, step: int, stage: str, unit: str) -> None:
    """Stop before training when one optimizer step would take more than the training set."""
    if examples < step:
        raise ParamsError(f"{stage}.examples_per_step: a step of {step} is more than the {examples} training {unit}; "
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
