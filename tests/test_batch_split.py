"""Every optimizer step trains the preset's examples_per_step examples, whatever the number of processes; on a GPU
with room, a process's share goes in fewer, fuller micro-batches (sft.fill_gpu / dpo.fill_gpu), planned from an
estimate of the memory a token takes, which must cover what autograd really keeps."""
import pytest
import torch
from accelerate import PartialState
from accelerate.data_loader import BatchSamplerShard
from peft import get_peft_model
from torch.utils.data import BatchSampler
from transformers import AutoModelForCausalLM, LlamaConfig

from chattune.common.errors import ParamsError
from chattune.common.params import SEVEN_PROJECTIONS, LoraParams, load_params
from chattune.modeling.loading import lora_config, lora_under_autocast
from chattune.training import batching as training
from chattune.training.batching import (
    PassOfWholeSteps,
    WholeSteps,
    batch_split,
    check_step,
    micro_batch,
    token_bytes,
    weight_bytes,
)
from conftest import ROOT

TINYLLAMA_WIDTHS = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4)


def test_a_share_goes_in_equal_micro_batches_never_larger_than_the_presets_unless_they_fit():
    # dpo1 on one process: 16 pairs, micro-batches of at most 2 where nothing says more fits
    assert micro_batch(16, 2) == 2
    assert micro_batch(16, 2, lambda size: size <= 16.0) == 16
    assert micro_batch(16, 2, lambda size: size <= 15.9) == 8
    assert micro_batch(16, 2, lambda size: size <= 0.5) == 2  # not even the preset's fits: the preset stands
    # sft5: 12 examples a step, 3 at a time; on two processes 6 each; on eight, 12 do not share (batch_split stops)
    assert micro_batch(12, 3) == 3 and micro_batch(6, 3) == 3
    assert micro_batch(6, 3, lambda size: size <= 5.0) == 3  # a micro-batch of 5 would leave an unequal one
    assert micro_batch(4, 3) == 2  # a share the preset's 3 does not divide: its largest divisor below 3


@pytest.mark.parametrize("processes, split", [(1, (2, 8, 2)), (2, (2, 4, 2)), (8, (2, 1, 2)), (16, (1, 1, 1))])
def test_any_number_of_processes_trains_dpo1s_16_pairs_a_step(processes, split):
    dpo1 = load_params(ROOT / "params.yaml").dpo
    assert (dpo1.preset, dpo1.examples_per_step, dpo1.batch_size, dpo1.eval_batch_size) == ("dpo1", 16, 2, 2)
    micro, accum, _ = batch_split(dpo1, "dpo", False, processes)  # this machine: no CUDA GPU
    assert (micro, accum, _) == split and micro * accum * processes == 16


def test_a_step_that_cannot_be_shared_evenly_stops_before_training():
    dpo3 = load_params(ROOT / "params.yaml").dpo.model_copy(update={"examples_per_step": 24, "batch_size": 3})
    with pytest.raises(ParamsError, match=r"dpo.examples_per_step: 24 examples a step cannot be shared evenly by 16 "
                                         r"processes"):
        batch_split(dpo3, "dpo", False, 16)


@pytest.mark.parametrize("processes, micro", [(2, 4), (4, 2), (8, 2), (16, 1)])
def test_every_number_of_processes_trains_the_same_examples_in_each_step(processes, micro):
    """What one process trains in each step, as accelerate deals the micro-batches of WholeSteps' order to the
    processes in turn (BatchSamplerShard, as the trainer's dataloader does under DDP): over all processes, the very
    examples one process trains in that step, and the same number of steps."""
    lengths = [(7 * i) % 23 for i in range(100)]

    def steps(processes: int, micro: int) -> list[set[int]]:
        order = list(WholeSteps(lengths, 16, seed=0))  # every process draws the order with the same seed
        accum = 16 // processes // micro
        shards = [list(BatchSamplerShard(BatchSampler(order, micro, drop_last=False), processes, rank))
                  for rank in range(processes)]
        assert len({len(shard) for shard in shards}) == 1  # no process waits on a short shard
        return [{i for shard in shards for batch in shard[step * accum:(step + 1) * accum] for i in batch}
                for step in range(len(shards[0]) // accum)]

    alone = steps(1, 4)
    assert len(alone) == 6 and all(len(step) == 16 for step in alone)
    assert steps(processes, micro) == alone


def test_a_resumed_run_on_several_processes_draws_the_pass_it_resumes():
    """Resumed mid-pass on two processes, the trainer wraps accelerate's shard of the order in a skipper, and its
    set_epoch no longer reaches WholeSteps: the run drew the first pass's order again. PassOfWholeSteps sets the
    pass from the steps trained, through the wrappers."""
    from accelerate.data_loader import prepare_data_loader, skip_first_batches
    from torch.utils.data import DataLoader
    from transformers import TrainerControl, TrainerState

    sampler = WholeSteps([(7 * i) % 23 for i in range(50)], step=16, seed=0)  # 3 steps a pass
    shard = prepare_data_loader(DataLoader(list(range(50)), sampler=sampler, batch_size=4), device=torch.device("cpu"),
                                num_processes=2, process_index=0, put_on_device=False)
    skip_first_batches(shard, 2).set_epoch(2)  # what transformers does with a run resumed in its third pass
    assert sampler.epoch == 0
    PassOfWholeSteps().on_epoch_begin(None, TrainerState(global_step=7), TrainerControl(), train_dataloader=shard)
    assert sampler.epoch == 2


def small_model(layers: int = 2):
    config = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512)
    return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def test_dpo1_on_a_gpu_with_room_trains_its_16_pairs_in_one_micro_batch_and_on_a_cpu_as_written(monkeypatch):
    dpo1 = load_params(ROOT / "params.yaml").dpo
    assert dpo1.fill_gpu
    policy, reference = small_model(), small_model()
    assert batch_split(dpo1, "dpo", False, 1, policy, reference) == (2, 8, 2)  # this machine: no CUDA GPU

    # a GPU whose free memory holds both models and 16 pairs of max_length tokens (two rows each), and no more
    pairs_16 = 16 * 2 * dpo1.max_length * token_bytes(policy.config, liger=False)
    free = (weight_bytes(policy) + weight_bytes(reference) + pairs_16) / training.USABLE_MEMORY
    PartialState()  # made on the CPU before CUDA is faked: accelerate keeps the first one for the process
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for card, split in ((free + 1, (16, 1, 16)), (free - 1, (8, 2, 8))):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(card), 2**40))
        assert batch_split(dpo1, "dpo", False, 1, policy, reference) == split
    # two processes on such cards: each takes half a step, in one micro-batch
    assert batch_split(dpo1, "dpo", False, 2, policy, reference) == (8, 1, 8)
    # an SFT example is one row, a DPO pair two: where 8 pairs fit, 16 examples of the same length do
    assert batch_split(dpo1, "sft", False, 1, policy, reference) == (16, 1, 16)
    # Liger's kernels keep less a token, so the same card holds more
    assert token_bytes(policy.config, liger=True) < token_bytes(policy.config, liger=False)
    # and false keeps the preset's micro-batch on any card
    assert batch_split(dpo1.model_copy(update={"fill_gpu": False}), "dpo", False, 1, policy, reference) == (2, 8, 2)
    assert PartialState().device.type == "cpu"  # the tests after this one still train on the CPU


def test_whole_steps_group_a_steps_examples_by_length_and_leave_out_only_the_last_partial_step():
    lengths = [(7 * i) % 23 for i in range(50)]
    sampler = WholeSteps(lengths, step=16, seed=3)
    order = list(sampler)
    assert len(order) == len(sampler) == 48 and len(set(order)) == 48  # three whole steps, no example twice
    steps = [order[i : i + 16] for i in range(0, 48, 16)]
    for step in steps[1:]:  # within a step, longest first (the first step also holds the longest example overall)
        assert [lengths[i] for i in step] == sorted((lengths[i] for i in step), reverse=True)
    assert max(lengths[i] for i in steps[0]) == max(lengths[i] for i in order)
    # The order depends on the seed and the pass alone, not on what else drew from torch's generators (dropout, an
    # evaluation, another process's batch shapes): every process, and a run resumed mid-pass, draws it again.
    torch.manual_seed(0)
    torch.rand(1000)
    assert list(WholeSteps(lengths, 16, seed=3)) == order
    sampler.set_epoch(1)
    assert list(sampler) != order and list(sampler) == list(sampler)  # another pass, drawn alike every time
    with pytest.raises(ParamsError, match=r"sft.examples_per_step: a step of 16 is more than the 10 training examples"):
        check_step(10, 16, "sft", "examples")


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
        lora_under_autocast(model)
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
