"""Running a stage on every GPU of a machine: one process each, relaunched under accelerate, and leaving the process group cleanly."""
from __future__ import annotations

import atexit
import os
import subprocess
import sys

import torch


def on_every_gpu(module: str) -> int | None:
    """Run `python -m module` as one process per GPU (accelerate launch, DDP) when this process sees several GPUs
    and no launcher started it, and return that run's exit status (the stage's main exits with it): `dvc repro` on
    Kaggle's two T4s then trains on both. Left alone, HF Trainer would wrap the model in nn.DataParallel, which
    TRL refuses. Each process takes an equal share of every step (batch_split), so the recipe is the preset's on
    any number of GPUs. None: train in this process."""
    gpus = torch.cuda.device_count()
    if gpus > 1 and "LOCAL_RANK" not in os.environ:
        print(f"{module}: {gpus} GPUs: one process on each (accelerate launch --multi_gpu)", flush=True)
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
                  "--num_machines", "1", "-m", module]
        return subprocess.run(launch).returncode
    if "LOCAL_RANK" in os.environ:  # one of a launcher's processes
        atexit.register(leave_process_group)
    return None


def leave_process_group() -> None:
    """Destroy this process's torch.distributed group before the interpreter tears down: a gloo group left to the
    teardown aborted a process that had finished its work ("terminate called without an active exception")."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
