"""sft: train a LoRA adapter on EmpatheticDialogues listener turns with TRL's SFTTrainer.

Loss is on the completion (the listener's reply and its EOS) only; batches are padded to their own
longest row. The base model's eval loss is measured first (a fresh LoRA adapter is a no-op), so
metrics/sft.json shows what SFT changed. The best epoch's adapter and the tokenizer go to models/sft/.
"""
from __future__ import annotations

from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from stages.modeling import load_base_model, load_tokenizer, lora_config
from stages.outputs import write_json
from stages.params import load_params
from stages.paths import CHECKPOINTS_DIR, METRICS_DIR, SFT_DATA, SFT_MODEL
from stages.training import live_callback, load_split, save_adapter, tokens_per_second, trainer_kwargs


def build_trainer(params, output_dir: str) -> SFTTrainer:
    sft = params.sft
    config = SFTConfig(
        **trainer_kwargs(params, sft, output_dir),
        num_train_epochs=sft.epochs,
        lr_scheduler_type=sft.scheduler,
        warmup_steps=sft.warmup_ratio,  # a float below 1 is a share of all steps
        weight_decay=sft.weight_decay,
        completion_only_loss=True,
        # Batches of similar length pad little; each batch is padded to its own longest row.
        train_sampling_strategy="group_by_length",
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        save_total_limit=1,  # the best checkpoint is always kept besides
    )
    return SFTTrainer(
        model=load_base_model(),
        args=config,
        train_dataset=load_split(SFT_DATA / "train.jsonl"),
        eval_dataset=load_split(SFT_DATA / "eval.jsonl"),
        processing_class=load_tokenizer(),
        peft_config=lora_config(sft.lora),
        callbacks=[live_callback("sft")],
    )


def main() -> None:
    params = load_params()
    set_seed(params.seed)
    # A fixed folder, so every process of an `accelerate launch` run shares the trainer's checkpoints.
    trainer = build_trainer(params, str(CHECKPOINTS_DIR / "sft"))
    base_eval_loss = trainer.evaluate()["eval_loss"]
    result = trainer.train()
    if not trainer.is_world_process_zero():
        return
    save_adapter(trainer, SFT_MODEL, below="base")
    runtime = result.metrics["train_runtime"]
    write_json(METRICS_DIR / "sft.json", {
        "base_eval_loss": base_eval_loss,
        "eval_loss": trainer.state.best_metric,
        "train_loss": result.training_loss,
        "train_runtime_s": runtime,
        "train_tokens_per_s": tokens_per_second(trainer.train_dataset, params.sft.epochs, runtime),
        "train_examples_per_s": result.metrics["train_samples_per_second"],
        "steps": trainer.state.global_step,
    })
    print(f"sft: eval loss {base_eval_loss:.4f} (base) -> {trainer.state.best_metric:.4f}; adapter in {SFT_MODEL}/")


if __name__ == "__main__":
    main()
