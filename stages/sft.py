"""sft: train a LoRA adapter on EmpatheticDialogues listener turns with TRL's SFTTrainer.

Every example becomes token ids through the one prompt format (chattune.modeling.prompt.encode); the loss is on
the listener's reply and its EOS only, and batches are padded to their own longest row. The base model's
eval loss is measured first (a fresh LoRA adapter is a no-op), so metrics/sft.json shows what SFT changed.
Eval loss and a checkpoint every sft.checkpoint_steps and at the last step; a killed run resumes from its
last complete checkpoint. The final adapter (not the best-scoring one: the eval set is the one reported,
so picking on it would flatter the number) and the tokenizer go to models/sft/.
"""
from __future__ import annotations

import sys
from pathlib import Path

from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from chattune.common.errors import run
from chattune.common.outputs import write_json
from chattune.common.params import load_params
from chattune.common.paths import METRICS_DIR, SFT_DATA, SFT_MODEL
from chattune.data.datasets import sft_dataset
from chattune.evaluation.cards import adapter_card, recorded
from chattune.modeling.loading import (
    check_targets,
    load_base_model,
    load_tokenizer,
    lora_config,
    lora_under_autocast,
)
from chattune.modeling.placement import compute_dtype, device_record
from chattune.modeling.stacks import fingerprint
from chattune.training import packed_attention
from chattune.training.batching import PassOfWholeSteps, check_step, step_split
from chattune.training.callbacks import LogLastStep, TrainClock, live_callback, throughput, tracker_callbacks
from chattune.training.checkpoints import MarkComplete, resume_or_start, save_adapter
from chattune.training.launch import on_every_gpu
from chattune.training.settings import final_evaluation, trainer_kwargs
from chattune.training.sft import StepSFTTrainer


def build_trainer(params, output_dir: str, resume: bool = False, curves=live_callback) -> SFTTrainer:
    sft = params.sft
    tokenizer = load_tokenizer()
    model = load_base_model(compute_dtype(params.model.dtype),
                            attention=packed_attention.register() if sft.packing else None)
    check_targets(model, sft.lora, "sft")
    config = SFTConfig(
        **trainer_kwargs(params, "sft", output_dir, model),
        num_train_epochs=sft.epochs,
        lr_scheduler_type=sft.scheduler,
        warmup_steps=sft.warmup_ratio,  # a float below 1 is a share of all steps
        weight_decay=sft.weight_decay,
        completion_only_loss=True,
        # Batches of similar length pad little (training's: StepSFTTrainer; evaluation's: this); each batch is
        # padded to its own longest row. With packing, TRL fills rows best-fit (bfd) and passes one flattened row with
        # restarting position ids and where each example starts, and the model attends within each example only
        # (chattune.training.packed_attention).
        train_sampling_strategy="group_by_length",
        packing=sft.packing,
        packing_strategy="bfd",
        # evaluation takes one example an item, so reply_token_loss can tell the repeats accelerate adds to even out
        # the last batch across processes (packed, an item would hold several examples)
        eval_packing=False,
    )
    trainer = StepSFTTrainer(
        model=model,
        args=config,
        train_dataset=sft_dataset(SFT_DATA / "train.jsonl", tokenizer),
        eval_dataset=sft_dataset(SFT_DATA / "eval.jsonl", tokenizer),
        processing_class=tokenizer,
        peft_config=lora_config(sft.lora),
        callbacks=[curves("sft", resume), *tracker_callbacks("sft", sft.report_to), MarkComplete(), TrainClock(),
                   LogLastStep(), PassOfWholeSteps()],
    )
    check_step(len(trainer.train_dataset), sft.examples_per_step, "sft", "packed rows" if sft.packing else "examples")
    lora_under_autocast(trainer.model)  # the trainer added the adapter
    return trainer


def base_model_eval_loss(trainer: SFTTrainer, stored: Path, resuming: bool) -> float:
    """Eval loss before any step (the fresh adapter is a no-op), measured once per run, so a resumed run
    neither repeats it nor logs a second step-0 point on the curve."""
    if resuming and stored.exists():
        return float(stored.read_text())
    loss = trainer.evaluate()["eval_loss"]
    stored.write_text(repr(loss))
    return loss


def main(curves=live_callback) -> None:
    """`curves(stage, resume)`: the callback that logs the training curves (dvclive's; the harness passes its own
    where dvclive cannot run)."""
    if (status := on_every_gpu("stages.sft")) is not None:  # this process launched one on each GPU
        sys.exit(status)
    params = load_params()
    set_seed(params.seed)
    run_dir, checkpoint = resume_or_start("sft", params.seed, params.model, params.sft, SFT_DATA / "train.jsonl",
                                          SFT_DATA / "eval.jsonl", fingerprint("base"))
    trainer = build_trainer(params, str(run_dir), resume=checkpoint is not None, curves=curves)
    base_eval_loss = base_model_eval_loss(trainer, run_dir / "base_eval_loss.txt", resuming=checkpoint is not None)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    final = final_evaluation(trainer)
    if not trainer.is_world_process_zero():
        return
    clock = TrainClock.of(trainer)
    # The share of all epochs that these steps trained (all of it, or what a resumed run had left).
    passes = params.sft.epochs * clock.steps / trainer.state.max_steps
    tokens_per_s, examples_per_s = throughput(trainer.train_dataset, passes, clock.seconds)
    metrics = {
        "base_eval_loss": base_eval_loss,
        "eval_loss": final["eval_loss"],
        "train_loss": result.training_loss,
        "train_runtime_s": result.metrics["train_runtime"],
        "train_step_seconds": clock.seconds,  # training steps only: no evaluation, checkpoints or logging
        "train_steps_timed": clock.steps,  # the steps this run made (after a resume, fewer than steps)
        "train_tokens_per_s": tokens_per_s,
        "train_examples_per_s": examples_per_s,
        "steps": trainer.state.global_step,
        "lr": trainer.args.learning_rate,  # sft.lr times model.lr_scale
        **step_split(trainer),
        **device_record(trainer.model.dtype),  # what the base weights were loaded in
    }
    save_adapter(trainer, SFT_MODEL, below="base", card=adapter_card("sft", params, *recorded(), metrics))
    write_json(METRICS_DIR / "sft.json", metrics)
    print(f"sft: eval loss {base_eval_loss:.4f} (base) -> {final['eval_loss']:.4f}; adapter in {SFT_MODEL}/")


if __name__ == "__main__":
    run(main, "sft")
