"""The SFT trainer: TRL's, drawing whole optimizer steps and measuring the eval loss per reply token."""
from __future__ import annotations

from trl import SFTTrainer

from chattune.training.batching import whole_steps
from chattune.training.settings import reply_token_loss


class StepSFTTrainer(SFTTrainer):
    """SFTTrainer drawing examples in whole steps of similar length, alike on any number of processes
    (chattune.training.batching.WholeSteps), and measuring the eval set's loss per reply token, whatever its batching
    (chattune.training.settings.reply_token_loss)."""

    def _get_train_sampler(self, train_dataset=None):
        rows = self.train_dataset if train_dataset is None else train_dataset
        return whole_steps(self, [len(ids) for ids in rows["input_ids"]])

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval") -> dict[str, float]:
        training = self.model.training
        self.model.eval()  # logged in eval mode too: TRL files what it logs under the model's mode
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in reply_token_loss(self, eval_dataset).items()}
        self.log(metrics)
        self.model.train(training)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
