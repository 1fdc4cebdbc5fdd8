"""The DPO reference is the SFT policy (base + SFT adapter), not the raw base; the policy is that plus a new
adapter, the only trained weights; LoRA dropout is honored."""
import pytest
import torch
from peft import get_peft_model
from peft.tuners.lora import LoraLayer

from chattune.common.params import load_params
from chattune.modeling.loading import lora_config
from chattune.training.dpo import pair_lengths
from conftest import lora_casts_in_forward, place_on
from stages import dpo


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
    # A fresh adapter in the SFT adapter's place is a no-op: policy and reference are then the raw base.
    fresh = lambda model, stage: get_peft_model(model, lora_config(load_params().sft.lora), adapter_name="sft")
    monkeypatch.setattr(dpo, "stack", fresh)
    raw_base = dpo.build_trainer(load_params(), str(tmp_path / "base-run"))[0].evaluate()
    assert abs(metrics["eval_logps/chosen"] - raw_base["eval_logps/chosen"]) > 1.0
    assert abs(metrics["eval_logps/rejected"] - raw_base["eval_logps/rejected"]) > 1.0


def test_only_the_new_adapter_trains_and_its_dropout_is_honored(step0):
    trainer, _ = step0
    policy, dropout = trainer.model, load_params().dpo.lora.dropout
    assert set(policy.base_model.active_adapters) == {"default", "sft"}
    trained = {name for name, param in policy.named_parameters() if param.requires_grad}
    assert trained and all(".default." in name for name in trained)
    layers = [module for module in policy.modules() if isinstance(module, LoraLayer)]
    # TRL's disable_dropout would zero every dropout, LoRA's included; the stage zeroes only the base's and
    # the frozen SFT adapter's, so dpo.lora.dropout applies to the adapter being trained.
    assert all(layer.lora_dropout["default"].p == dropout > 0 for layer in layers)
    assert all(getattr(layer.lora_dropout["sft"], "p", 0) == 0 for layer in layers)
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for name, m in policy.named_modules()
                   if "lora_dropout" not in name)
    # The reference is base + SFT adapter: frozen, in eval mode, its LoRA layers active.
    reference = trainer.ref_model
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    assert any(isinstance(module, LoraLayer) for module in reference.modules())


def test_policy_and_reference_skip_their_lora_input_casts_under_autocast_only(step0):
    """Both adapters of the policy and the SFT adapter of the reference: under autocast (mixed-precision training)
    no float32 cast of a LoRA layer's input (chattune.modeling.loading.lora_under_autocast); without, PEFT's cast."""
    trainer, _ = step0
    ids = torch.tensor([[1, 5, 9, 12, 2]])
    for model in (trainer.model, trainer.ref_model):
        assert lora_casts_in_forward(model, ids, autocast=True) == {False}
        assert lora_casts_in_forward(model, ids, autocast=False) == {True}


def test_training_batches_are_grouped_by_pair_length(step0):
    """A batch is padded to its longest pair (TRL pads chosen and rejected rows to one width): drawn in groups of
    similar length, as SFT's are, a pass pads far less beyond each pair's own width than drawn at random."""
    trainer, _ = step0
    pairs = trainer.train_dataset
    lengths, size = pair_lengths(pairs), trainer.args.train_batch_size
    assert lengths[0] == len(pairs[0]["prompt_ids"]) + max(len(pairs[0]["chosen_ids"]), len(pairs[0]["rejected_ids"]))

    def excess(order):  # padding a batch adds beyond each pair's own width
        batches = [order[start:start + size] for start in range(0, len(order), size)]
        return sum(max(lengths[i] for i in batch) - lengths[i] for batch in batches for i in batch)

    grouped = list(trainer._get_train_sampler())
    step = trainer.args.train_batch_size * trainer.args.gradient_accumulation_steps
    assert len(set(grouped)) == len(grouped) == len(pairs) - len(pairs) % step  # every pair of a whole step, once
    at_random = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).tolist()
    assert excess(grouped) < 0.5 * excess(at_random)
    # and the trainer's batches come in that grouping: a pass pads no more than random batches would
    padded_area = sum(batch["input_ids"].numel() for batch in trainer.get_train_dataloader())
    random_area = sum(trainer.data_collator([pairs[i] for i in at_random[start:start + size]])["input_ids"].numel()
                      for start in range(0, len(pairs), size))
    assert padded_area < random_area


def test_any_split_of_a_step_draws_the_same_pairs_in_each_step(step0):
    """Pairs are drawn by optimizer step (chattune.training.batching.WholeSteps), so dpo1's 16 pairs a step in micro-batches of
    2, of 4 or in one (fill_gpu on a larger card) train the same pairs in each step (docs/speed.md says so)."""
    trainer, _ = step0
    args = trainer.args

    def drawn(batch, accum):
        args.per_device_train_batch_size, args.gradient_accumulation_steps = batch, accum
        return list(trainer._get_train_sampler())

    assert drawn(2, 8) == drawn(4, 4) == drawn(16, 1) != drawn(8, 1)  # another step size deals other groups


def test_bf16_dpo_trains_under_autocast_with_the_adapters_on_bf16_input(pipeline_copy, monkeypatch, tmp_path):
    """The GPU's path (bf16 mixed precision), here on the CPU: base weights bf16 in policy and reference, both
    adapters float32; each step under autocast with every adapter, the frozen SFT one included, computing on the
    bf16 input itself; the new adapter moves, the loss is finite."""
    import math

    from peft.tuners.lora import LoraLayer

    place_on(monkeypatch, "cpu", torch.bfloat16)
    params = load_params()
    params = params.model_copy(update={"dpo": params.dpo.model_copy(update={"max_steps": 2, "examples_per_step": 2})})
    trainer, _ = dpo.build_trainer(params, str(tmp_path / "run"))
    assert trainer.args.bf16
    for model in (trainer.model, trainer.ref_model):
        weights = dict(model.named_parameters())
        assert {p.dtype for name, p in weights.items() if "lora_" in name} == {torch.float32}
        assert {p.dtype for name, p in weights.items() if "lora_" not in name} == {torch.bfloat16}
    trained = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    seen = set()
    for model in (trainer.model, trainer.ref_model):
        for layer in (module for module in model.modules() if isinstance(module, LoraLayer)):
            for adapter in layer.lora_A.values():
                adapter.register_forward_pre_hook(lambda module, args: seen.add(args[0].dtype))
    result = trainer.train()
    assert seen == {torch.bfloat16}
    assert math.isfinite(result.training_loss) and trainer.state.global_step == 2
    weights = dict(trainer.model.named_parameters())
    assert any(not torch.equal(weights[name].detach(), value) for name, value in trained.items())
