"""What the sft and dpo stages share: reading splits, the trainer settings both take from params,
dvclive logging, and a throughput figure."""
from __future__ import annotations

import shutil
from pathlib import Path

from datasets import Dataset
from dvclive import Live
from transformers.integrations import DVCLiveCallback

from stages.modeling import Stage, record_base, use_bf16
from stages.outputs import atomic_dir, read_jsonl
from stages.params import Params, TrainParams
from stages.paths import LIVE_DIR


def load_split(path) -> Dataset:
    return Dataset.from_list(read_jsonl(path))


def trainer_kwargs(params: Params, train: TrainParams, output_dir: str) -> dict:
    """Arguments common to SFTConfig and DPOConfig."""
    return dict(
        output_dir=output_dir,
        learning_rate=train.lr * params.model.lr_scale,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.eval_batch_size,
        gradient_accumulation_steps=train.grad_accum,
        max_length=train.max_length,
        seed=params.seed,
        data_seed=params.seed,
        bf16=use_bf16(),
        logging_steps=5,
        report_to="none",
    )


class LiveCallback(DVCLiveCallback):
    """transformers' dvclive callback, but stepping by the trainer's global step, so train and eval
    points of one step line up on the same x."""

    def on_log(self, args, state, control, **kwargs):
        self.live.step = state.global_step
        super().on_log(args, state, control, **kwargs)


def live_callback(stage: str) -> LiveCallback:
    # dvcyaml=None: the project's dvc.yaml declares the plots; dvclive must not rewrite it.
    return LiveCallback(live=Live(dir=str(LIVE_DIR / stage), dvcyaml=None, save_dvc_exp=False))


def tokens_per_second(dataset: Dataset, passes: float, seconds: float) -> float:
    """Real (unpadded) tokens the trainer consumed per second of training."""
    tokens = sum(len(ids) for ids in dataset["input_ids"])
    return tokens * passes / seconds if seconds > 0 else 0.0


def save_adapter(trainer, out: Path, below: Stage) -> None:
    """Write the trained adapter, the tokenizer and a fingerprint of the stack `below` it to `out`
    atomically, then drop the trainer's folder."""
    with atomic_dir(out) as tmp:
        trainer.model.save_pretrained(tmp)
        trainer.processing_class.save_pretrained(tmp)
        record_base(tmp, below)
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
