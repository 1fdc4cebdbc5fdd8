"""Bad input, tried and named: each case exits non-zero with one message that says what and where.

The cases run each stage's `python -m` entry in-process (runpy, as `__main__`), which is what turns an error
into its exit message; a few of them also run as a real subprocess, for the exit status and no traceback."""
import json
import runpy

import pytest

from conftest import edit_params, run
from stages import download

ED_TRAIN = "data/raw/empatheticdialogues/train.csv"
DPO_JSON = "data/raw/human_like_dpo/data.json"


def write(path, text):
    def apply(repo):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    return apply


def both(*breakages):
    return lambda repo: [breakage(repo) for breakage in breakages]


# A rating sheet for a two-reply key, with one rating out of range.
RATING_KEY = json.dumps({"c0ffee01": {"set": "probe", "id": "a", "model": "sft", "response_sha256": "1" * 64},
                         "c0ffee02": {"set": "probe", "id": "a", "model": "dpo", "response_sha256": "2" * 64}})
RATINGS = ("code,prompt,reference,response,helpfulness,harmlessness,relevance,quality,comment\n"
           "c0ffee01,Hi,Hello,Hey,4,5,4,7,\nc0ffee02,Hi,Hello,Hi there,3,5,4,4,nice\n")


def set_param(key, value):
    return lambda repo: edit_params(repo / "params.yaml", **{key: value})


def rewrite(path, change):
    def apply(repo):
        target = repo / path
        target.write_bytes(change(target.read_bytes()))
    return apply


FAULTS = [  # (case, breakage, command, expected message)
    ("unknown param", set_param("sft.lora.rank", 8), "preprocess", "sft.lora.rank: unknown key"),
    ("wrong type", set_param("dpo.max_steps", "many"), "preprocess", "dpo.max_steps: Input should be a valid integer"),
    ("negative lr", set_param("sft.lr", -4.0e-5), "preprocess", "sft.lr: Input should be greater than 0"),
    ("CSV with a wrong header", rewrite(ED_TRAIN, lambda b: b.replace(b"utterance_idx", b"turn", 1)), "preprocess",
     f"{ED_TRAIN}:1: expected header"),
    ("CSV header with non-UTF-8 bytes", rewrite(ED_TRAIN, lambda b: b.replace(b"conv_id", b"conv\xe2id", 1)),
     "preprocess", f"{ED_TRAIN}:1: not valid UTF-8 (byte 0xe2)"),
    ("DPO JSON that is not an array", rewrite(DPO_JSON, lambda b: b'{"prompt": "hi"}'), "preprocess",
     f"{DPO_JSON}: expected a JSON array of {{prompt, chosen, rejected}}, got dict"),
    ("DPO item without a field", rewrite(DPO_JSON, lambda b: json.dumps([{"prompt": "a", "chosen": "b"}]).encode()),
     "preprocess", f"{DPO_JSON}: item 0: 'rejected' must be a string"),
    ("DPO data empty after filtering",
     rewrite(DPO_JSON, lambda b: json.dumps([{"prompt": "a", "chosen": "b", "rejected": "b"}] * 3).encode()),
     "preprocess", f"{DPO_JSON}: 0 usable pairs after filtering; need at least 2"),
    ("SFT data empty after filtering",
     rewrite(ED_TRAIN, lambda b: b.split(b"\n")[0] + b"\nc1,1,sad,s,1,only the speaker,x,\n"), "preprocess",
     f"{ED_TRAIN}: no SFT examples left after filtering"),
    ("preprocess before base_model", lambda repo: None, "preprocess",
     "models/base/ holds no model: run `dvc repro base_model` (or `dvc pull`) first"),
    ("local source without its files", set_param("data.source", "local"), "download",
     "data: Value error, local_dir must name a directory when source is 'local'"),
    ("eval prompts file with a bad line",
     both(write("data/eval/mine.jsonl", '{"user": "I failed.", "reference": "Oh no."}\n{"user": "Hi"}\n'),
          set_param("eval.prompts_file", "data/eval/mine.jsonl")), "evaluate",
     "data/eval/mine.jsonl:2: 'reference' must be a non-empty string"),
    ("DPO JSON nested too deeply", rewrite(DPO_JSON, lambda b: b"[" * 100_000 + b"]" * 100_000), "preprocess",
     f"{DPO_JSON}: invalid JSON: nested too deeply to read"),
    ("DPO JSON with a 5,000-digit number", rewrite(DPO_JSON, lambda b: b"[" + b"7" * 5000 + b"]"), "preprocess",
     f"{DPO_JSON}: invalid JSON: Exceeds the limit"),
    ("params with a 5,000-digit number", write("params.yaml", "seed: " + "1" * 5000 + "\n"), "preprocess",
     "params.yaml: cannot read params"),
    ("rating key cut short", write("eval/human/key.json", '{"c0ffee01": {"set": "probe"'), "human",
     "eval/human/key.json: not a rating key"),
    ("rating key cut short, then evaluate", write("eval/human/key.json", '{"c0ffee01": '), "evaluate",
     "or delete it to draw new codes (every filled sheet then counts as stale)"),
    ("rating key of the wrong shape", write("eval/human/key.json", '{"c0ffee01": {"model": "sft"}}'), "human",
     "eval/human/key.json: code 'c0ffee01': expected the text fields set, id, model, response_sha256"),
    ("rating sheet with an out-of-range value",
     both(write("eval/human/key.json", RATING_KEY), write("eval/human/ratings/ann.csv", RATINGS)), "human",
     "eval/human/ratings/ann.csv: row 1 (line 2), column 'quality': '7' is not an integer from 1 to 5"),
]


def exit_message(stage: str) -> str:
    """Run `python -m stages.<stage>` in this process and return the message it exits with."""
    with pytest.raises(SystemExit) as exit:
        runpy.run_module(f"stages.{stage}", run_name="__main__")
    assert isinstance(exit.value.code, str), f"exit code {exit.value.code!r}, not a message"
    return exit.value.code


def broken(project, breakage) -> None:
    download.main()
    breakage(project)


@pytest.mark.parametrize("case, breakage, stage, message", FAULTS, ids=[f[0] for f in FAULTS])
def test_bad_input_is_named_and_nothing_is_half_written(project, case, breakage, stage, message):
    broken(project, breakage)
    metrics_before = {path.name: path.read_bytes() for path in (project / "metrics").iterdir()}
    assert message in exit_message(stage)
    assert not (project / "data/processed").exists()
    assert {path.name: path.read_bytes() for path in (project / "metrics").iterdir()} == metrics_before


@pytest.mark.parametrize("case", ["wrong type", "CSV with a wrong header", "rating sheet with an out-of-range value"])
def test_a_stage_run_as_a_command_exits_1_with_the_message_and_no_traceback(project, case):
    _, breakage, stage, message = next(fault for fault in FAULTS if fault[0] == case)
    broken(project, breakage)
    result = run(["python", "-m", f"stages.{stage}"], project, check=False)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
