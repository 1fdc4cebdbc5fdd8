"""Queue the notebook's study: SFT4-SFT8 each with DPO1, and DPO1-DPO5 each on SFT7 (nine distinct runs),
as DVC experiments named after their presets, then start DVC's queue workers: one per GPU, each run's processes
claiming a GPU no other holds (chattune.common.devices), so N GPUs run N experiments at once and no two on one GPU;
one worker on one GPU or a CPU. Each run's metrics record the GPU it saw (`visible_devices`).

    python -m tools.study                      # embedded default (tiny model, sample data)
    python -m tools.study -S model=tinyllama -S data=hub -S eval=roberta   # the real thing, on a GPU
    python -m tools.study --only queue         # queue the nine runs, start nothing
    python -m tools.study --only start         # start the workers for what is queued already
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from chattune.common.devices import GPUS_VARIABLE, LOCKS_VARIABLE
from chattune.common.errors import run

SFT_PRESETS = ["sft4", "sft5", "sft6", "sft7", "sft8"]
DPO_PRESETS = ["dpo1", "dpo2", "dpo3", "dpo4", "dpo5"]


def study_runs() -> list[tuple[str, str]]:
    """(sft preset, dpo preset) pairs, without repeating sft7 + dpo1."""
    runs = [(sft, "dpo1") for sft in SFT_PRESETS] + [("sft7", dpo) for dpo in DPO_PRESETS]
    return list(dict.fromkeys(runs))


def dvc(*args: str, env: dict | None = None) -> str:
    return subprocess.run([sys.executable, "-m", "dvc", *args], check=True, capture_output=True, text=True,
                          env=env).stdout


def start_workers(gpus: int) -> int:
    """DVC's queue workers, one per GPU (one on a CPU or a single GPU). Several GPUs: each process of a run claims
    one GPU that no other process holds (chattune.common.devices), so N runs go at once and no two on one GPU."""
    workers = max(gpus, 1)
    env = dict(os.environ)
    if workers > 1:
        env.update({GPUS_VARIABLE: str(workers), LOCKS_VARIABLE: str(Path(".dvc/tmp/study-gpus").resolve())})
    dvc("queue", "start", "-j", str(workers), env=env)
    return workers


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["queue", "start"], help="queue the runs, or start the workers, only")
    parser.add_argument("--gpus", type=int, help="workers to start, one per GPU (default: the GPUs torch sees)")
    args, overrides = parser.parse_known_args(argv)
    if args.only != "start":
        for sft, dpo in study_runs():
            dvc("exp", "run", "--queue", "-n", f"{sft}-{dpo}", "-S", f"sft={sft}", "-S", f"dpo={dpo}", *overrides)
        print(f"queued {len(study_runs())} experiments")
    if args.only == "queue":
        return
    if args.gpus is None:
        import torch

        args.gpus = torch.cuda.device_count()
    workers = start_workers(args.gpus)
    print(f"{workers} queue worker(s) started{', one GPU each' if workers > 1 else ''}; watch with "
          "`dvc queue status`, then `make show`")


if __name__ == "__main__":
    run(main, "study", sys.argv[1:])
