"""What the sft and dpo stages share: reading splits, the trainer settings both take from params,
checkpoints to resume from, dvclive logging, saving the adapter, and a throughput figure."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from accelerate import PartialState
from datasets import Dataset
from dvclive import Live
from transformers import TrainerCallback
from transformers.integrations import DVCLiveCallback

from stages.modeling import Stage, cpu_only, prompt_ids, record_base, use_bf16
from stages.outputs import atomic_dir, read_jsonl
from stages.params import Params, TrainParams
from stages.paths import CHECKPOINTS_DIR, LIVE_DIR


def load_split(path) -> Dataset:
    return Dataset.from_list(read_jsonl(path))


def load_pairs(path, tokenizer, limit: int) -> tuple[Dataset, int]:
    """A DPO split without the pairs whose prompt exceeds `limit` tokens (TRL 1.x has no
    max_prompt_length), and how many were left out. The dpo stage trains on these; evaluate scores them."""
    pairs = load_split(path)
    kept = pairs.filter(lambda pair: len(prompt_ids(tokenizer, pair["prompt"])) <= limit)
    return kept, len(pairs) - len(kept)


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
        # Without a GPU, several processes (torchrun) must be told to train as one gloo group, not each alone.
        use_cpu=cpu_only(),
        logging_steps=5,
        logging_first_step=True,  # so the curves start at step 1, and even a run of a few steps logs
        report_to="none",
        save_strategy="steps",
        save_steps=train.checkpoint_steps,
        use_liger_kernel=train.liger,
    )


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
        self.live.step = state.global_step
        super().on_log(args, state, control, **kwargs)


def live_callback(stage: str, resume: bool) -> LiveCallback:
    # dvcyaml=None: the project's dvc.yaml declares the plots; dvclive must not rewrite it.
    # resume=True continues the curves of an interrupted run instead of starting them over.
    return LiveCallback(live=Live(dir=str(LIVE_DIR / stage), resume=resume, dvcyaml=None, save_dvc_exp=False))


def throughput(dataset: Dataset, passes: float, seconds: float) -> tuple[float, float]:
    """Real (unpadded) tokens and examples the trainer consumed per second of training. A packed row
    (TRL's packing) holds several examples; its `seq_lengths` lists them."""
    tokens = sum(len(ids) for ids in dataset["input_ids"])
    examples = sum(map(len, dataset["seq_lengths"])) if "seq_lengths" in dataset.column_names else len(dataset)
    return (tokens * passes / seconds, examples * passes / seconds) if seconds > 0 else (0.0, 0.0)


def save_adapter(trainer, out: Path, below: Stage) -> None:
    """Write the trained adapter, the tokenizer and a fingerprint of the stack `below` it to `out`
    atomically, then empty the run's checkpoint folder (DVC keeps the folder itself: persist)."""
    with atomic_dir(out) as tmp:
        trainer.model.save_pretrained(tmp)
        trainer.processing_class.save_pretrained(tmp)
        record_base(tmp, below)
    run_dir = Path(trainer.args.output_dir)
    shutil.rmtree(run_dir)
    run_dir.mkdir()
