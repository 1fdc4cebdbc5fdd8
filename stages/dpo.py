"""dpo: train a second LoRA adapter with TRL's DPOTrainer on Human-Like-DPO pairs.

The policy is base + SFT adapter (frozen, unmerged) + a new adapter, the only trainable weights. The
reference is base + SFT adapter: the policy at step 0. The SFT adapter stays unmerged because merging it
into bf16 weights would round much of its update away, and DPO would then learn against a model that
evaluation never scores. Loading the result needs both adapters, in order (chattune.modeling.loading.load_model).

LoRA dropout (dpo.lora.dropout) is honored: TRL's disable_dropout would zero it along with the base
model's dropout, so the stage disables the base's (and the frozen SFT adapter's) dropout itself.
"""
from __future__ import annotations

import sys

from transformers import set_seed
from trl import DPOConfig, DPOTrainer

from chattune.common.errors import run
from chattune.common.outputs import write_json
from chattune.common.params import load_params
from chattune.common.paths import DPO_DATA, DPO_MODEL, METRICS_DIR
from chattune.data.datasets import dpo_dataset
from chattune.evaluation.cards import adapter_card, recorded
from chattune.modeling.loading import load_base_model, load_tokenizer, stack
from chattune.modeling.placement import compute_dtype, device_record
from chattune.modeling.stacks import fingerprint
from chattune.training.batching import PassOfWholeSteps, check_step, step_split
from chattune.training.callbacks import LogLastStep, TrainClock, live_callback, tracker_callbacks
from chattune.training.checkpoints import MarkComplete, resume_or_start, save_adapter
from chattune.training.dpo import KeepStack, TokenizedDPOTrainer, policy_model, reference_model
from chattune.training.launch import on_every_gpu
from chattune.training.settings import final_evaluation, trainer_kwargs

REPORTED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
            "logps/chosen", "logps/rejected")
def build_trainer(params, output_dir: str, resume: bool = False, curves=live_callback) -> tuple[DPOTrainer, int]:
    """The trainer, and how many pairs were left out for their prompt's length."""
    dpo = params.dpo
    tokenizer = load_tokenizer()
    (train, dropped_train), (held_out, dropped_eval) = (dpo_dataset(DPO_DATA / f"{split}.jsonl", tokenizer,
                                                                    dpo.max_prompt_length)
                                                        for split in ("train", "eval"))
    check_step(len(train), dpo.examples_per_step, "dpo", "pairs")
    dtype = compute_dtype(params.model.dtype)
    policy = policy_model(stack(load_base_model(dtype), "sft"), dpo.lora)
    reference = reference_model(stack(load_base_model(dtype), "sft"))
    config = DPOConfig(
        **trainer_kwargs(params, "dpo", output_dir, policy, reference),
        beta=dpo.beta,
        precompute_ref_log_probs=dpo.precompute_ref_log_probs,
        max_steps=min(dpo.max_steps, dpo.max_epochs * (len(train) // dpo.examples_per_step)),  # whole steps
        warmup_steps=dpo.warmup_steps,
        disable_dropout=False,  # done in policy_model, keeping the LoRA dropout
        train_sampling_strategy="group_by_length",  # evaluation's batches too (_get_eval_sampler)
    )
    trainer = TokenizedDPOTrainer(
        model=policy,
        ref_model=reference,
        args=config,
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
        callbacks=[curves("dpo", resume), *tracker_callbacks("dpo", params.dpo.report_to), MarkComplete(), TrainClock(),
                   LogLastStep(), KeepStack(), PassOfWholeSteps()],
    )
    return trainer, dropped_train + dropped_eval


def flat(metrics: dict, prefix: str) -> dict:
    """`eval_rewards/chosen` -> `eval.rewards_chosen`: names that read well as dvc exp show columns."""
    return {f"{prefix}.{key.replace('/', '_')}": metrics[f"{prefix}_{key}"] for key in REPORTED}


def main(curves=live_callback) -> None:
    """`curves(stage, resume)`: the callback that logs the training curves (dvclive's; the harness passes its own
    where dvclive cannot run)."""
    if (status := on_every_gpu("stages.dpo")) is not None:  # this process launched one on each GPU
        sys.exit(status)
    params = load_params()
    set_seed(params.seed)
    run_dir, checkpoint = resume_or_start("dpo", params.seed, params.model, params.dpo, DPO_DATA / "train.jsonl",
                                          DPO_DATA / "eval.jsonl", fingerprint("sft"))
    trainer, dropped_long_prompts = build_trainer(params, str(run_dir), resume=checkpoint is not None, curves=curves)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    final = final_evaluation(trainer)
    if not trainer.is_world_process_zero():
        return
    clock = TrainClock.of(trainer)
    pairs = clock.steps * params.dpo.examples_per_step
    # The last logged training figures: an average over the steps since the one logged before.
    last_train = next(log for log in reversed(trainer.state.log_history) if "rewards/chosen" in log)
    metrics = {
        **flat(final, "eval"),
        **{f"train.{key.replace('/', '_')}": last_train[key] for key in REPORTED},
        "train_runtime_s": result.metrics["train_runtime"],
        "train_step_seconds": clock.seconds,  # training steps only: no evaluation, checkpoints or logging
        "train_steps_timed": clock.steps,  # the steps this run made (after a resume, fewer than steps)
        "train_pairs_per_s": pairs / clock.seconds if clock.seconds else 0.0,
        "steps": trainer.state.global_step,
        "lr": trainer.args.learning_rate,  # dpo.lr times model.lr_scale
        **step_split(trainer),
        **{f"{split}_pairs_used": len(used) for split, used in (("train", trainer.train_dataset),
                                                                  ("eval", trainer.eval_dataset))},
        "dropped.long_prompt": dropped_long_prompts,
        **device_record(trainer.model.dtype),  # what the base weights were loaded in
    }
    save_adapter(trainer, DPO_MODEL, below="sft", card=adapter_card("dpo", params, *recorded(), metrics))
    write_json(METRICS_DIR / "dpo.json", metrics)
    print(f"dpo: eval reward accuracy {final['eval_rewards/accuracies']:.3f}, "
          f"margin {final['eval_rewards/margins']:.3f}; adapter in {DPO_MODEL}/")


if __name__ == "__main__":
    run(main, "dpo")
