"""Queue the notebook's study: SFT4-SFT8 each with DPO1, and DPO1-DPO5 each on SFT7 (nine distinct runs),
as DVC experiments named after their presets. `dvc queue start` then runs them.

    python -m tools.study                      # embedded default (tiny model, sample data)
    python -m tools.study -S model=tinyllama -S data=hub -S eval=roberta   # the real thing, on a GPU
"""
from __future__ import annotations

import subprocess
import sys

from chattune.common.errors import run

SFT_PRESETS = ["sft4", "sft5", "sft6", "sft7", "sft8"]
DPO_PRESETS = ["dpo1", "dpo2", "dpo3", "dpo4", "dpo5"]


def study_runs() -> list[tuple[str, str]]:
    """(sft preset, dpo preset) pairs, without repeating sft7 + dpo1."""
    runs = [(sft, "dpo1") for sft in SFT_PRESETS] + [("sft7", dpo) for dpo in DPO_PRESETS]
    return list(dict.fromkeys(runs))


def main(extra: list[str]) -> None:
    for sft, dpo in study_runs():
        name = f"{sft}-{dpo}"
        subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "--queue", "-n", name, "-S", f"sft={sft}", "-S", f"dpo={dpo}", *extra],
                       check=True)
    print(f"queued {len(study_runs())} experiments; run them with `dvc queue start`, watch with `dvc queue status`")


if __name__ == "__main__":
    run(main, "study", sys.argv[1:])
