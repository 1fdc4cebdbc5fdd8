"""A study over N GPUs (tools.study, chattune.common.devices): N processes at once get N distinct GPUs, never two on
one, and one that finds none free waits for one; the device count is mocked, the processes and locks are real."""
import os
import subprocess
import sys
import time

CLAIM = ("import os, sys, time; from chattune.common.devices import claim_study_gpu; claim_study_gpu(); "
         "print(os.environ['CUDA_VISIBLE_DEVICES'], time.monotonic(), flush=True); time.sleep(float(sys.argv[1])); "
         "print(time.monotonic(), flush=True)")


def claimer(tmp_path, hold_s: float, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLAIM, str(hold_s)], stdout=subprocess.PIPE, text=True,
                            env={**{k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"},
                                 "CHATTUNE_STUDY_GPUS": "2", "CHATTUNE_STUDY_LOCKS": str(tmp_path / "locks"), **env})


def test_processes_of_a_study_claim_distinct_gpus_and_wait_for_a_free_one(tmp_path):
    first, second = claimer(tmp_path, 3.0), claimer(tmp_path, 3.0)
    time.sleep(1.0)  # both hold their GPU now
    third = claimer(tmp_path, 0.0)
    runs = [process.communicate(timeout=60)[0].split() for process in (first, second, third)]
    assert sorted(run[0] for run in runs[:2]) == ["0", "1"]  # two at once: one GPU each
    gpu, claimed_at = runs[2][0], float(runs[2][1])
    released = min(float(run[2]) for run in runs[:2])
    assert gpu in ("0", "1") and claimed_at >= released - 0.05  # the third waited until one was let go


def test_a_process_outside_a_study_or_given_its_gpu_claims_nothing(tmp_path):
    chosen = claimer(tmp_path, 0.0, CUDA_VISIBLE_DEVICES="5").communicate(timeout=60)[0].split()
    assert chosen[0] == "5" and not (tmp_path / "locks").exists()
