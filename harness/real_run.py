"""real_run: the pipeline's own stages on a real pretrained model and real rows at the recipes' scale, in this
process, where dvc is not installed (a lent GPU machine): SmolLM2-135M-Instruct through sft7 and dpo1, scored
on the fixed evaluation sets, in the placement's dtype (bf16 on a GPU).

    python -m harness.real_run --rows DIR                       # the recipe (bench/smollm2-recipe.params.yaml)
    python -m harness.real_run --rows DIR --set sft.epochs=1    # with any key changed (a smoke run on a CPU)
    python -m harness.real_run --rows DIR --workdir RUN         # the run kept in RUN; the same again continues it

DIR holds raw files as data=local reads them: empatheticdialogues/{train,valid,test}.csv and
human_like_dpo/data.json. The params are bench/smollm2-recipe.params.yaml, the composition of
`model=smollm2 data=local sft=sft7 dpo=dpo1 eval=minilm` (tests/test_real_run.py keeps it so), with
data.local_dir set to DIR; `--params` takes another composed file. The model and BERTScore's embedder come
from their PyPI wheels (requirements-models.txt, requirements.txt), as in `dvc repro`.

Writes <out>/<date>-<device>-real-run.json: each stage's wall time and peak accelerator memory, the rows kept
and dropped, every metric of sft, dpo and evaluate, the training curves as the trainers logged them, example
replies of the three models; and beside it <date>-<device>-real-run-generations.jsonl, every reply. The JSON
is written again as each stage ends ("finished": false until the whole result, examples included, is in), so a
run cut short keeps its stages. With --workdir, the run's project (data, models, checkpoints, curves) stays in
that folder, and the same command again, after a kill, continues it: the stages that finished are skipped and a
training stage resumes from its last complete checkpoint, so a lent GPU's call cut by its time limit loses at
most a checkpoint's steps. A stage's seconds are then those of the process that finished it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import tempfile
from contextlib import ExitStack, chdir
from pathlib import Path

import yaml

from chattune.common.outputs import read_jsonl, write_json
from chattune.common.params import load_params
from chattune.common.paths import GENERATIONS, METRICS_DIR
from chattune.modeling.placement import compute_dtype
from harness.bench import RESULTS, device_name, random_fingerprints, result_path, versions
from harness.inprocess import STAGES, ForwardDevices, composed, curves_in, run_stages, scratch_project

RECIPE = Path("bench/smollm2-recipe.params.yaml")
EXAMPLES = {"probe": 6, "ed_test": 3}  # prompts per set shown with every model's reply
METRICS = ("data", "judges", "sft", "dpo", "eval")
RECORD = "real-run.json"  # in the run's folder: the stages finished so far, for a run that continues it
CURVES = "curves"  # in the run's folder: each trainer's logged points, <stage>.json


def setting(text: str) -> tuple[str, object]:
    """`key=value` from the command line, the value read as YAML (numbers, booleans, lists)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected key=value, e.g. sft.epochs=1")
    return key, yaml.safe_load(value)


def examples(generations: list[dict]) -> list[dict]:
    """The first prompts of each set, each with the user's last message, the reference and every model's reply."""
    chosen: dict[tuple[str, str], dict] = {}
    for row in generations:
        key = (row["set"], row["id"])
        if key not in chosen and sum(s == row["set"] for s, _ in chosen) >= EXAMPLES.get(row["set"], 0):
            continue
        example = chosen.setdefault(key, {"set": row["set"], "id": row["id"], "user": row["prompt"][-1]["content"],
                                          "reference": row["reference"]})
        example[row["model"]] = row["response"]
    return list(chosen.values())


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=Path, required=True, help="raw files in data=local's layout")
    parser.add_argument("--params", type=Path, default=RECIPE, help=f"a composed params file (default {RECIPE})")
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE",
                        help="change one param (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--workdir", type=Path,
                        help="keep the run's project (data, models, checkpoints) in this folder, and continue the run "
                             "left there with the same params: stages it finished are skipped, and a training stage "
                             "resumes from its last checkpoint (default: a temporary folder)")
    args = parser.parse_args(argv)
    rows = args.rows.resolve()  # the stages run in a scratch folder
    missing = [name for name in ("empatheticdialogues/train.csv", "human_like_dpo/data.json") if not (rows / name).exists()]
    if missing:
        raise SystemExit(f"real_run: {rows} lacks {', '.join(missing)} (the data=local layout)")
    params = composed(yaml.safe_load(args.params.read_text()), {"data.local_dir": str(rows), **dict(args.set)})
    random_fingerprints()
    root, path = Path.cwd(), result_path(args.out.resolve(), "real-run")
    path.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as context:
        workdir = args.workdir.resolve() if args.workdir else Path(context.enter_context(tempfile.TemporaryDirectory()))
        earlier = earlier_stages(workdir, params)
        if earlier is None:
            scratch_project(root, workdir, params)
            write_json(workdir / RECORD, {"stages": {}})  # the folder is a run's from now on
            earlier = {}
        else:
            print(f"real_run: continuing the run in {workdir}; finished: {', '.join(earlier) or 'none'}", flush=True)
        curves = curves_in(workdir / CURVES)
        devices = context.enter_context(ForwardDevices())
        with chdir(workdir):
            def record(stages_so_far: dict) -> None:  # a lease that runs out mid-run keeps what finished
                progress = {**recorded(stages_so_far, devices, earlier), "finished": False}
                write_json(path, progress)
                write_json(RECORD, progress)  # what a continued run skips

            stages = run_stages(STAGES, curves, after=record, done=earlier)
            result = {**recorded(stages, devices, earlier), "finished": True,
                      "examples": examples(read_jsonl(GENERATIONS))}
            write_json(RECORD, result)
        shutil.copyfile(workdir / GENERATIONS, path.with_name(path.stem + "-generations.jsonl"))
    write_json(path, result)
    print(json.dumps({"stages": stages, "sft": result["metrics"]["sft"], "dpo": result["metrics"]["dpo"]}, indent=1))
    print(f"real_run: {path}")
    return path


def earlier_stages(workdir: Path, params: dict) -> dict | None:
    """The stages that an earlier run left in `workdir` finished, in order, each with its record; None where the
    folder is absent or empty. A folder that holds anything else, or a run with other params, is refused, and
    nothing in it is touched."""
    if not workdir.exists() or not any(workdir.iterdir()):
        return None
    if not (workdir / RECORD).exists():
        raise SystemExit(f"real_run: {workdir} is not empty and holds no run of real_run ({RECORD}): "
                         "name a new or empty folder")
    if yaml.safe_load((workdir / "params.yaml").read_text()) != params:
        raise SystemExit(f"real_run: {workdir} holds a run with other params (its params.yaml): "
                         "remove it, or name another folder")
    stages = json.loads((workdir / RECORD).read_text())["stages"]
    return {name: stages[name] for name in STAGES if name in stages}  # in the pipeline's order


def recorded(stages: dict, devices: ForwardDevices, earlier: dict) -> dict:
    """The run so far, read in the scratch project: the stages finished (and which of them an earlier process did),
    their metrics files, the trainers' curves."""
    return {
        "device": device_name(),
        "date": datetime.date.today().isoformat(),
        "dtype": str(compute_dtype(load_params().model.dtype)).removeprefix("torch."),
        "versions": versions(),
        "params": yaml.safe_load(Path("params.yaml").read_text()),
        "stages": stages,
        "total_seconds": sum(stage["seconds"] for stage in stages.values()),
        "models_seen": devices.described(),
        "metrics": {name: json.loads(file.read_text()) for name in METRICS
                    if (file := METRICS_DIR / f"{name}.json").exists()},
        "curves": {file.stem: json.loads(file.read_text()) for file in sorted(Path(CURVES).glob("*.json"))},
        # a stage's seconds are its last process's: one cut short and continued counts only the continuing part
        "finished_by_earlier_processes": list(earlier),
    }


if __name__ == "__main__":
    main()
