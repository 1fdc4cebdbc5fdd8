"""The training stages run unchanged on several processes and machines. `accelerate launch` starts multi-GPU runs
through torchrun; here it starts two "machines" on one host, one CPU process each, which form a gloo group."""
import json
import os
import socket
import subprocess
from types import SimpleNamespace

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file

from chattune.modeling.loading import load_model
from conftest import ROOT, VENV_PATH, edit_params
from stages import base_model, download, dpo, model_source, preprocess, sft


@pytest.mark.parametrize("name, kind, machines", [("ddp", "MULTI_GPU", 1), ("fsdp", "FSDP", 1),
                                                  ("multinode", "MULTI_GPU", 2)])
def test_shipped_accelerate_configs_load(name, kind, machines):
    config = load_config_from_file(str(ROOT / "conf/accelerate" / f"{name}.yaml"))
    assert config.distributed_type == kind and config.num_machines == machines
    assert config.num_processes == (16 if machines == 2 else 2)


def on_two_machines(project, module: str) -> str:
    """`python -m module` as conf/accelerate/multinode.yaml runs it on two machines of one process each (machine
    ranks 0 and 1), both on this host: they meet at 127.0.0.1 and form one gloo group."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    machines = [subprocess.Popen(
        ["accelerate", "launch", "--config_file", str(ROOT / "conf/accelerate/multinode.yaml"), "--num_processes", "2",
         "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
         "--mixed_precision", "no", "-m", module], cwd=project, env={**os.environ, "PATH": VENV_PATH},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [machine.communicate(timeout=600)[0] for machine in machines]
    assert [machine.returncode for machine in machines] == [0, 0], "\n".join(log[-3000:] for log in logs)
    return logs[0]


def curve(project, stage: str) -> dict[int, float]:
    """A stage's training loss as dvclive logged it, by step."""
    lines = (project / f"dvclive/{stage}/plots/metrics/loss.tsv").read_text().splitlines()[1:]
    return {int(step): float(loss) for step, loss in (line.split("\t") for line in lines)}


def test_two_processes_train_one_processs_recipe_and_give_valid_adapters(project):
    """The preset states the examples a step trains; two gloo processes, started as two machines of one process each
    (conf/accelerate/multinode.yaml, machine ranks 0 and 1), each train half of every step, so their run is one
    process's run: the same steps, the same loss
    curve up to float rounding. The notebook's DataParallel doubled the step instead. (LoRA dropout is off: each
    process draws its own dropout masks, which no split of a step can make equal.)"""
    edit_params(project / "params.yaml", **{"sft.train_size": 48, "eval.sft_eval_size": 8, "sft.epochs": 1,
                                            "sft.checkpoint_steps": 2, "sft.examples_per_step": 16,
                                            "dpo.max_steps": 4, "dpo.warmup_steps": 1, "dpo.checkpoint_steps": 2,
                                            "dpo.examples_per_step": 8, "dpo.batch_size": 2,
                                            "sft.lora.dropout": 0.0, "dpo.lora.dropout": 0.0})
    download.main()
    model_source.main()
    base_model.main()
    preprocess.main()
    alone = {}
    for stage in (sft, dpo):  # one process: this one
        stage.main()
        name = stage.__name__.rsplit(".", 1)[1]
        alone[name] = json.loads((project / f"metrics/{name}.json").read_text()), curve(project, name)
    for stage, steps, split in (("sft", 3, (2, 2, 4)), ("dpo", 4, (2, 2, 2))):
        log = on_two_machines(project, f"stages.{stage}")
        metrics = json.loads((project / f"metrics/{stage}.json").read_text())
        # 48 examples, 16 a step: 3 steps on one process or two (the notebook's DataParallel made it 16 x 2)
        assert metrics["steps"] == alone[stage][0]["steps"] == steps, log[-2000:]
        assert (metrics["processes"], metrics["grad_accum"], metrics["micro_batch"]) == split
        assert alone[stage][0]["processes"] == 1 and alone[stage][0]["grad_accum"] == 2 * split[1]
        assert metrics["examples_per_step"] == alone[stage][0]["examples_per_step"]
        together = curve(project, stage)
        assert together.keys() == alone[stage][1].keys()
        assert together == pytest.approx(alone[stage][1], rel=1e-4), (together, alone[stage][1])
    assert json.loads((project / "metrics/sft.json").read_text())["eval_loss"] < alone["sft"][0]["base_eval_loss"]
    base, tuned = load_model("base", torch.float32), load_model("dpo", torch.float32)  # checks each adapter sits on the model it was trained on
    ids = torch.tensor([[1, 50, 60, 70]])
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, tuned(ids).logits)
    # One writer: one curve, one checkpoint folder emptied after success.
    steps = (project / "dvclive/sft/plots/metrics/loss.tsv").read_text().splitlines()[1:]
    assert len(steps) == len({line.split("\t")[0] for line in steps})
    assert not any((project / "checkpoints/sft").iterdir())


def test_only_the_main_process_opens_the_curves(project, monkeypatch):
    """Every process of a run builds the trainer's callbacks, but a fresh dvclive Live empties its folder: two
    processes emptying dvclive/dpo/ at once crashed one of them (FileNotFoundError) under load. A process other
    than the main one leaves the curves alone, and logs nothing."""
    from transformers import TrainerState

    from chattune.training import callbacks as training

    curves = sorted(path for path in (project / "dvclive/dpo").rglob("*") if path.is_file())
    assert curves  # the committed curves of the last run
    monkeypatch.setattr(training, "PartialState", lambda cpu: SimpleNamespace(is_main_process=False))
    callback = training.live_callback("dpo", resume=False)
    assert callback.live is None
    callback.on_log(None, TrainerState(global_step=1, is_world_process_zero=False), None, logs={"loss": 1.0})
    assert sorted(path for path in (project / "dvclive/dpo").rglob("*") if path.is_file()) == curves


def test_a_launched_process_leaves_its_process_group_at_exit(monkeypatch, tmp_path):
    """A gloo group left to the interpreter's teardown aborted a finished process (exit -6) now and then: a process
    a launcher started destroys its group at exit."""
    from chattune.training import launch as training

    exits = []
    monkeypatch.setattr(training.atexit, "register", exits.append)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("LOCAL_RANK", "0")
    training.on_every_gpu("stages.sft")
    assert exits == [training.leave_process_group]
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    exits[0]()
    assert not torch.distributed.is_initialized()
    exits[0]()  # and once no group is left, does nothing


@pytest.mark.parametrize("gpus, launched", [(2, True), (1, False), (0, False)])
def test_a_stage_seeing_several_gpus_relaunches_itself_on_each(monkeypatch, gpus, launched):
    """Kaggle's two T4s: `dvc repro` starts `python -m stages.sft` in one process that sees both GPUs, where HF
    Trainer would fall into nn.DataParallel (TRL refuses it). The stage starts itself again through accelerate,
    one process per GPU, and exits with that run's status; a process a launcher started (LOCAL_RANK) goes on."""
    from chattune.training import launch as training

    calls = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(training.subprocess, "run", lambda cmd: calls.append(cmd) or SimpleNamespace(returncode=3))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    if launched:
        assert training.on_every_gpu("stages.sft") == 3  # the launched run's status, which the stage exits with
        assert calls[0][1:] == ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                                "--num_machines", "1", "-m", "stages.sft"]
    else:
        assert training.on_every_gpu("stages.sft") is None
        assert calls == []
    monkeypatch.setenv("LOCAL_RANK", "0")  # started by the launcher: train here
    training.on_every_gpu("stages.dpo")
    assert len(calls) == int(launched)
