"""harness.real_run: the pipeline's own stages in one process, without dvc, on rows laid out for data=local; what a
lent GPU runs with SmolLM2 at the recipes' scale, run here on the tiny model with a few steps."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from chattune.common.outputs import write_json as real_run_write
from conftest import ROOT
from harness import real_run

# the recipe's presets, as harness.real_run's docstring and the committed file's header name them
RECIPE = ["model=smollm2", "data=local", "sft=sft7", "dpo=dpo1", "eval=minilm"]
# the embedded default on a few rows and steps
SMALL = {"data.source": "local", "sft.train_size": 16, "sft.epochs": 1, "sft.examples_per_step": 8,
         "sft.batch_size": 8, "sft.checkpoint_steps": 2, "dpo.train_size": 16, "dpo.max_steps": 3,
         "dpo.examples_per_step": 4, "dpo.batch_size": 4, "dpo.checkpoint_steps": 3, "dpo.warmup_steps": 0, "eval.sft_eval_size": 8,
         "eval.dpo_eval_size": 8, "eval.test_size": 6, "eval.max_new_tokens": 8, "eval.bootstrap_samples": 50,
         "eval.human_prompts": 2}


def test_the_recipe_file_is_the_composition_of_its_presets(tmp_path):
    # composed in a process of its own (Hydra's global state), as `dvc exp run -S ...` would compose it
    out = tmp_path / "composed.yaml"
    code = ("import sys; from pathlib import Path; from chattune.common.params import compose; "
            "compose(sys.argv[2:], output=Path(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", code, str(out), *RECIPE, "data.local_dir=rows"], cwd=ROOT, check=True)
    committed = yaml.safe_load((ROOT / real_run.RECIPE).read_text())
    assert committed == yaml.safe_load(out.read_text())
    assert (committed["sft"]["preset"], committed["dpo"]["preset"]) == ("sft7", "dpo1")
    assert " ".join(RECIPE) in (ROOT / real_run.RECIPE).read_text()


def test_every_stage_runs_in_process_and_the_result_holds_curves_metrics_and_replies(project, monkeypatch):
    rows = project / "data/sample"  # the sample is laid out as data=local reads a folder
    settings = [f"--set={key}={value}" for key, value in SMALL.items()]
    written = []  # (path, what was on disk) at every write of the result (not of the record in the run's folder)
    monkeypatch.setattr(real_run, "write_json", lambda path, data: (
        real_run_write(path, data),
        Path(path).name != real_run.RECORD and written.append((path, json.loads(path.read_text())))))
    path = real_run.main(["--rows", str(rows), "--params", "params.yaml", *settings, "--out", str(project / "out")])
    result = json.loads(path.read_text())
    # Written as each stage ends: a run cut short after dpo would have left sft's and dpo's metrics and curves.
    assert {written_path for written_path, _ in written} == {path}
    assert [set(data["stages"]) for _, data in written[:-1]] == [set(real_run.STAGES[:n]) for n in range(1, 10)]
    after_dpo = written[real_run.STAGES.index("dpo")][1]
    assert not after_dpo["finished"] and "eval" not in after_dpo["metrics"] and "examples" not in after_dpo
    assert after_dpo["metrics"]["dpo"] == result["metrics"]["dpo"] and after_dpo["curves"]["dpo"]
    assert result["finished"] and written[-1][1] == result
    assert sorted(result["stages"]) == sorted(["model_source", "base_model", "download", "preprocess", "judges",
                                               "sft", "dpo", "evaluate", "human"])
    assert all(stage["seconds"] > 0 and stage["peak_gib"] is None for stage in result["stages"].values())
    data = result["params"]["data"]
    assert (data["source"], data["local_dir"], data["hub"], data["sft"]["own"]) == ("local", str(rows), None, None)
    assert result["params"]["dpo"]["max_steps"] == 3 and result["dtype"] == "float32"
    assert all(seen.endswith("on cpu") for seen in result["models_seen"])
    metrics = result["metrics"]
    assert metrics["data"]["sft.train.examples"] == 16 and metrics["dpo"]["steps"] == 3
    # The curves are the trainers' own logs (dvclive's, on a machine without dvc): the base model's eval loss at
    # step 0, a training loss at every logged step, the eval loss at the last, as metrics/sft.json has them.
    sft, dpo = result["curves"]["sft"], result["curves"]["dpo"]
    assert (sft[0]["step"], sft[0]["eval_loss"]) == (0, metrics["sft"]["base_eval_loss"])
    assert [point["step"] for point in sft if "loss" in point] == [1, 2]
    assert [point["eval_loss"] for point in sft if "eval_loss" in point][-1] == metrics["sft"]["eval_loss"]
    assert max(point["step"] for point in dpo) == 3 and any("rewards/margins" in point for point in dpo)
    # Example replies: each prompt with the reference and the three models' replies, as evaluate wrote them.
    generations = [json.loads(line) for line in
                   path.with_name(path.stem + "-generations.jsonl").read_text().splitlines()]
    by_key = {(g["set"], g["id"], g["model"]): g["response"] for g in generations}
    assert {e["set"] for e in result["examples"]} == {"probe", "ed_test"}
    for example in result["examples"]:
        for model in ("base", "sft", "dpo"):
            assert example[model] == by_key[example["set"], example["id"], model]
    assert sum(e["set"] == "probe" for e in result["examples"]) == real_run.EXAMPLES["probe"]
    assert not (project / "models").exists()  # the scratch project stays out of the checkout


def test_a_run_killed_in_dpo_continues_in_its_folder_from_the_last_checkpoint(project, capsys):
    """A lent GPU's call ends at its time limit, killing the run: the same command, with the same --workdir, skips
    the stages that finished, resumes dpo from its last checkpoint, and records one whole curve."""
    workdir, out = project / "kept", project / "out"
    args = ["--rows", str(project / "data/sample"), "--params", "params.yaml", "--out", str(out), "--workdir",
            str(workdir), *[f"--set={key}={value}" for key, value in {**SMALL, "dpo.max_steps": 12,
                                                                       "dpo.checkpoint_steps": 2}.items()]]
    first = subprocess.Popen([sys.executable, "-m", "harness.real_run", *args], cwd=project)
    checkpoint = workdir / "checkpoints/dpo/checkpoint-2/complete"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.kill()
    first.wait()
    assert checkpoint.exists(), "the run never reached dpo's first checkpoint"
    before = json.loads((workdir / real_run.RECORD).read_text())
    finished = real_run.STAGES[:real_run.STAGES.index("dpo")]
    assert set(before["stages"]) == set(finished)  # killed within dpo

    path = real_run.main(args)
    printed = capsys.readouterr().out
    result = json.loads(path.read_text())
    assert result["finished"] and set(result["stages"]) == set(real_run.STAGES)
    assert result["finished_by_earlier_processes"] == finished
    assert all(result["stages"][name] == before["stages"][name] for name in before["stages"])  # not run again
    assert "stage: sft: finished by an earlier run" in printed and "dpo: resuming from" in printed
    assert result["metrics"]["dpo"]["steps"] == 12 and result["metrics"]["dpo"]["train_steps_timed"] < 12
    # One curve over both processes: the killed run's points up to its checkpoint, then the resumed run's, with
    # the steps logged as an uninterrupted run logs them (the first, every 5th, the last).
    dpo = result["curves"]["dpo"]
    assert [point["step"] for point in dpo if "loss" in point] == [1, 5, 10, 12]
    assert result["curves"]["sft"] == before["curves"]["sft"] and result["examples"]


def test_a_workdir_that_holds_something_else_is_refused_untouched(project):
    other = project / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    args = ["--rows", str(project / "data/sample"), "--params", "params.yaml", "--out", str(project / "out")]
    with pytest.raises(SystemExit, match="is not empty and holds no run of real_run"):
        real_run.main([*args, "--workdir", str(other)])
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    kept = project / "kept"
    kept.mkdir()
    (kept / real_run.RECORD).write_text(json.dumps({"stages": {"model_source": {"seconds": 1.0}}}))
    (kept / "params.yaml").write_text(yaml.safe_dump({"seed": 1}))
    with pytest.raises(SystemExit, match="holds a run with other params"):
        real_run.main([*args, "--workdir", str(kept)])
    assert sorted(p.name for p in kept.iterdir()) == ["params.yaml", real_run.RECORD]


def test_rows_in_the_wrong_layout_are_named(project):
    try:
        real_run.main(["--rows", str(project / "data"), "--out", str(project / "out")])
    except SystemExit as stop:
        assert "lacks empatheticdialogues/train.csv, human_like_dpo/data.json" in str(stop)
    else:
        raise AssertionError("real_run accepted a folder without the data=local layout")
