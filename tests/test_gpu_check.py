"""The GPU check's tiny variant on the CPU: the whole DAG through the stages' own code, every model seen
where placement puts it, the scored model equal to the unmerged stack, packed rows equal to padded ones."""
import json
import time

import torch

from chattune.modeling.placement import compute_dtype
from harness import gpu_check

STAGES = ["model_source", "base_model", "download", "preprocess", "judges", "sft", "dpo", "evaluate", "human"]


def test_tiny_gpu_check_runs_every_stage_on_the_placed_device(project):
    start = time.perf_counter()
    result = json.loads(gpu_check.main(["--tiny", "--out", str(project / "results")]).read_text())
    elapsed = time.perf_counter() - start
    assert sorted(result["stages"]) == sorted(STAGES)
    # Each stage timed on its own: together no longer than the whole check, and no GPU memory on a CPU.
    assert sum(run["seconds"] for run in result["stages"].values()) <= elapsed
    assert all(run["peak_gib"] is None for run in result["stages"].values())
    # The forward hook saw the base, the trainers' models and BERTScore's model, all on the CPU here.
    seen = set(result["models_seen"])
    assert {"LlamaForCausalLM on cpu", "BertModel on cpu"} <= seen and all(s.endswith("on cpu") for s in seen)
    # It runs as the real profiles do (model.dtype auto): float32 on a CPU, bf16 on a GPU (whose tolerances hold).
    half = compute_dtype("auto") != torch.float32
    assert result["dtype"] == str(compute_dtype("auto")).removeprefix("torch.")
    checks = result["checks"]
    # The scored model against the unmerged stack: the check itself asserts bf16's tolerance (one bf16 step of
    # the largest logit); in float32, rounding only.
    assert half or checks["scored_vs_unmerged_max_logit_difference"] < 1e-5
    assert checks["export_fp32_vs_fp32_stack_max_logit_difference"] < 1e-4  # the export merges in float32 always
    packed = checks["packed_vs_padded"]  # on the CPU, one sdpa call per example (a GPU: torch's varlen kernel)
    assert packed["attention"] == "sdpa per example" and packed["within_tolerance"]
    assert (packed["max_gradient_difference"] <= (2**-5 if half else 1e-5) * packed["largest_gradient"]
            and packed["largest_gradient"] > 0)
    assert result["train_tokens_per_s"] > 0 and result["train_pairs_per_s"] > 0
    assert result["micro_batches"] == {"sft": [8, 1], "dpo": [2, 4]}  # on a CPU, the splits as written
    assert not (project / "models").exists()  # the scratch project stays out of the checkout
