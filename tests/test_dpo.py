"""The DPO reference is the SFT policy: base with the SFT adapter merged, not the raw base."""
import pytest

from stages import dpo
from stages.modeling import load_model
from stages.params import load_params


@pytest.fixture
def step0(pipeline_copy, tmp_path):
    """A DPO trainer as the stage builds it, evaluated before any step."""
    trainer, dropped = dpo.build_trainer(load_params(), str(tmp_path / "run"))
    assert dropped == 0  # the sample's prompts are far below max_prompt_length
    return trainer, trainer.evaluate()


def test_policy_equals_reference_at_step_zero(step0):
    _, metrics = step0
    assert metrics["eval_rewards/chosen"] == 0 and metrics["eval_rewards/rejected"] == 0
    assert metrics["eval_rewards/margins"] == 0


def test_reference_is_the_sft_model_not_the_raw_base(step0, tmp_path, monkeypatch):
    _, metrics = step0
    # The same trainer and pairs, but built on the raw base: its log-probs are what a reference
    # that skipped the SFT adapter would give.
    monkeypatch.setattr(dpo, "load_model", lambda stage: load_model("base"))
    raw_base = dpo.build_trainer(load_params(), str(tmp_path / "base-run"))[0].evaluate()
    assert abs(metrics["eval_logps/chosen"] - raw_base["eval_logps/chosen"]) > 1.0
    assert abs(metrics["eval_logps/rejected"] - raw_base["eval_logps/rejected"]) > 1.0
