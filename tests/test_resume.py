"""A killed training stage resumes from its last complete checkpoint and ends where an uninterrupted run ends."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from conftest import VENV_PATH, edit_params, run
from stages import base_model, download, model_source, preprocess, sft


def adapter(repo) -> dict:
    return load_file(repo / "models/sft/adapter_model.safetensors")


def test_killed_sft_resumes_and_matches_an_uninterrupted_run(project):
    # 80 examples, 8 a step: 10 steps an epoch, 30 in all, a checkpoint every 15: the kill lands in the middle of
    # the second epoch, whose order the resumed run must draw again to skip exactly the steps it trained
    edit_params(project / "params.yaml", **{"sft.train_size": 80, "sft.examples_per_step": 8,
                                            "sft.checkpoint_steps": 15})
    for stage in (download, model_source, base_model, preprocess, sft):  # in this process; the killed run below is a real one
        stage.main()
    uninterrupted = adapter(project)
    assert list((project / "checkpoints/sft").iterdir()) == []  # emptied after success
    shutil.rmtree(project / "models/sft")  # as DVC does before rerunning a stage

    process = subprocess.Popen([sys.executable, "-m", "stages.sft"], cwd=project, env={**os.environ, "PATH": VENV_PATH},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = project / "checkpoints/sft/checkpoint-15/complete"
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert marker.exists() and not (project / "models/sft").exists()
    # A checkpoint cut off while saving (no marker) must be ignored, not resumed from.
    (project / "checkpoints/sft/checkpoint-20").mkdir(exist_ok=True)
    (project / "checkpoints/sft/checkpoint-20/trainer_state.json").write_text("{ cut off")

    resumed = run(["python", "-m", "stages.sft"], project)
    assert "sft: resuming from checkpoints/sft/checkpoint-15" in resumed.stdout and "sft: eval loss" in resumed.stdout
    # Throughput counts only the 15 steps this run made, over the seconds they took.
    metrics = json.loads((project / "metrics/sft.json").read_text())
    assert metrics["steps"] == 30 and metrics["train_steps_timed"] == 15
    for name, tensor in adapter(project).items():
        assert torch.allclose(tensor, uninterrupted[name], atol=1e-5), name
    steps = [int(line.split("\t")[0]) for line in
             (project / "dvclive/sft/plots/metrics/loss.tsv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == 30  # one continuous curve


def test_checkpoints_of_other_inputs_are_not_resumed(project):
    from chattune.training.checkpoints import resume_point

    run_dir = project / "checkpoints/sft"
    assert resume_point(run_dir, "inputs-a") is None
    (run_dir / "checkpoint-40").mkdir()
    (run_dir / "checkpoint-40/complete").touch()
    assert resume_point(run_dir, "inputs-a") == str(run_dir / "checkpoint-40")
    assert resume_point(run_dir, "inputs-b") is None and not (run_dir / "checkpoint-40").exists()
