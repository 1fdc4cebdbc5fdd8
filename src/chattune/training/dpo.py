"""The DPO policy and reference on base + SFT adapter, and the trainer that takes pairs already turned into ids.

The policy is base + SFT adapter (frozen, unmerged) + a new adapter, the only trainable weights. The reference is
base + SFT adapter: the policy at step 0. LoRA dropout (dpo.lora.dropout) is honored: TRL's disable_dropout would
zero it along with the base model's dropout, so policy_model disables the base's (and the frozen SFT adapter's)
dropout itself.
"""
from __future__ import annotations

import torch
from transformers import TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from trl import DPOTrainer
from trl.trainer.utils import disable_dropout_in_model

from chattune.common.params import LoraParams
from chattune.modeling.loading import check_targets, lora_config, lora_under_autocast
from chattune.training.batching import whole_steps

TRAINED = ["default", "sft"]  # the new adapter first: the trainer resumes the first active adapter


def activate_stack(model) -> None:
    """Both adapters active, only the new one trainable."""
    model.base_model.set_adapter(TRAINED)
    for name, param in model.named_parameters():
        param.requires_grad = ".default." in name


class KeepStack(TrainerCallback):
    """Resuming from a checkpoint leaves only the trained adapter active; put the SFT adapter back."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        activate_stack(model)


def policy_model(sft_stack, lora: LoraParams):
    """base + SFT adapter (`sft_stack`, as chattune.modeling.loading.stack loads it) + a new adapter, the one trained."""
    check_targets(sft_stack, lora, "dpo")
    disable_dropout_in_model(sft_stack)  # the base's and the frozen SFT adapter's; the new adapter's is added after
    sft_stack.add_adapter("default", lora_config(lora))
    activate_stack(sft_stack)
    lora_under_autocast(sft_stack, float32_sums=False)  # as the reference: equal at step 0, in train or eval mode
    return sft_stack


def reference_model(sft_stack):
    """base + SFT adapter, as a plain model (its LoRA layers stay injected and active): the form TRL expects a
    reference in."""
    model = sft_stack.get_base_model().eval()
    lora_under_autocast(model, float32_sums=False)  # as the policy's training forward, which TRL compares it with
    return model


def pair_lengths(pairs) -> list[int]:
    """What each pair costs in a padded batch: its prompt and the longer of its two replies (TRL pads chosen and
    rejected rows of a batch to one width)."""
    return [len(prompt) + max(len(chosen), len(rejected))
            for prompt, chosen, rejected in zip(pairs["prompt_ids"], pairs["chosen_ids"], pairs["rejected_ids"])]


class TokenizedDPOTrainer(DPOTrainer):
    """DPOTrainer on pairs already turned into ids by chattune.modeling.prompt.encode (TRL would re-tokenize them
    its own way: no BOS, and the text after the EOS kept). Pairs are drawn in whole steps of similar length, alike
    on any number of processes (chattune.training.batching.WholeSteps; transformers' own grouping cannot find a pair's length:
    it looks for input_ids)."""

    def _prepare_dataset(self, dataset, *args, **kwargs):
        return dataset

    def _get_train_sampler(self, train_dataset=None):
        return whole_steps(self, pair_lengths(self.train_dataset if train_dataset is None else train_dataset))

    def _get_eval_sampler(self, eval_dataset):
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_eval_sampler(eval_dataset)
        # as transformers groups evaluation batches, with a generator of its own so evaluating draws nothing
        # from the training's random stream
        return LengthGroupedSampler(self.args.eval_batch_size, lengths=pair_lengths(eval_dataset),
                                    generator=torch.Generator().manual_seed(self.args.seed))
