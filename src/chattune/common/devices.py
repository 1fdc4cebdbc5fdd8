"""One GPU for each run of a study (tools.study): N queue workers on N GPUs, and no two runs on one GPU.

tools.study starts DVC's queue workers with CHATTUNE_STUDY_GPUS=N and CHATTUNE_STUDY_LOCKS=<a folder>. Every stage
or tool process of an experiment then claims, before torch touches CUDA, the first of the N GPUs whose lock file no
other process holds (an exclusive file lock, held until the process ends), and shows itself that GPU alone
(CUDA_VISIBLE_DEVICES). With N workers there is always one free; a process that finds none waits for one. The
metrics record the GPU each stage saw (chattune.modeling.placement.device_record).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from filelock import FileLock, Timeout

GPUS_VARIABLE, LOCKS_VARIABLE = "CHATTUNE_STUDY_GPUS", "CHATTUNE_STUDY_LOCKS"
held: list = []  # the lock of this process's GPU: the process ending releases it


def claim(gpus: int, locks: Path, poll_s: float = 1.0) -> int:
    """The first of `gpus` GPUs no other process holds, held by this one from now on (filelock, as the rating and
    vote files' locks: chattune.common.outputs.locked)."""
    locks.mkdir(parents=True, exist_ok=True)
    while True:
        for gpu in range(gpus):
            lock = FileLock(locks / f"gpu-{gpu}.lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            held.append(lock)
            return gpu
        time.sleep(poll_s)


def claim_study_gpu() -> None:
    """In a run of a study over several GPUs (the variables above set, no GPU chosen yet): claim one and show this
    process that one alone."""
    gpus = os.environ.get(GPUS_VARIABLE)
    if gpus and LOCKS_VARIABLE in os.environ and "CUDA_VISIBLE_DEVICES" not in os.environ and not held:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(claim(int(gpus), Path(os.environ[LOCKS_VARIABLE])))
