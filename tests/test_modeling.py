"""Where models run, and that the scored model is the model that was trained: in bf16, the adapters stay
unmerged, as PEFT applies them in training, because a merge rounds small updates away weight by weight."""
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from chattune.common.errors import ParamsError
from chattune.common.params import SEVEN_PROJECTIONS
from chattune.common.paths import BASE_MODEL, DPO_MODEL, SFT_MODEL
from chattune.modeling import placement as placing
from chattune.modeling.loading import load_base_model, load_model, lora_under_autocast, run_in
from chattune.modeling.stacks import record_base
from conftest import place_on


@pytest.mark.parametrize("cuda, capability, mps, cpu_bf16, expected", [
    (True, (9, 0), False, False, ("cuda", torch.bfloat16)),  # H100/H200
    (True, (8, 0), False, False, ("cuda", torch.bfloat16)),  # A100: bf16 units from Ampere on
    (True, (7, 5), False, True, ("cuda", torch.float16)),  # T4: bf16 only emulated, though torch answers True
    (False, None, True, True, ("mps", torch.float32)),
    (False, None, False, True, ("cpu", torch.float32)),  # bf16 units (AVX512-BF16, AMX): bf16 a choice, not auto
    (False, None, False, False, ("cpu", torch.float32)),
])
def test_auto_picks_the_accelerator_and_the_dtype_its_units_run(monkeypatch, cuda, capability, mps, cpu_bf16,
                                                                  expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # what a T4 answers
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    real = torch.cpu.get_capabilities()
    monkeypatch.setattr(torch.cpu, "get_capabilities",
                        lambda: {**real, "avx512_bf16": cpu_bf16, "amx_bf16": False})
    device, dtype = placing.accelerator(), placing.compute_dtype("auto")
    assert (device.type, dtype) == expected
    # the trainers follow the same choice: bf16 or fp16 mixed precision, or neither
    assert (placing.use_bf16("auto"), placing.use_fp16("auto")) == (dtype == torch.bfloat16, dtype == torch.float16)
    assert placing.cpu_only() == (device.type == "cpu")
    # float32 is float32 everywhere; bfloat16 only where units run it, else refused naming the key
    assert placing.compute_dtype("float32") == torch.float32 and not placing.use_bf16("float32")
    if dtype == torch.bfloat16 or cpu_bf16 and device.type == "cpu":
        assert placing.compute_dtype("bfloat16") == torch.bfloat16
    else:
        with pytest.raises(ParamsError, match=f"model.dtype: bfloat16 needs bf16 units, which this {device.type} "
                                              "lacks"):
            placing.compute_dtype("bfloat16")


def test_this_machines_cpu_answers_from_torchs_own_report():
    """The units are read off torch.cpu.get_capabilities(), never guessed from the model or the CPU's name."""
    report = torch.cpu.get_capabilities()
    assert placing.cpu_has_bf16_units() == bool(report.get("avx512_bf16") or report.get("amx_bf16"))


def small_update_stack(root, b_std: float) -> None:
    """A random Llama with weights of std 0.02 in models/base/, and SFT and DPO adapters whose B matrices
    have entries of std `b_std` (DPO's range at lr 5e-6), as the stages would leave them."""
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.02,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / BASE_MODEL)
    below = "base"
    for folder, seed in ((SFT_MODEL, 1), (DPO_MODEL, 2)):
        torch.manual_seed(seed)
        model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, lora_alpha=16, target_modules=SEVEN_PROJECTIONS))
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, b_std)
        model.save_pretrained(root / folder)
        record_base(root / folder, below)
        below = "sft"


def logits(model, ids) -> torch.Tensor:
    """As evaluate runs a model: under autocast in its dtype when that is half precision (run_in)."""
    with torch.no_grad(), run_in(model):
        return model(input_ids=ids).logits.float()


def unmerged_stack(dtype):
    """base + SFT + DPO adapters as PEFT applies them while training: nothing merged."""
    model = PeftModel.from_pretrained(load_base_model(dtype), SFT_MODEL, adapter_name="sft")
    model.load_adapter(DPO_MODEL, adapter_name="dpo")
    model.base_model.set_adapter(["sft", "dpo"], inference_mode=True)
    lora_under_autocast(model)  # as the trainers fit every LoRA layer
    return model.eval()


def test_a_lora_update_below_half_a_bf16_step_is_kept_under_autocast_and_rounded_away_without():
    """A base output of 256 (a bf16 step of 2 there) and an update of 0.25: added in bf16, as PEFT adds it, the update
    is gone; evaluated under autocast, with the layer fitted by lora_under_autocast, it is summed in float32 and
    kept. The real case: a few SFT steps on SmolLM2 (tests/test_real_model.py)."""

    class Projection(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4, bias=False)

        def forward(self, x):
            return self.proj(x)

    base = Projection()
    base.proj.weight.data = torch.eye(4) * 256
    model = get_peft_model(base.to(torch.bfloat16), LoraConfig(r=1, lora_alpha=1, target_modules=["proj"]))
    layer = model.base_model.model.proj
    layer.lora_A["default"].weight.data.fill_(0.5)
    layer.lora_B["default"].weight.data.fill_(0.125)  # 4 inputs of 1 x 0.5 x 0.125: 0.25 on every output
    lora_under_autocast(model)
    x = torch.ones(1, 4, dtype=torch.bfloat16)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            trained = model(x)  # training keeps the bf16 sum: its activations take half the memory
            kept = model.eval()(x)
        rounded = model(x)
    assert rounded.dtype == trained.dtype == torch.bfloat16
    assert torch.equal(rounded.float(), torch.full((1, 4), 256.0)) and torch.equal(trained, rounded)
    assert kept.dtype == torch.float32 and torch.equal(kept, torch.full((1, 4), 256.25))


@pytest.mark.parametrize("b_std", [1e-4, 3e-4, 1e-3])
def test_the_scored_bf16_model_is_the_unmerged_stack_and_a_naive_merge_is_not(tmp_path, monkeypatch, b_std):
    monkeypatch.chdir(tmp_path)
    small_update_stack(tmp_path, b_std)
    ids = torch.randint(3, 256, (4, 48), generator=torch.Generator().manual_seed(0))
    reference = logits(unmerged_stack(torch.bfloat16), ids)
    scored = logits(load_model("dpo", torch.bfloat16, torch.device("cpu")), ids)  # what evaluate and chat run
    # Evaluate and chat run the two adapters combined into one (combined_adapters): its update is rounded to bf16
    # once, the stacked pair's twice, so a logit may differ by one bf16 step (2**-7 of its size), no more.
    torch.testing.assert_close(scored, reference, rtol=0, atol=2**-7 * reference.abs().max().item())

    naive = load_base_model(torch.bfloat16)
    for adapter in (SFT_MODEL, DPO_MODEL):
        naive = PeftModel.from_pretrained(naive, adapter).merge_and_unload()
    base_weight = load_base_model(torch.bfloat16).model.layers[0].self_attn.q_proj.weight
    # The update rounds away in many weights: below half a bf16 step of the weight it leaves it unchanged.
    assert (naive.model.layers[0].self_attn.q_proj.weight == base_weight).float().mean() > 0.05
    with pytest.raises(AssertionError):
        torch.testing.assert_close(logits(naive.eval(), ids), reference)


@pytest.mark.parametrize("device, cudnn_attention", [("cuda", False), ("cpu", True)])
def test_loading_a_model_on_a_cuda_gpu_leaves_cudnn_out_of_sdpa(tmp_path, monkeypatch, device, cudnn_attention):
    """cuDNN's attention rebuilds its graph for each new shape (2.5 ms of CPU a call on an H200): every stage
    that loads a model turns it off there, and flash and memory-efficient attention stay on."""
    monkeypatch.chdir(tmp_path)
    small_update_stack(tmp_path, 1e-3)
    place_on(monkeypatch, device, torch.float32)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        load_base_model(torch.float32)
        assert torch.backends.cuda.cudnn_sdp_enabled() is cudnn_attention
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_models_run_on_the_accelerator_in_the_dtype_asked(tmp_path, monkeypatch, dtype):
    monkeypatch.chdir(tmp_path)
    small_update_stack(tmp_path, 1e-3)
    model = load_model("dpo", dtype)
    assert {p.device.type for p in model.parameters()} == {placing.accelerator().type}
    # the base weights in `dtype`, the adapters' float32, as PEFT keeps them
    assert {p.dtype for name, p in model.named_parameters() if "lora_" not in name} == {dtype}
    assert not model.training
    assert model.base_model.active_adapters == ["stack"]  # the two adapters as one (combined_adapters)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2**-7)])
def test_the_combined_adapter_is_the_stacked_pair(tmp_path, monkeypatch, dtype, tolerance):
    """What evaluate and chat run for "dpo": one adapter in place of two, the same logits (float32: to rounding;
    bf16: within one bf16 step of the largest, the adapters' own weights staying float32) and the same greedy replies."""
    monkeypatch.chdir(tmp_path)
    small_update_stack(tmp_path, 1e-2)  # updates large enough to move greedy tokens
    combined, stacked = load_model("dpo", dtype, torch.device("cpu")), unmerged_stack(dtype)
    assert {p.dtype for name, p in combined.named_parameters() if "lora_" in name} == {torch.float32}
    ids = torch.randint(3, 256, (4, 32), generator=torch.Generator().manual_seed(1))
    reference = logits(stacked, ids)
    torch.testing.assert_close(logits(combined, ids), reference, rtol=0, atol=tolerance * reference.abs().max().item())
    assert not torch.allclose(reference, logits(load_model("sft", dtype, torch.device("cpu")), ids))  # DPO matters
    greedy = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(combined.generate(ids, **greedy), stacked.generate(ids, **greedy))


def test_lora_layers_skip_the_float32_input_cast_under_autocast_and_keep_it_without():
    """Mixed-precision training (autocast) runs the adapters on the bf16 input itself: the same loss and gradients
    as PEFT's cast to float32 and autocast's cast back. Without autocast (evaluate, chat) the float32 adapter
    still gets float32 input: without it the matmul would fail on mixed dtypes."""
    import copy

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=SEVEN_PROJECTIONS, init_lora_weights=False)
    peft_casts = get_peft_model(LlamaForCausalLM(config).to(torch.bfloat16), lora)
    assert {p.dtype for name, p in peft_casts.named_parameters() if "lora_" in name} == {torch.float32}
    follows = copy.deepcopy(peft_casts)
    lora_under_autocast(follows)
    seen = []  # the dtype each adapter's first matmul receives
    follows.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].register_forward_pre_hook(
        lambda module, args: seen.append(args[0].dtype))
    ids = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(1))

    def loss_and_gradients(model):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.item(), {name: p.grad for name, p in model.named_parameters() if p.requires_grad}

    loss, gradients = loss_and_gradients(follows)
    assert seen == [torch.bfloat16]  # not cast up
    expected_loss, expected_gradients = loss_and_gradients(peft_casts)
    assert loss == expected_loss
    assert gradients.keys() == expected_gradients.keys()
    assert all(torch.equal(gradients[name], expected_gradients[name]) for name in gradients)
    seen.clear()

    def without_autocast(model):
        with torch.no_grad():
            return model(input_ids=ids).logits

    torch.testing.assert_close(without_autocast(follows), without_autocast(peft_casts), rtol=0, atol=0)
    assert seen == [torch.float32]  # cast up, as PEFT does
