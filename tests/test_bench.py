"""The benchmark's CPU smoke run: every measurement present and consistent, in one JSON per run."""
import json

import pytest

from tools import bench

from conftest import shared_file


def test_tiny_bench_measures_every_run_and_the_ratios(project):
    result = json.loads(bench.main(["--tiny", "--out", str(project / "results")]).read_text())
    runs = result["runs"]
    assert result["device"].startswith("CPU") and result["tiny"] and result["dtype"] == "float32"
    assert set(runs) == {"sft_notebook", "sft_project", "sft_project_packed", "sft7_recipe", "dpo_notebook",
                         "dpo_project", "generate_batch_1", "generate_batch_64"}
    for run in runs.values():
        assert all(value > 0 for key, value in run.items() if key.endswith("_per_s"))
    # The notebook's rows are its short seed format; the project's carry the dialogue.
    assert runs["sft_notebook"]["mean_tokens_per_example"] < runs["sft_project"]["mean_tokens_per_example"] / 2
    best = max(runs[name]["real_tokens_per_s"] for name in ("sft_project", "sft_project_packed"))
    assert result["ratio"]["sft_real_tokens"] == pytest.approx(best / runs["sft_notebook"]["real_tokens_per_s"])
    assert result["ratio"]["dpo_pairs"] == pytest.approx(runs["dpo_project"]["pairs_per_s"]
                                                         / runs["dpo_notebook"]["pairs_per_s"])


def test_the_full_shape_is_tinyllamas():
    reference = json.loads(shared_file("tinyllama", "config.json").read_text())
    config = bench.model_config(tiny=False, reference=shared_file())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size"):
        assert getattr(config, key) == reference[key] == bench.TINYLLAMA[key]
