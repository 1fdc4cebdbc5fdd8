"""The benchmark's CPU smoke runs: each configuration in a process of its own, the tokens of the timed batches,
the peer and the notebook beside the project, versions recorded."""
import json
from types import SimpleNamespace

import pytest

from tools import bench

from conftest import shared_file

SMOKE = dict(tiny=True, warmup=3, steps=4, rounds=1, memory_cap_gib=16.0, reference=None, profile=False)


def test_tiny_bench_runs_each_configuration_in_its_own_process_beside_its_peer(project):
    names = ["sft_peer", "sft_project", "dpo_peer", "dpo_project", "generate_stack_batch_64"]
    path = bench.main(["--tiny", "--warmup", "3", "--steps", "4", "--rounds", "1", "--runs", ",".join(names),
                       "--out", str(project / "results")])
    result = json.loads(path.read_text())
    runs = result["runs"]
    assert result["device"].startswith("CPU") and result["tiny"] and result["dtype"] == "float32"
    assert set(runs) == set(names) and (result["warmup_steps"], result["timed_steps"]) == (3, 4)
    assert {"torch", "transformers", "trl", "peft", "liger-kernel"} <= set(result["versions"])
    assert result["versions"]["trl"] and result["versions"]["liger-kernel"] is None  # not installed on a CPU
    for name in names[:4]:
        run = runs[name]
        assert run["timed_steps"] == 4 and run["warmup_steps"] == 3
        assert 0 < run["real_tokens"] <= run["padded_tokens"]
        assert run["real_tokens_per_s"] == pytest.approx(run["real_tokens"] / run["seconds"])
    assert result["ratio"]["sft_real_tokens_over_peer"] == pytest.approx(
        runs["sft_project"]["real_tokens_per_s"] / runs["sft_peer"]["real_tokens_per_s"])
    assert result["ratio"]["dpo_pairs_over_peer"] == pytest.approx(
        runs["dpo_project"]["pairs_per_s"] / runs["dpo_peer"]["pairs_per_s"])
    assert result["ratio"]["sft_real_tokens_over_notebook"] is None  # not run: no ratio, not a made-up one
    assert all(runs[name]["new_tokens_per_s"] > 0 for name in names[4:])


def test_the_tokens_counted_are_those_of_the_timed_batches(project):
    # The notebook pads every row to 512: 4 timed steps of 4 rows x 2 micro-batches are 16,384 padded tokens,
    # whatever the warm-up steps held.
    notebook = bench.run_one("sft_notebook", SimpleNamespace(**SMOKE))
    assert notebook["padded_tokens"] == 4 * 4 * 2 * 512
    assert notebook["real_tokens"] < notebook["padded_tokens"] / 4  # seed rows are short: the padding it wasted
    # A DPO step of 2 pairs x 4 micro-batches trains 8 pairs, each as two rows (chosen, rejected).
    pairs = bench.run_one("dpo_notebook", SimpleNamespace(**{**SMOKE, "profile": True}))
    assert pairs["pairs_per_s"] * pairs["seconds"] == pytest.approx(4 * 2 * 4)
    assert "aten::mm" in pairs["profile"]  # the top ops of the run, as a table

def test_the_full_shape_is_tinyllamas():
    reference = json.loads(shared_file("tinyllama", "config.json").read_text())
    config = bench.model_config(tiny=False, reference=shared_file())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size"):
        assert getattr(config, key) == reference[key] == bench.TINYLLAMA[key]
