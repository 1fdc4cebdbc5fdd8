"""The benchmark's CPU smoke runs: each configuration in a process of its own, the tokens of the timed batches,
the peer and the notebook beside the project, versions recorded."""
import json
import os
import subprocess
import time
from types import SimpleNamespace

import pytest
import torch

from chattune.training.batching import token_bytes
from conftest import VENV_PATH, shared_file
from harness import bench

SMOKE = dict(tiny=True, warmup=3, steps=4, rounds=1, memory_cap_gib=16.0, reference=None, profile=False,
             profile_steps=2)


def test_tiny_bench_runs_each_configuration_in_its_own_process(project):
    names = ["sft_project", "generate_stack_batch_64_static"]
    path = bench.main(["--tiny", "--warmup", "3", "--steps", "4", "--rounds", "1", "--runs", ",".join(names),
                       "--out", str(project / "results")])
    result = json.loads(path.read_text())
    runs = result["runs"]
    assert result["device"].startswith("CPU") and result["tiny"] and result["dtype"] == "float32"
    assert set(runs) == set(names) and (result["warmup_steps"], result["timed_steps"]) == (3, 4)
    assert {"torch", "transformers", "trl", "peft", "liger-kernel"} <= set(result["versions"])
    assert result["versions"]["trl"] and result["versions"]["liger-kernel"] is None  # not installed on a CPU
    run = runs["sft_project"]
    assert run["timed_steps"] == 4 and 0 < run["real_tokens"] <= run["padded_tokens"] and run["liger"] is False
    assert run["real_tokens_per_s"] == pytest.approx(run["real_tokens"] / run["seconds"])
    # the rest of a run's time, named: set-up before the first step, and the imports (the process less the run)
    assert 0 < run["setup_seconds"] < run["run_seconds"] - run["seconds"] < run["process_seconds"]
    generated = runs["generate_stack_batch_64_static"]
    assert generated["new_tokens_per_s"] > 0 and generated["cache"] == "static"
    assert generated["first_call_seconds"] > 0  # the untimed call, where a GPU compiles for the static cache
    assert result["ratio"]["sft_real_tokens_over_peer"] is None  # the peer did not run: no ratio, not a made-up one


def test_the_tokens_counted_are_those_of_the_timed_batches():
    # The notebook pads every row to 512: 4 timed steps of 4 rows x 2 micro-batches are 16,384 padded tokens,
    # whatever the warm-up steps held.
    notebook = bench.run_one("sft_notebook", SimpleNamespace(**SMOKE))
    assert notebook["padded_tokens"] == 4 * 4 * 2 * 512 and notebook["timed_steps"] == 4
    assert notebook["real_tokens"] < notebook["padded_tokens"] / 4  # seed rows are short: the padding it wasted
    # the plan a stage would make for its longest micro-batch (4 rows of 512), to read beside the measured peak
    assert notebook["longest_batch_tokens"] == 4 * 512
    assert notebook["estimated_peak_gib"] * 2**30 > 4 * 512 * token_bytes(
        bench.shape_and_tokenizer(tiny=True)[0], liger=False)
    # The peer, plain TRL with its defaults (batch 8, here 2 for the tiny run): a step of 2 pairs trains 4 rows.
    # Profiled, it runs 2 more steps after the timed 4, and neither their pairs nor their time are counted.
    peer = bench.run_one("dpo_peer", SimpleNamespace(**{**SMOKE, "profile": True}))
    assert peer["pairs_per_s"] * peer["seconds"] == pytest.approx(4 * 2) and peer["timed_steps"] == 4
    assert "aten::mm" in peer["profile"] and "MmBackward0" in peer["profile"]  # training steps' top operations


def test_counting_the_timed_tokens_reads_nothing_back_from_the_device():
    """On a GPU, reading a value back mid-run waits for the GPU, in every timed step: the count stays where the
    batch is until training ends. A meta tensor has no values at all, so reading one fails."""
    trainer = SimpleNamespace(training_step=None, add_callback=lambda callback: None)
    timed = bench.TimedSteps(trainer, warmup=1, steps=2)
    on_device = {"input_ids": torch.zeros(2, 5, dtype=torch.long, device="meta"),
                 "attention_mask": torch.ones(2, 5, dtype=torch.long, device="meta")}
    timed.count(on_device, step=2)  # int() of a meta tensor would raise here
    assert (timed.padded, timed.rows) == (10, 2) and timed.real.device.type == "meta"
    timed = bench.TimedSteps(trainer, warmup=1, steps=2)
    timed.count({"input_ids": torch.zeros(3, 4), "attention_mask": torch.ones(3, 4)}, step=1)  # the warm-up's
    for step in (2, 3, 4):  # the warm-up step and the one past the timed ones are not counted
        timed.count({"input_ids": torch.zeros(2, 4), "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])},
                    step)
    assert (int(timed.real), timed.padded) == (8, 16)
    assert timed.longest == 12  # but the peak's micro-batch may be any: length grouping puts the longest first


def test_each_run_is_written_as_it_ends_and_none_starts_past_the_budget(project, monkeypatch):
    # A lease can end mid-benchmark: what finished is on disk, and a budget keeps the last runs from starting.
    started = []

    def fake_run(name, args):
        if started:  # the result file already holds the run before this one
            written = json.loads(next((project / "results").glob("*-tiny.json")).read_text())
            assert list(written["runs"]) == started
        started.append(name)
        time.sleep(0.3)
        return {"real_tokens_per_s": 1.0}

    monkeypatch.setattr(bench, "in_own_process", fake_run)
    path = bench.main(["--tiny", "--runs", "sft_peer,dpo_peer,sft_project", "--budget-s", "0.5",
                       "--out", str(project / "results")])
    runs = json.loads(path.read_text())["runs"]
    assert started == ["sft_peer", "dpo_peer"]  # the second began at 0.3 s, within the budget; the third at 0.6 s
    assert runs["sft_project"] == {"skipped": "the 0.5 s budget was spent"}


def test_the_headline_is_the_projects_best_over_the_peer_and_the_notebook():
    runs = {"sft_peer": {"real_tokens_per_s": 100.0}, "sft_notebook": {"real_tokens_per_s": 50.0},
            "sft_project": {"real_tokens_per_s": 300.0}, "sft_project_packed": {"real_tokens_per_s": 400.0},
            "dpo_peer": {"pairs_per_s": 2.0}, "dpo_project": {"pairs_per_s": 7.0},
            "generate_batch_1": {"new_tokens_per_s": 10.0}, "generate_stack_batch_64": {"new_tokens_per_s": 250.0},
            "generate_peer": {"new_tokens_per_s": 50.0}, "sft_broken": {"failed": "exit status 1"}}
    assert bench.ratios(runs) == {"sft_real_tokens_over_peer": 4.0, "sft_real_tokens_over_notebook": 8.0,
                                  "dpo_pairs_over_peer": 3.5, "dpo_pairs_over_notebook": None,
                                  "generate_stack_over_peer": 5.0, "generate_stack_over_batch_1": 25.0}


def test_the_projects_dpo_runs_train_the_dpo_stages_models(monkeypatch):
    """What the dpo stage trains: base + a frozen SFT adapter + a new one, against a second base + SFT as the
    reference, equal to the policy before its first step; not one model whose adapter TRL switches off for the
    reference's pass (a walk over every module, twice a step). The peer keeps TRL's way."""
    built = {}

    class Recorded(bench.TokenizedDPOTrainer):
        def __init__(self, **kwargs):
            built.update(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(bench, "TokenizedDPOTrainer", Recorded)
    config, tokenizer = bench.shape_and_tokenizer(tiny=True)
    bench.run_dpo(config, tokenizer, warmup=1, steps=1, batch=2, accum=1, reference=None)
    policy, reference = built["model"], built["ref_model"]
    assert "peft_config" not in built and policy.active_adapters == ["default", "sft"]
    assert {name for name, param in policy.named_parameters() if param.requires_grad} == {
        name for name, _ in policy.named_parameters() if ".default." in name}
    # the reference is the SFT stack as made again, untouched by training (the policy's new adapter moved)
    fresh = bench.sft_stack(config).eval()
    ids = bench.generation_prompts(tokenizer, 2)[0]
    with torch.no_grad():
        assert torch.equal(reference(input_ids=ids).logits, fresh(input_ids=ids).logits)
        assert not torch.equal(bench.new_model(config).eval()(input_ids=ids).logits, fresh(input_ids=ids).logits)


def test_the_generation_peer_runs_the_same_stack_unmerged():
    """The peer times the adapters as PEFT loads them (both active, each its own small matmuls); the project
    combines them into one. The two must compute the same replies, or the ratio compares different work."""
    config, tokenizer = bench.shape_and_tokenizer(tiny=True)
    peer, project = (bench.generation_model(config, stack=True, peer=peer) for peer in (True, False))
    assert peer.active_adapters == ["sft", "dpo"] and project.active_adapters == ["stack"]
    assert peer.peft_config["sft"].r == project.peft_config["stack"].r / 2  # the ranks side by side, not merged
    ids, mask = bench.generation_prompts(tokenizer, 4)
    settings = bench.generation_config(tokenizer, 16, temperature=0.0)
    with torch.no_grad():
        assert torch.allclose(peer(input_ids=ids, attention_mask=mask).logits,
                              project(input_ids=ids, attention_mask=mask).logits, atol=1e-5)
        replies = [model.generate(input_ids=ids, attention_mask=mask, generation_config=settings)
                   for model in (peer, project)]
    assert torch.equal(*replies)
    without = bench.generation_model(config, stack=False, peer=False)  # and the adapters do change the replies
    with torch.no_grad():
        assert not torch.equal(without.generate(input_ids=ids, attention_mask=mask, generation_config=settings),
                               replies[0])


def test_the_combined_stack_compiles_for_the_static_cache_in_one_graph():
    """On a GPU, generate compiles the decoding step for a static cache (the benchmark's route to 5,000 new
    tokens/s); a graph break in the combined adapter's layers would split it and undo what compiling buys. The CPU
    compiles too where told to: one graph, no breaks, the same greedy tokens as the dynamic cache."""
    from torch._dynamo.utils import counters
    from transformers.generation.configuration_utils import CompileConfig

    config, tokenizer = bench.shape_and_tokenizer(tiny=True)
    config.num_hidden_layers = 1
    model = bench.generation_model(config, stack=True, peer=False)
    ids, mask = bench.generation_prompts(tokenizer, 2)
    dynamic = bench.generation_config(tokenizer, 8, temperature=0.0)
    static = bench.generation_config(tokenizer, 8, temperature=0.0)
    static.cache_implementation, static.compile_config = "static", CompileConfig()
    static.compile_config._compile_all_devices = True  # transformers compiles only on accelerators unless told
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        replies = [model.generate(input_ids=ids, attention_mask=mask, generation_config=settings)
                   for settings in (dynamic, static)]
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert torch.equal(*replies)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_the_profiled_generate_call_stops_after_its_few_tokens(cache):
    """A profile of a whole 128-token call holds about a million events, and tabulating them outlasted a lease's
    call; the profiled call stops early, keeping the timed calls' settings (a static cache's size with them)."""
    config, tokenizer = bench.shape_and_tokenizer(tiny=True)
    model = bench.generation_model(config, stack=False, peer=False)
    ids, mask = bench.generation_prompts(tokenizer, 2)
    settings = bench.generation_config(tokenizer, 48, temperature=0.0)
    settings.min_new_tokens, settings.cache_implementation = 48, cache
    stop = bench.StoppingCriteriaList([bench.StopAfter(ids.shape[1] + bench.PROFILED_NEW_TOKENS)])
    with torch.no_grad():
        whole = model.generate(input_ids=ids, attention_mask=mask, generation_config=settings)
        cut = model.generate(input_ids=ids, attention_mask=mask, generation_config=settings, stopping_criteria=stop)
    assert whole.shape[1] == ids.shape[1] + 48 and cut.shape[1] == ids.shape[1] + bench.PROFILED_NEW_TOKENS
    assert torch.equal(cut, whole[:, :cut.shape[1]])  # the same tokens, only fewer of them


def test_the_full_shape_is_tinyllamas():
    reference = json.loads(shared_file("tinyllama", "config.json").read_text())
    config = bench.model_config(tiny=False, reference=shared_file())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size"):
        assert getattr(config, key) == reference[key] == bench.TINYLLAMA[key]


def test_rows_come_from_the_reference_folder_where_it_has_them(tmp_path):
    """On a GPU the benchmark trains on the real EmpatheticDialogues turns and Human-Like-DPO pairs that the
    reference folder carries, and on the sample's where it has none; the result names which."""
    sample = bench.row_files(None)
    real_turns = tmp_path / "ed-real/train.csv"
    real_turns.parent.mkdir()
    real_turns.write_text("".join(sample["sft"][0].read_text().splitlines(keepends=True)[:31]))  # a few dialogues
    found = bench.row_files(tmp_path)
    assert found == {"sft": [real_turns], "dpo": sample["dpo"]}  # no pairs in the folder: the sample's
    assert [bench.described(path, tmp_path) for path in found["sft"] + found["dpo"]] == [
        "reference: ed-real/train.csv", "sample: human_like_dpo/data.json"]
    replies = {row["completion"][0]["content"] for row in bench.sft_rows("dialogue", 64, tmp_path)}
    assert replies and all(reply.replace(",", "_comma_") in real_turns.read_text() for reply in replies)
    assert len({row["completion"][0]["content"] for row in bench.sft_rows("dialogue", 64)}) > len(replies)


@pytest.mark.parametrize("device, slug", [("NVIDIA H200", "nvidia-h200"), ("CPU (x86_64)", "cpu-x86-64"),
                                          ("Tesla T4", "tesla-t4")])
def test_result_files_are_named_after_the_day_and_the_device(monkeypatch, tmp_path, device, slug):
    monkeypatch.setattr(bench, "device_name", lambda: device)
    path = bench.result_path(tmp_path, "real-run")
    assert path.parent == tmp_path and path.name.endswith(f"-{slug}-real-run.json")
    assert bench.result_path(tmp_path, "").name.endswith(f"-{slug}.json")


def test_the_gpu_sessions_first_call_runs_the_runs_named_or_only_installs(project, tmp_path):
    """harness/gpu-session.sh 1, as a lent GPU session makes it: BENCH_RUNS picks the benchmark's runs, and empty it
    runs none, for a session that only installs the wheels before the real run."""
    env = {**os.environ, "PATH": VENV_PATH, "TINY": "--tiny"}
    named, empty = tmp_path / "named", tmp_path / "empty"
    for out, runs in ((named, "sft_project"), (empty, "")):
        out.mkdir()
        subprocess.run(["bash", "harness/gpu-session.sh", "1"], cwd=project, check=True,
                       env={**env, "OUT": str(out), "BENCH_RUNS": runs})
    result = json.loads(next(named.glob("*-tiny.json")).read_text())
    assert list(result["runs"]) == ["sft_project"] and result["runs"]["sft_project"]["timed_steps"] == 20
    assert "aten::mm" in result["runs"]["sft_project"]["profile"]
    assert not any(empty.iterdir())
