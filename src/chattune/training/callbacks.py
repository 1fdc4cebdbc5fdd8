"""What a trainer logs besides its loss: the curves through dvclive (and the other trackers chosen), the last step's figures, and a clock of training steps only (no evaluation, checkpoints or logging)."""
from __future__ import annotations

import importlib.util
import time

import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import TrainerCallback
from transformers.integrations import DVCLiveCallback, TensorBoardCallback

from chattune.common.errors import ParamsError
from chattune.common.paths import LIVE_DIR, TRACKER_LOGS
from chattune.modeling.placement import cpu_only


class LiveCallback(DVCLiveCallback):
    """transformers' dvclive callback, but stepping by the trainer's global step, so train and eval
    points of one step line up on the same x."""

    def on_log(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # the only process with a Live (live_callback)
            self.live.step = state.global_step
        super().on_log(args, state, control, **kwargs)


def live_callback(stage: str, resume: bool) -> LiveCallback:
    from dvclive import Live  # here, not at the top: harness.gpu_check runs the stages where dvc is not installed

    # Only the main process opens the curves' folder: a fresh Live empties it, and two processes emptying it at
    # once crash on each other's deleted files. The callback logs from the main process alone anyway.
    if not PartialState(cpu=cpu_only()).is_main_process:
        return LiveCallback()
    # dvcyaml=None: the project's dvc.yaml declares the plots; dvclive must not rewrite it.
    # resume=True continues the curves of an interrupted run instead of starting them over.
    return LiveCallback(live=Live(dir=str(LIVE_DIR / stage), resume=resume, dvcyaml=None, save_dvc_exp=False))


def tracker_callbacks(stage: str, report_to: list[str]) -> list[TrainerCallback]:
    """The callbacks this project makes for the trackers in `<stage>.report_to` (transformers makes the others from
    their names: settings.trainer_kwargs): TensorBoard's, writing to logs/tensorboard/<stage>/ from the main process.
    A tracker that is not installed stops the stage here, before any step, naming the key."""
    for name in report_to:
        if importlib.util.find_spec(name) is None:
            raise ParamsError(f"{stage}.report_to: {name} is not installed (pip install {name}, or leave it out)")
    if "tensorboard" not in report_to or not PartialState(cpu=cpu_only()).is_main_process:
        return []
    from torch.utils.tensorboard import SummaryWriter

    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(TRACKER_LOGS / "tensorboard" / stage)))]


class LogLastStep(TrainerCallback):
    """Log the last step as well, so a stage reports the end of training's figures and not those of the last
    multiple of logging_steps (in a 4-step DPO run, step 1, where every reward is still 0)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == state.max_steps:
            control.should_log = True


class TrainClock(TrainerCallback):
    """Seconds spent in optimizer steps (forward, backward, update) by this process, and how many: no
    evaluation, checkpointing or logging, and after a resume only the steps this run made."""

    def __init__(self):
        self.seconds, self.steps, self._start = 0.0, 0, 0.0

    @staticmethod
    def of(trainer) -> "TrainClock":
        return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TrainClock))

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # GPU work is asynchronous: count it when it is done
        return time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += self._now() - self._start
        self.steps += 1


def throughput(dataset: Dataset, passes: float, seconds: float) -> tuple[float, float]:
    """Real (unpadded) tokens and examples per second, for `passes` over `dataset` in `seconds`. A packed row
    (TRL's packing) holds several examples; its `seq_lengths` lists them."""
    tokens = sum(len(ids) for ids in dataset["input_ids"])
    examples = sum(map(len, dataset["seq_lengths"])) if "seq_lengths" in dataset.column_names else len(dataset)
    return (tokens * passes / seconds, examples * passes / seconds) if seconds > 0 else (0.0, 0.0)
