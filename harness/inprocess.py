"""The DAG's stages run in this process, in a scratch folder, on a machine without dvc (a lent GPU machine has
torch and transformers, and what is carried to it, but no dvc): the stages' own code, each stage timed with its
peak accelerator memory, every model that runs a forward pass recorded with its device, and the trainers' logs
kept as curves. harness.gpu_check and harness.real_run share it.
"""
from __future__ import annotations

import functools
import importlib
import json
import shutil
import time
from pathlib import Path

import torch
import yaml
from transformers import PreTrainedModel, TrainerCallback

from chattune.common.outputs import write_json

STAGES = ["model_source", "base_model", "download", "preprocess", "judges", "sft", "dpo", "evaluate", "human"]
PROJECT_FOLDERS = ("data/sample", "data/eval", "eval/human/ratings", "eval/human/votes")


class ForwardDevices:
    """Every model (a transformers PreTrainedModel) that runs a forward pass inside `with ForwardDevices()`,
    and where its weights were. The hook is global: it is removed on the way out, whatever happened inside."""

    def __enter__(self):
        self.seen: set[tuple[str, str]] = set()
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(self.record)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def record(self, module, _args):
        if isinstance(module, PreTrainedModel):
            self.seen.add((type(module).__name__, next(module.parameters()).device.type))

    def described(self) -> list[str]:
        return sorted(f"{model} on {device}" for model, device in self.seen)


class Curves(TrainerCallback):
    """What a trainer logs, step by step, written to `path` as it comes (dvclive's curves where dvclive cannot run).
    A trainer resumed from a checkpoint (`resume`) continues the curve that its interrupted run began there, as
    dvclive's resume does."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        self.points: list[dict] = json.loads(path.read_text()) if resume and path.exists() else []

    def on_train_begin(self, args, state, control, **kwargs):
        # a resumed trainer starts at its checkpoint's step and logs anew what the interrupted run logged after it
        self.points = [point for point in self.points if point["step"] <= state.global_step]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.points.append({"step": state.global_step, **logs})
            write_json(self.path, self.points)


def curves_in(folder: Path):
    """A `curves` collaborator for the training stages' main(): each logs into a Curves, `folder`/<stage>.json,
    instead of dvclive."""
    folder.mkdir(parents=True, exist_ok=True)

    def callback(stage: str, resume: bool) -> Curves:
        return Curves(folder / f"{stage}.json", resume)

    return callback


def set_dotted(params: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        if not isinstance(params.get(key), dict):
            raise SystemExit(f"params: {dotted}: there is no section {key!r}")
        params = params[key]
    if leaf not in params:
        raise SystemExit(f"params: {dotted} is not a key of the params")
    params[leaf] = value


def composed(params: dict, settings: dict) -> dict:
    """A copy of `params` with the dotted `settings` set."""
    params = yaml.safe_load(yaml.safe_dump(params))
    for dotted, value in settings.items():
        set_dotted(params, dotted, value)
    return params


def scratch_project(root: Path, workdir: Path, params: dict) -> None:
    """The sample data, the probe set, the rating folders, and `params`, in `workdir`."""
    for folder in PROJECT_FOLDERS:
        shutil.copytree(root / folder, workdir / folder)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def timed(step) -> dict:
    """Run `step`; its seconds and peak accelerator memory (None on a CPU)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"seconds": time.perf_counter() - start, "peak_gib": peak}


TRAINING = ("sft", "dpo")  # the stages whose main() takes a `curves` collaborator


def run_stages(names: list[str], curves, replaced: dict | None = None, after=None,
               done: dict | None = None) -> dict[str, dict]:
    """Each stage's main() in order, in the current folder, but those in `done` (their records, from an earlier
    run in the same folder); the training stages log their curves through `curves` (curves_in's); `replaced` runs a
    callable instead of a stage (the GPU check writes its own base model), and `after(runs)` is called as each
    stage ends. Returns each stage's seconds and peak memory."""
    runs = dict(done or {})
    for name in names:
        if name in runs:
            print(f"stage: {name}: finished by an earlier run", flush=True)
            continue
        print(f"stage: {name}", flush=True)
        main = importlib.import_module(f"stages.{name}").main
        step = (replaced or {}).get(name) or (functools.partial(main, curves=curves) if name in TRAINING else main)
        runs[name] = timed(step)
        if after:
            after(runs)
    return runs
