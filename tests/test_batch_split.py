"""On a GPU with room, a step's examples go in fewer, fuller micro-batches (sft.fill_gpu / dpo.fill_gpu): how many
is planned from an estimate of the memory a token takes, which must cover what autograd really keeps."""
import pytest
import torch
from accelerate import PartialState
from peft import get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

from stages import training
from stages.modeling import lora_casts_follow_autocast, lora_config
from stages.params import SEVEN_PROJECTIONS, LoraParams, load_params
from stages.training import batch_split, fitted_batch, token_bytes, weight_bytes

from conftest import ROOT

TINYLLAMA_WIDTHS = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4)


def test_a_step_takes_the_fewest_equal_micro_batches_that_fit_and_never_smaller_ones_than_the_preset():
    # dpo1: 2 pairs x 4 micro-batches = 8 pairs a step
    assert fitted_batch(2, 4, lambda size: size <= 8.0) == 8
    assert fitted_batch(2, 4, lambda size: size <= 7.9) == 4
    assert fitted_batch(2, 4, lambda size: size <= 0.5) == 2  # not even the preset's fits: the preset stands
    # sft5: 3 x 2 = 6 a step; a micro-batch of 5 would leave an unequal one, so 3 it is
    assert fitted_batch(3, 2, lambda size: size <= 5.0) == 3
    assert fitted_batch(3, 4, lambda size: size <= 11.0) == 6


def small_model(layers: int = 2):
    config = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512)
    return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def test_dpo1_on_a_gpu_with_room_trains_its_8_pairs_in_one_micro_batch_and_on_a_cpu_as_written(monkeypatch):
    dpo1 = load_params(ROOT / "params.yaml").dpo
    assert (dpo1.preset, dpo1.batch_size, dpo1.grad_accum, dpo1.eval_batch_size) == ("dpo1", 2, 4, 2)
    assert dpo1.fill_gpu
    policy, reference = small_model(), small_model()
    assert batch_split(dpo1, "dpo", False, policy, reference) == (2, 4, 2)  # this machine: no CUDA GPU

    # a GPU whose free memory holds both models and 8 pairs of max_length tokens (two rows each), and no more
    pairs_8 = 8 * 2 * dpo1.max_length * token_bytes(policy.config, liger=False)
    free = (weight_bytes(policy) + weight_bytes(reference) + pairs_8) / training.USABLE_MEMORY
    PartialState()  # made on the CPU before CUDA is faked: accelerate keeps the first one for the process
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for card, split in ((free + 1, (8, 1, 8)), (free - 1, (4, 2, 4))):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(card), 2**40))
        assert batch_split(dpo1, "dpo", False, policy, reference) == split
    # an SFT example is one row, a DPO pair two: where 4 pairs fit, 8 examples of the same length do
    assert batch_split(dpo1, "sft", False, policy, reference) == (8, 1, 8)
    # Liger's kernels keep less a token, so the same card holds more
    assert token_bytes(policy.config, liger=True) < token_bytes(policy.config, liger=False)
    # and false keeps the preset's split on any card
    assert batch_split(dpo1.model_copy(update={"fill_gpu": False}), "dpo", False, policy, reference) == (2, 4, 2)
    assert PartialState().device.type == "cpu"  # the tests after this one still train on the CPU


def saved_bytes_per_layer_token(dropout: float, tokens: int = 128) -> float:
    """What autograd keeps for the backward pass of one decoder layer of TinyLlama's widths, a token: counted
    from the tensors it saves (the weights aside) in a two-layer model less a one-layer one, bf16 under autocast,
    LoRA on the seven projections as the stages train it."""
    def saved(layers: int) -> int:
        torch.manual_seed(0)
        config = LlamaConfig(**TINYLLAMA_WIDTHS, num_hidden_layers=layers, vocab_size=256)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        lora = LoraParams(r=8, alpha=16, dropout=dropout, target_modules=SEVEN_PROJECTIONS)
        model = get_peft_model(model, lora_config(lora)).train()
        lora_casts_follow_autocast(model)
        weights = {param.untyped_storage().data_ptr() for param in model.parameters()}
        kept = {}

        def keep(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                kept[storage.data_ptr()] = storage.nbytes()
            return tensor

        ids = torch.randint(0, 256, (2, tokens // 2))
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor), \
                torch.autocast("cpu", torch.bfloat16):
            model.get_base_model().model(input_ids=ids)  # the decoder layers; the logits are estimated apart
        return sum(kept.values())

    return (saved(2) - saved(1)) / tokens


@pytest.mark.parametrize("dropout", [0.0, 0.05])
def test_the_estimate_a_token_covers_what_autograd_keeps_without_liger(dropout):
    kept = saved_bytes_per_layer_token(dropout)
    widths = TINYLLAMA_WIDTHS["hidden_size"] + TINYLLAMA_WIDTHS["intermediate_size"]
    planned = training.ACTIVATION_BYTES[False] * widths
    assert kept <= planned < 2.5 * kept, (kept / widths, planned / widths)
