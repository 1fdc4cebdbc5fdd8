"""Checkpoints to resume from (only those of the same inputs, and only complete ones), and the adapter saved atomically with its card and the stack it was trained on."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from accelerate import PartialState
from transformers import TrainerCallback

from chattune.common.outputs import atomic_dir
from chattune.common.paths import CHECKPOINTS_DIR
from chattune.modeling.placement import cpu_only
from chattune.modeling.stacks import Level, record_base

COMPLETE = "complete"  # marker written once a checkpoint is fully on disk


class MarkComplete(TrainerCallback):
    """The trainer calls on_save after a checkpoint's every file is written; only then is it usable."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            (Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE).touch()


def inputs_fingerprint(*parts) -> str:
    """sha256 of a run's inputs: params sections (pydantic models), files (paths) and strings."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.read_bytes() if isinstance(part, Path) else
                      part.model_dump_json().encode() if hasattr(part, "model_dump_json") else str(part).encode())
    return digest.hexdigest()


def resume_or_start(stage: str, *inputs) -> tuple[Path, str | None]:
    """The stage's checkpoint folder and the checkpoint to resume from (None: start afresh).

    The folder is fixed and kept by DVC between runs (persist), so a killed run resumes, and every process
    of an `accelerate launch` run shares it; the main process tidies it before the others look."""
    run_dir = CHECKPOINTS_DIR / stage
    with PartialState(cpu=cpu_only()).main_process_first():
        checkpoint = resume_point(run_dir, inputs_fingerprint(*inputs))
    if checkpoint:
        print(f"{stage}: resuming from {checkpoint}")
    return run_dir, checkpoint


def resume_point(run_dir: Path, fingerprint: str) -> str | None:
    """The last complete checkpoint of an interrupted run with the same inputs, or None.

    A run folder left by other inputs is cleared; a checkpoint without its marker (killed while
    saving) is deleted."""
    stamp = run_dir / "inputs.sha256"
    if not stamp.exists() or stamp.read_text() != fingerprint:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        stamp.write_text(fingerprint)
        return None
    checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for partial in [p for p in checkpoints if not (p / COMPLETE).exists()]:
        shutil.rmtree(partial)
    complete = [p for p in checkpoints if (p / COMPLETE).exists()]
    return str(complete[-1]) if complete else None


def save_adapter(trainer, out: Path, below: Level, card) -> None:
    """Write the trained adapter, the tokenizer, its model card (a huggingface_hub ModelCard, in place of PEFT's
    empty template) and a fingerprint of the stack `below` it to `out` atomically, then empty the run's
    checkpoint folder (DVC keeps the folder itself: persist)."""
    with atomic_dir(out) as tmp:
        trainer.model.save_pretrained(tmp, selected_adapters=["default"])  # the trained one, not the SFT beneath
        # PEFT keeps target_modules as a set and writes it in the order of the process's string hashes: sorted,
        # two runs write the same file
        config_path = tmp / "adapter_config.json"
        config = json.loads(config_path.read_text())
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        trainer.processing_class.save_pretrained(tmp)
        card.save(tmp / "README.md")
        record_base(tmp, below)
    run_dir = Path(trainer.args.output_dir)
    shutil.rmtree(run_dir)
    run_dir.mkdir()
