"""End to end: the embedded default through `dvc repro`, in a fresh clone."""
import json
import re

from conftest import cloned_and_reproduced, edit_params, run

STAGES = ["download", "base_model", "preprocess", "sft", "dpo", "evaluate"]


def ran(log: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", log)


def metrics(repo, name: str) -> dict:
    return json.loads((repo / "metrics" / f"{name}.json").read_text())


def test_repro_runs_every_stage_and_each_step_helps(pipeline):
    assert ran((pipeline / "repro.log").read_text()) == STAGES
    sft, dpo, evaluation = metrics(pipeline, "sft"), metrics(pipeline, "dpo"), metrics(pipeline, "eval")
    assert sft["eval_loss"] < sft["base_eval_loss"]
    assert dpo["eval.rewards_accuracies"] > 0.5
    assert evaluation["sft.stop_rate"] > evaluation["base.stop_rate"]
    for adapter in ("sft", "dpo"):
        assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
            p.name for p in (pipeline / "models" / adapter).iterdir()}


def test_row_counts_add_up(pipeline):
    data = metrics(pipeline, "data")
    for prefix in ("ed.train.rows", "ed.valid.rows", "ed.test.rows", "dpo.rows", "sft.train.listener_turns"):
        dropped = sum(v for k, v in data.items() if k.startswith(f"{prefix}.dropped."))
        assert data[f"{prefix}.read"] == data[f"{prefix}.kept"] + dropped
    assert data["dpo.train.pairs"] + data["dpo.eval.pairs"] == data["dpo.rows.kept"]
    lines = (pipeline / "data/processed/sft/train.jsonl").read_text().splitlines()
    assert len(lines) == data["sft.train.examples"]


def test_generations_hold_replies_not_prompts(pipeline):
    rows = [json.loads(line) for line in (pipeline / "eval/generations.jsonl").read_text().splitlines()]
    assert {row["model"] for row in rows} == {"base", "sft", "dpo"}
    for row in rows:
        user_turn = row["prompt"][-1]["content"]
        assert user_turn not in row["response"] and "<|user|>" not in row["response"]


def test_second_repro_runs_nothing(pipeline):
    assert ran(run(["dvc", "repro"], pipeline).stdout) == []
    assert "up to date" in run(["dvc", "status"], pipeline).stdout


def test_exp_show_has_columns_from_all_four_metrics_files(pipeline):
    workspace = json.loads(run(["dvc", "exp", "show", "--json"], pipeline).stdout)[0]["data"]["metrics"]
    for name in ("data", "sft", "dpo", "eval"):
        assert workspace[f"metrics/{name}.json"]["data"] == metrics(pipeline, name)


def test_changing_lora_rank_reruns_training_and_evaluation_only(pipeline_copy):
    edit_params(pipeline_copy / "params.yaml", **{"sft.lora.r": 4})
    assert ran(run(["dvc", "repro"], pipeline_copy).stdout) == ["sft", "dpo", "evaluate"]
    config = json.loads((pipeline_copy / "models/sft/adapter_config.json").read_text())
    assert config["r"] == 4


def test_two_clean_runs_with_one_seed_give_identical_metrics(pipeline, tmp_path):
    again = cloned_and_reproduced(tmp_path / "again")
    for name in ("download", "data", "sft", "dpo", "eval"):
        first, second = metrics(pipeline, name), metrics(again, name)
        timing = {k for k in first if "runtime" in k or k.endswith("_per_s")}  # wall-clock, never equal
        assert set(first) == set(second)
        assert {k: first[k] for k in first if k not in timing} == {k: second[k] for k in second if k not in timing}
    assert (pipeline / "eval/generations.jsonl").read_bytes() == (again / "eval/generations.jsonl").read_bytes()
