"""Kill each stage at a random point (SIGTERM, then SIGKILL): DVC must not take it as done, and every output
is either absent or whole (identical to the finished run's; the embedded run is deterministic)."""
import hashlib
import json
import os
import random
import signal
import subprocess
import time

import psutil
import pytest
import yaml

from conftest import VENV_PATH, run

# Seconds of each stage's command on 2 cores on the test preset, counted from when dvc starts it; kill times are
# drawn within them. The quick stages finish in a fraction of a second, so their kill lands before, during or
# after the writes.
STAGE_SECONDS = {"download": 0.2, "model_source": 0.3, "base_model": 4.5, "preprocess": 0.2, "judges": 8, "sft": 20,
                 "dpo": 20, "evaluate": 18, "human": 0.1}


def declared_outputs(repo, stage: str) -> list[str]:
    """The stage's outputs that must never be partial: outs and metrics, but not the persisted
    checkpoints and curves, which are kept across kills on purpose (to resume)."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage]
    found = []
    for entry in spec.get("outs", []) + spec.get("metrics", []):
        path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        if not options.get("persist"):
            found.append(path)
    return found


def snapshot(repo, path: str):
    """None if absent; else a digest per file (metrics JSON without its wall-clock fields)."""
    target = repo / path
    if not target.exists():
        return None
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    digests = {}
    for file in files:
        if file.suffix == ".json" and file.parent.name == "metrics":
            data = json.loads(file.read_text())
            digests[str(file.relative_to(repo))] = {k: v for k, v in data.items() if not (
                "runtime" in k or "seconds" in k or k.endswith("_per_s"))}  # wall-clock, as test_pipeline.py reads
        else:
            digests[str(file.relative_to(repo))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests


def wait_for_command(repro: subprocess.Popen, stage: str, timeout: float = 60) -> None:
    """Return once dvc has started the stage's command (or has already finished)."""
    parent, deadline = psutil.Process(repro.pid), time.monotonic() + timeout
    while time.monotonic() < deadline and repro.poll() is None:
        for child in parent.children(recursive=True):
            try:
                if f"stages.{stage}" in " ".join(child.cmdline()):
                    return
            except psutil.Error:
                continue
        time.sleep(0.01)
    assert repro.poll() is not None, f"the {stage} command never started"


def end(repro: subprocess.Popen, grace: float = 2.0) -> None:
    """SIGTERM the run's process group (dvc and the stage's command), SIGKILL whatever is left after
    `grace` seconds, and return once no process of the group remains."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(repro.pid, sig)
        except ProcessLookupError:
            return  # it had already finished
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            repro.poll()  # reap dvc, or its zombie keeps the group alive
            try:
                os.killpg(repro.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
    raise AssertionError("the killed run's processes did not exit")


@pytest.mark.parametrize("stage", list(STAGE_SECONDS))
def test_a_killed_stage_is_not_taken_as_done_and_leaves_nothing_partial(pipeline_copy, stage):
    repo = pipeline_copy
    outputs = declared_outputs(repo, stage)
    finished = {path: snapshot(repo, path) for path in outputs}
    delay = random.Random(f"kill {stage}").uniform(0, STAGE_SECONDS[stage])  # seeded: a failure reproduces
    repro = subprocess.Popen(["dvc", "repro", "--force", "--single-item", stage], cwd=repo, start_new_session=True,
                             env={**os.environ, "PATH": VENV_PATH}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_command(repro, stage)
    time.sleep(delay)
    end(repro)

    after = {path: snapshot(repo, path) for path in outputs}
    for path in outputs:
        assert after[path] in (None, finished[path]), f"{stage}: {path} is partial after the kill at {delay:.1f} s"
    if yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage].get("always_changed"):
        return  # model_source: dvc status lists it whatever happened, so it says nothing about the kill
    status = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    assert stage in status or after == finished, f"{stage} killed at {delay:.1f} s but dvc status says up to date"
