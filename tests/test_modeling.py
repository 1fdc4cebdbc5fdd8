"""Where models run, and that the scored model is the model that was trained: in bf16, the adapters stay
unmerged, as PEFT applies them in training, because a merge rounds small updates away weight by weight."""
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from stages import modeling
from stages.modeling import load_model, placement
from stages.params import SEVEN_PROJECTIONS
from stages.paths import BASE_MODEL, DPO_MODEL, SFT_MODEL
from stages.stacks import record_base


@pytest.mark.parametrize("cuda, bf16, mps, expected", [
    (True, True, False, ("cuda", torch.bfloat16)),
    (True, False, False, ("cuda", torch.float32)),  # an older GPU: float32, as the trainers then use
    (False, False, True, ("mps", torch.float32)),
    (False, False, False, ("cpu", torch.float32)),
])
def test_placement_picks_the_accelerator_and_its_dtype(monkeypatch, cuda, bf16, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    device, dtype = placement()
    assert (device.type, dtype) == expected
    assert modeling.use_bf16() == (dtype == torch.bfloat16)  # the trainers follow the same choice
    assert modeling.cpu_only() == (device.type == "cpu")


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
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def unmerged_stack(dtype):
    """base + SFT + DPO adapters as PEFT applies them while training: nothing merged."""
    model = PeftModel.from_pretrained(modeling.load_base_model(dtype), SFT_MODEL, adapter_name="sft")
    model.load_adapter(DPO_MODEL, adapter_name="dpo")
    model.base_model.set_adapter(["sft", "dpo"], inference_mode=True)
    return model.eval()


@pytest.mark.parametrize("b_std", [1e-4, 3e-4, 1e-3])
def test_the_scored_bf16_model_is_the_unmerged_stack_and_a_naive_merge_is_not(tmp_path, monkeypatch, b_std):
    monkeypatch.chdir(tmp_path)
    small_update_stack(tmp_path, b_std)
    ids = torch.randint(3, 256, (4, 48), generator=torch.Generator().manual_seed(0))
    reference = logits(unmerged_stack(torch.bfloat16), ids)
    scored = logits(load_model("dpo", torch.device("cpu"), torch.bfloat16), ids)  # what evaluate and chat run
    torch.testing.assert_close(scored, reference)  # bf16 tolerance: rtol 1.6e-2

    naive = modeling.load_base_model(torch.bfloat16)
    for adapter in (SFT_MODEL, DPO_MODEL):
        naive = PeftModel.from_pretrained(naive, adapter).merge_and_unload()
    base_weight = modeling.load_base_model(torch.bfloat16).model.layers[0].self_attn.q_proj.weight
    # The update rounds away in many weights: below half a bf16 step of the weight it leaves it unchanged.
    assert (naive.model.layers[0].self_attn.q_proj.weight == base_weight).float().mean() > 0.05
    with pytest.raises(AssertionError):
        torch.testing.assert_close(logits(naive.eval(), ids), reference)


def test_models_run_where_placement_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_update_stack(tmp_path, 1e-3)
    model = load_model("dpo")
    assert {p.device.type for p in model.parameters()} == {placement()[0].type}
    assert {p.dtype for p in model.parameters()} == {placement()[1]}
    assert not model.training
    assert set(model.base_model.active_adapters) == {"sft", "dpo"}
