"""The trainer settings the sft and dpo stages take from params, and the evaluation both report: the loss per reply token, whatever the batching."""
from __future__ import annotations

import torch
from accelerate import PartialState

from chattune.common.params import Params, TrainParams
from chattune.modeling.placement import cpu_only, use_bf16, use_fp16
from chattune.training.batching import batch_split, liger_kernels


def trainer_kwargs(params: Params, stage: str, output_dir: str, *models) -> dict:
    """Arguments common to SFTConfig and DPOConfig, from the params of `stage` ("sft" or "dpo"); `models` are
    those the trainer will hold on the device (their size bounds its micro-batches: batch_split)."""
    train: TrainParams = getattr(params, stage)
    liger = liger_kernels(stage, train.liger)
    processes = PartialState(cpu=cpu_only()).num_processes
    micro_batch_size, grad_accum, eval_batch = batch_split(train, stage, liger, processes, *models)
    return dict(
        output_dir=output_dir,
        run_name=stage,  # what a tracker calls the run (transformers would name it for the checkpoints' folder)
        learning_rate=train.lr * params.model.lr_scale,
        per_device_train_batch_size=micro_batch_size,
        per_device_eval_batch_size=eval_batch,
        gradient_accumulation_steps=grad_accum,
        max_length=train.max_length,
        seed=params.seed,
        data_seed=params.seed,
        bf16=use_bf16(params.model.dtype),
        fp16=use_fp16(params.model.dtype),
        # Without a GPU, several processes (torchrun) must be told to train as one gloo group, not each alone.
        use_cpu=cpu_only(),
        logging_steps=5,
        logging_first_step=True,  # so the curves start at step 1, and even a run of a few steps logs
        # dvclive's curves come from the stage's own callback, TensorBoard's from tracker_callbacks (its folder, not
        # one inside the checkpoints); transformers makes the others' callbacks from their names
        report_to=[name for name in train.report_to if name != "tensorboard"] or "none",
        eval_strategy="steps",
        eval_steps=train.checkpoint_steps,
        save_strategy="steps",
        save_steps=train.checkpoint_steps,
        save_total_limit=1,  # the latest checkpoint is all a resumed run needs; the final adapter is kept
        use_liger_kernel=liger,
        gradient_checkpointing=train.gradient_checkpointing,
    )


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
    # under the training's autocast, as its steps ran: in half precision the LoRA updates are summed in float32
    with torch.no_grad(), trainer.accelerator.autocast():
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
