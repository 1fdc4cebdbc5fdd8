"""dpo: train a second LoRA adapter with TRL's DPOTrainer on Human-Like-DPO pairs.

The policy starts as base + SFT adapter, merged; the new adapter is trained on top. With no separate
ref_model, TRL scores the reference with the adapter disabled, i.e. the merged SFT model, which is the
policy at step 0. Loading the result therefore needs both adapters, in order (stages.modeling.load_model).
"""
from __future__ import annotations

from transformers import set_seed
from trl import DPOConfig, DPOTrainer

from stages.modeling import fingerprint, load_model, load_tokenizer, lora_config
from stages.outputs import write_json
from stages.params import load_params
from stages.paths import DPO_DATA, DPO_MODEL, METRICS_DIR
from stages.training import (MarkComplete, live_callback, load_pairs, resume_or_start, save_adapter,
                             trainer_kwargs)

REPORTED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
            "logps/chosen", "logps/rejected")


def build_trainer(params, output_dir: str, resume: bool = False) -> tuple[DPOTrainer, int]:
    """The trainer, and how many pairs were left out for their prompt's length."""
    dpo = params.dpo
    tokenizer = load_tokenizer()
    (train, dropped_train), (held_out, dropped_eval) = (load_pairs(DPO_DATA / f"{split}.jsonl", tokenizer,
                                                                   dpo.max_prompt_length)
                                                        for split in ("train", "eval"))
    config = DPOConfig(
        **trainer_kwargs(params, dpo, output_dir),
        beta=dpo.beta,
        precompute_ref_log_probs=dpo.precompute_ref_log_probs,
        max_steps=dpo.max_steps,
        warmup_steps=dpo.warmup_steps,
        eval_strategy="steps",
        eval_steps=max(1, dpo.max_steps // 5),
        save_total_limit=1,  # the latest checkpoint is all a resumed run needs
    )
    trainer = DPOTrainer(
        model=load_model("sft"),
        args=config,
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
        peft_config=lora_config(dpo.lora),
        callbacks=[live_callback("dpo", resume), MarkComplete()],
    )
    return trainer, dropped_train + dropped_eval


def flat(metrics: dict, prefix: str) -> dict:
    """`eval_rewards/chosen` -> `eval.rewards_chosen`: names that read well as dvc exp show columns."""
    return {f"{prefix}.{key.replace('/', '_')}": metrics[f"{prefix}_{key}"] for key in REPORTED}


def main() -> None:
    params = load_params()
    set_seed(params.seed)
    run_dir, checkpoint = resume_or_start("dpo", params.seed, params.model, params.dpo, DPO_DATA / "train.jsonl",
                                          DPO_DATA / "eval.jsonl", fingerprint("sft"))
    trainer, dropped_long_prompts = build_trainer(params, str(run_dir), resume=checkpoint is not None)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    final_eval = trainer.evaluate()
    if not trainer.is_world_process_zero():
        return
    save_adapter(trainer, DPO_MODEL, below="sft")
    runtime = result.metrics["train_runtime"]
    pairs = trainer.state.global_step * params.dpo.batch_size * params.dpo.grad_accum * trainer.args.world_size
    last_train = next(log for log in reversed(trainer.state.log_history) if "rewards/chosen" in log)
    write_json(METRICS_DIR / "dpo.json", {
        **flat(final_eval, "eval"),
        **{f"train.{key.replace('/', '_')}": last_train[key] for key in REPORTED},
        "train_runtime_s": runtime,
        "train_pairs_per_s": pairs / runtime,
        "steps": trainer.state.global_step,
        **{f"{split}_pairs_used": len(used) for split, used in (("train", trainer.train_dataset),
                                                                  ("eval", trainer.eval_dataset))},
        "dropped.long_prompt": dropped_long_prompts,
    })
    print(f"dpo: eval reward accuracy {final_eval['eval_rewards/accuracies']:.3f}, "
          f"margin {final_eval['eval_rewards/margins']:.3f}; adapter in {DPO_MODEL}/")


if __name__ == "__main__":
    main()
