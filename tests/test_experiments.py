"""Presets as DVC experiments: the study queue, a queued pair run for real, and the comparison report."""
import json
import re
import time

import matplotlib.image
import yaml

from chattune.common.params import compose
from chattune.experiments import flatten
from conftest import ROOT, run
from tools import show
from tools.study import study_runs


def queue_settled(repo, timeout_s: float = 600) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        time.sleep(3)
    raise AssertionError(f"queue still busy after {timeout_s}s:\n{status}")


def named_experiments(repo) -> dict[str, dict]:
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    return {exp["name"]: exp["data"] for baseline in shown for group in baseline.get("experiments") or []
            for exp in group["revs"] if exp.get("name")}


def test_study_queues_the_nine_distinct_runs_named_after_their_presets(pipeline_copy):
    # the notebook's study: each SFT preset under DPO1, each DPO preset on SFT7, sft7 + dpo1 once
    assert study_runs() == [("sft4", "dpo1"), ("sft5", "dpo1"), ("sft6", "dpo1"), ("sft7", "dpo1"), ("sft8", "dpo1"),
                            ("sft7", "dpo2"), ("sft7", "dpo3"), ("sft7", "dpo4"), ("sft7", "dpo5")]
    run(["python", "-m", "tools.study", "--only", "queue"], pipeline_copy)
    queued = named_experiments(pipeline_copy)
    assert set(queued) == {f"{sft}-{dpo}" for sft, dpo in study_runs()}
    params = {name: data["params"]["params.yaml"]["data"] for name, data in queued.items()}
    assert params["sft6-dpo1"]["sft"]["train_size"] == 5000 and params["sft6-dpo1"]["dpo"]["lr"] == 5e-6
    assert params["sft7-dpo4"]["dpo"]["lora"]["target_modules"] == ["q_proj", "v_proj"]
    run(["dvc", "queue", "remove", "--all"], pipeline_copy)


def test_two_presets_run_from_the_queue_and_compare_side_by_side(pipeline_copy):
    for preset in ("dpo2", "dpo5"):  # identical but for the learning rate
        run(["dvc", "exp", "run", "--queue", "-n", f"sft7-{preset}", "-S", f"dpo={preset}", "-S", "dpo.max_steps=2",
             "-S", "dpo.warmup_steps=1"],
            pipeline_copy)
    # One that fails: its raw files are missing, so download stops.
    run(["dvc", "exp", "run", "--queue", "-n", "broken", "-S", "data=local", "-S", "data.local_dir=/nonexistent"],
        pipeline_copy)
    # Two queue workers, as on a machine with two GPUs (the count mocked): each shown only its own GPU.
    started = run(["python", "-m", "tools.study", "--only", "start", "--gpus", "2"], pipeline_copy).stdout
    assert "2 queue worker(s) started, one GPU each" in started
    status = queue_settled(pipeline_copy)
    assert status.count("Success") == 2 and status.count("Failed") == 1

    exps = named_experiments(pipeline_copy)
    lr = {name: exps[name]["params"]["params.yaml"]["data"]["dpo"]["lr"] for name in ("sft7-dpo2", "sft7-dpo5")}
    assert lr == {"sft7-dpo2": 5e-6, "sft7-dpo5": 4e-6}
    margins = {name: exps[name]["metrics"]["metrics/dpo.json"]["data"]["eval.rewards_margins"] for name in lr}
    assert margins["sft7-dpo2"] != margins["sft7-dpo5"]
    # Every stage of every run records the one GPU it claimed (tests/test_devices.py: no two at once on one).
    for name in lr:
        for stage in ("dpo", "eval"):
            assert exps[name]["metrics"][f"metrics/{stage}.json"]["data"]["visible_devices"] in ("0", "1")

    run(["python", "-m", "tools.compare"], pipeline_copy)
    report = (pipeline_copy / "reports/compare.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"experiment", "sft7-dpo2", "sft7-dpo5", "broken"}
    # The failed run shows as failed, with its stage, and none of the numbers dvc exp show lends it.
    cells = [cell.strip() for cell in rows["broken"].split("|")[2:-1]]
    assert cells[0] == "FAILED in stage `download`"
    header = [cell.strip() for cell in rows["experiment"].split("|")[2:-1]]
    assert all(cells[header.index(title)] == "–" for title in ("SFT eval loss", "DPO reward acc", "BLEU sft/dpo"))
    assert "| 5e-06 |" in rows["sft7-dpo2"] and "| 4e-06 |" in rows["sft7-dpo5"]
    assert f"{margins['sft7-dpo2']:.3f}" in rows["sft7-dpo2"]
    for chart in ("eval_loss", "reward_accuracy", "bleu", "bertscore"):
        image = matplotlib.image.imread(pipeline_copy / "reports" / f"{chart}.png")
        assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0  # a drawn chart, not a blank

    # The first view: the knobs that differ, the headline numbers and the decided differences, in 120 columns.
    shown = run(["python", "-m", "tools.show"], pipeline_copy).stdout
    lines = shown.splitlines()
    assert max(map(len, lines)) <= 120, shown
    params = shown[shown.index("Params that differ:") : shown.index("Headline numbers")]
    headline = shown[shown.index("Headline numbers") : shown.index("Paired differences")]
    assert {"lr", "max_steps", "source"} <= set(params.split()) and "sft." not in params  # only what differs
    rows = {}
    for line in headline.splitlines()[4:]:  # the first block's rows: experiment, SFT loss, DPO acc and margin, ...
        if line.strip() and not line.startswith(("─", " ")):
            rows.setdefault(line.split()[0], line)
    assert {"workspace", "sft7-dpo2", "sft7-dpo5", "broken"} <= set(rows)
    assert f"{margins['sft7-dpo2']:.3f}" in rows["sft7-dpo2"] and "(failed)" in rows["broken"]
    assert f"{margins['sft7-dpo2']:.3f}" not in rows["broken"] and "–" in rows["broken"]


def test_show_fits_the_nine_study_runs_in_120_columns_and_marks_what_is_decided(pipeline, tmp_path):
    """`make show` after `make study`: nine experiments (and the workspace) with the presets' own params, every
    line within 120 columns; a paired difference whose interval excludes zero is marked with its direction."""
    metrics = {f"{name}.json": json.loads((pipeline / "metrics" / f"{name}.json").read_text())
               for name in ("sft", "dpo", "eval")}
    evaluation = metrics["eval.json"] = dict(metrics["eval.json"])
    for key, (value, low, high) in {"ed_test.sft_minus_base.bertscore_raw_f1": (0.05, 0.01, 0.09),  # a decided rise
                                    "ed_test.dpo_minus_sft.bertscore_raw_f1": (-0.03, -0.05, -0.01),  # a decided fall
                                    "ed_test.dpo_minus_sft.humanlike": (0.02, -0.01, 0.05),  # undecided
                                    # clear of 0, but its classifier failed its check: never decided
                                    "ed_test.sft_minus_base.emotion_accuracy": (0.2, 0.1, 0.3)}.items():
        evaluation.update({key: value, f"{key}_low": low, f"{key}_high": high})
    evaluation["ed_test.emotion_informative"] = False
    found = []
    for name, overrides in [("workspace", [])] + [(f"{sft}-{dpo}", [f"sft={sft}", f"dpo={dpo}"]) for sft, dpo in study_runs()]:
        compose(overrides, output=tmp_path / "params.yaml", conf_dir=ROOT / "conf")
        found.append({"name": name, "failed": False, "params": flatten(yaml.safe_load((tmp_path / "params.yaml").read_text())),
                      **metrics})
    shown = show.render(found)
    assert max(map(len, shown.splitlines())) <= 120, shown
    assert all(f"{sft}-{dpo}" in shown for sft, dpo in study_runs())
    differences = shown[shown.index("Paired differences"):]
    row = next(line for line in differences.splitlines() if line.startswith("sft6-dpo1"))
    cells = row.split()
    assert cells[1:3] == ["+0.050▲", "-0.030▼"] and cells[4] == "+0.020"  # BERTScore s−b, d−s; human-like d−s
    assert cells[5] == "+0.200?"  # emotion s−b: uninformative, whatever its interval
    headline = shown[shown.index("Headline numbers"):shown.index("Paired differences")]
    emotion_cell = next(line for line in headline.splitlines() if line.startswith("sft6-dpo1"))
    assert "?" in emotion_cell and "? marks a learned metric whose classifier failed its own check" in shown
    for key in ("sft.lora.alpha", "dpo.lora.target_modules", "dpo.max_steps"):  # differing params, each shown
        assert key.rsplit(".", 1)[1] in shown


def test_compare_marks_a_learned_metric_whose_classifier_failed_its_check():
    """reports/compare.md: the emotion cells of a run whose emotion classifier did not clear chance say so, and its
    differences are never marked decided, whatever their intervals; the human-like ones, informative, stay as they
    are."""
    from tools.compare import COLUMNS, cell

    scores = {"ed_test.emotion_informative": False, "ed_test.humanlike_informative": True,
              **{f"ed_test.{m}.{metric}": 0.5 for m in ("reference", "base", "sft", "dpo")
                 for metric in ("emotion_accuracy", "humanlike")}, "ed_test.emotion_chance": 0.2,
              **{f"ed_test.{name}.{metric}{end}": value for name in ("sft_minus_base", "dpo_minus_sft")
                 for metric in ("emotion_accuracy", "humanlike") for end, value in (("", 0.2), ("_low", 0.1),
                                                                                     ("_high", 0.3))}}
    record = {"metrics/eval.json": scores}
    cells = {title: cell(record, *spec) for title, *spec in COLUMNS if spec[0] == "metrics/eval.json"}
    assert cells["emotion real/base/sft/dpo (chance)"] == "0.50/0.50/0.50/0.50 (0.20) uninformative"
    assert cells["human-like base/sft/dpo"] == "0.50/0.50/0.50"
    assert cells["emotion sft-base [95% CI]"] == "+0.200? [+0.100, +0.300]"
    assert cells["human-like sft-base [95% CI]"] == "+0.200▲ [+0.100, +0.300]"
