"""Presets as DVC experiments: the study queue, a queued pair run for real, and the comparison report."""
import json
import re
import time

import matplotlib.image

from conftest import run
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
    assert len(study_runs()) == 9 and len(set(study_runs())) == 9
    run(["python", "-m", "tools.study"], pipeline_copy)
    queued = named_experiments(pipeline_copy)
    assert set(queued) == {f"{sft}-{dpo}" for sft, dpo in study_runs()}
    params = {name: data["params"]["params.yaml"]["data"] for name, data in queued.items()}
    assert params["sft6-dpo1"]["sft"]["train_size"] == 5000 and params["sft6-dpo1"]["dpo"]["lr"] == 5e-6
    assert params["sft7-dpo4"]["dpo"]["lora"]["target_modules"] == ["q_proj", "v_proj"]
    run(["dvc", "queue", "remove", "--all"], pipeline_copy)


def test_two_presets_run_from_the_queue_and_compare_side_by_side(pipeline_copy):
    for preset in ("dpo2", "dpo5"):  # identical but for the learning rate
        run(["dvc", "exp", "run", "--queue", "-n", f"sft7-{preset}", "-S", f"dpo={preset}", "-S", "dpo.max_steps=20"],
            pipeline_copy)
    # One that fails: its raw files are missing, so download stops.
    run(["dvc", "exp", "run", "--queue", "-n", "broken", "-S", "data=local", "-S", "data.local_dir=/nonexistent"],
        pipeline_copy)
    run(["dvc", "queue", "start", "-j", "1"], pipeline_copy)
    status = queue_settled(pipeline_copy)
    assert status.count("Success") == 2 and status.count("Failed") == 1

    exps = named_experiments(pipeline_copy)
    lr = {name: exps[name]["params"]["params.yaml"]["data"]["dpo"]["lr"] for name in ("sft7-dpo2", "sft7-dpo5")}
    assert lr == {"sft7-dpo2": 5e-6, "sft7-dpo5": 4e-6}
    margins = {name: exps[name]["metrics"]["metrics/dpo.json"]["data"]["eval.rewards_margins"] for name in lr}
    assert margins["sft7-dpo2"] != margins["sft7-dpo5"]

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

    # The first view: the knobs that differ and the headline numbers, in a 200-column terminal.
    shown = run(["python", "-m", "tools.show"], pipeline_copy).stdout.splitlines()
    assert max(map(len, shown)) <= 200, "\n".join(shown)
    header = shown[1].split()  # titles span two rows: "dpo." over "lr"
    assert {"lr", "max_steps", "source"} <= set(header) and "sft." not in shown[0]  # only what differs
    lines = {line.split()[0]: line for line in shown[3:]}
    assert {"workspace", "sft7-dpo2", "sft7-dpo5", "broken"} <= set(lines)
    assert f"{margins['sft7-dpo2']:.3f}" in lines["sft7-dpo2"] and "5e-06" in lines["sft7-dpo2"]
    assert "(failed)" in lines["broken"] and f"{margins['sft7-dpo2']:.3f}" not in lines["broken"]

