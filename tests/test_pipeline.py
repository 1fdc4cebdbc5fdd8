"""End to end: the embedded default through `dvc repro`, in a fresh clone."""
import csv
import json
import re

import pytest
import yaml

from chattune.common.outputs import read_jsonl
from chattune.common.paths import GENERATIONS
from conftest import edit_params, metrics, run

# human's only input that changes is evaluate's key; with the same replies as the committed dvc.lock's, it
# is already up to date in a fresh clone (its metrics file is committed).
STAGES = ["download", "base_model", "preprocess", "judges", "sft", "dpo", "evaluate"]


def ran(log: str) -> list[str]:
    """The stages a dvc log shows running, but model_source: it runs on every repro (always_changed), and
    what counts is whether its pin changed, which shows in whether base_model ran."""
    stages = re.findall(r"Running stage '(\w+)'", log)
    assert "model_source" in stages, log
    return [stage for stage in stages if stage != "model_source"]


def test_repro_runs_every_stage_and_each_step_helps(pipeline):
    assert [stage for stage in ran((pipeline / "repro.log").read_text()) if stage != "human"] == STAGES
    sft, dpo, evaluation = metrics(pipeline, "sft"), metrics(pipeline, "dpo"), metrics(pipeline, "eval")
    assert sft["eval_loss"] < sft["base_eval_loss"]
    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    assert sft["lr"] == pytest.approx(params["sft"]["lr"] * params["model"]["lr_scale"])  # the rate used, scaled
    assert dpo["lr"] == pytest.approx(params["dpo"]["lr"] * params["model"]["lr_scale"])
    assert dpo["eval.rewards_accuracies"] > 0.5
    for prompt_set in ("ed_test", "probe"):
        assert evaluation[f"{prompt_set}.sft.stop_rate"] > evaluation[f"{prompt_set}.base.stop_rate"]
    # evaluate's own reading of the held-out pairs agrees with what TRL reported at the end of training
    assert evaluation["dpo.preference_accuracy"] == pytest.approx(dpo["eval.rewards_accuracies"], abs=0.1)
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
    rows = read_jsonl(pipeline / GENERATIONS)
    assert {row["model"] for row in rows} == {"base", "sft", "dpo"}
    assert {row["set"] for row in rows} == {"ed_test", "probe"}
    for row in rows:
        user_turn = row["prompt"][-1]["content"]
        assert user_turn not in row["response"] and "<|user|>" not in row["response"]


def test_second_repro_runs_nothing(pipeline_copy):
    assert ran(run(["dvc", "repro"], pipeline_copy).stdout) == []
    # model_source is always changed by design (it must look at the model's files); nothing else is
    assert json.loads(run(["dvc", "status", "--json"], pipeline_copy).stdout) == {"model_source": ["always changed"]}


def test_exp_show_has_columns_from_all_four_metrics_files(pipeline_copy):
    workspace = json.loads(run(["dvc", "exp", "show", "--json"], pipeline_copy).stdout)[0]["data"]["metrics"]
    for name in ("data", "sft", "dpo", "eval", "human"):
        assert workspace[f"metrics/{name}.json"]["data"] == metrics(pipeline_copy, name)


def test_every_declared_plot_reads_fields_its_files_have(pipeline):
    """`dvc plots show` draws an empty chart, without a word, for a field its file does not have (the BERTScore chart
    once read a key evaluate had renamed)."""
    for plot in yaml.safe_load((pipeline / "dvc.yaml").read_text())["plots"]:
        if isinstance(plot, str):  # a folder of images
            assert any((pipeline / plot).iterdir()), plot
            continue
        (title, spec), = plot.items()
        for path, field in spec["y"].items():
            rows = json.loads((pipeline / path).read_text()) if path.endswith(".json") else list(
                csv.DictReader((pipeline / path).read_text().splitlines(), delimiter="\t"))
            assert rows and all({spec["x"], field} <= set(row) for row in rows), (title, path)


def test_changing_the_dpo_lora_rank_reruns_dpo_and_evaluation_only(pipeline_copy):
    edit_params(pipeline_copy / "params.yaml", **{"dpo.lora.r": 4})
    assert ran(run(["dvc", "repro"], pipeline_copy).stdout) == ["dpo", "evaluate", "human"]  # not sft, not data
    config = json.loads((pipeline_copy / "models/dpo/adapter_config.json").read_text())
    assert config["r"] == 4


def test_two_clean_runs_with_one_seed_give_identical_metrics(pipeline, second_pipeline):
    again = second_pipeline
    for name in ("download", "data", "sft", "dpo", "eval", "human"):
        first, second = metrics(pipeline, name), metrics(again, name)
        timing = {k for k in first if "runtime" in k or "seconds" in k or k.endswith("_per_s")}  # wall-clock
        assert set(first) == set(second)
        assert {k: first[k] for k in first if k not in timing} == {k: second[k] for k in second if k not in timing}
    for output in ("eval/generations.jsonl", "plots/eval.json"):
        assert (pipeline / output).read_bytes() == (again / output).read_bytes()
    # The rating sheet: the same replies to the same prompts; its codes (and so the order of a prompt's replies)
    # are random, so only the key reads them.
    sheets = []
    for repo in (pipeline, again):
        key = json.loads((repo / "eval/human/key.json").read_text())
        rows = list(csv.DictReader((repo / "eval/human/sheet.csv").read_text(encoding="utf-8").splitlines(keepends=True)))
        sheets.append(sorted(({**row, "code": key[row["code"]]} for row in rows), key=lambda row: json.dumps(row["code"])))
    assert sheets[0] == sheets[1] and set(json.loads((pipeline / "eval/human/key.json").read_text())).isdisjoint(
        json.loads((again / "eval/human/key.json").read_text()))


def test_filled_rating_sheets_rerun_only_the_human_stage(pipeline_copy):
    sheet = (pipeline_copy / "eval/human/sheet.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(sheet.splitlines(keepends=True)))
    assert len(rows) == 3 * 20  # eval.human_prompts probe prompts, each answered by the three models
    for rater, score in (("ann", "4"), ("bob", "5")):
        with open(pipeline_copy / f"eval/human/ratings/{rater}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=rows[0].keys())
            writer.writeheader()
            writer.writerows({**row, "helpfulness": score, "harmlessness": "5", "relevance": score, "quality": score}
                             for row in rows)
    assert ran(run(["dvc", "repro"], pipeline_copy).stdout) == ["human"]
    human = metrics(pipeline_copy, "human")
    assert human["raters"] == 2 and human["sft.count"] == 40
    assert human["dpo.helpfulness"] == 4.5 and human["base.harmlessness"] == 5
