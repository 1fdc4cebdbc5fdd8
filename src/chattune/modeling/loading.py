"""Loading the model stack: the base model (the tiny one, a hub model at its pinned commit, or a local folder), its tokenizer, and the adapters on it, unmerged.

Adapters are never merged where a model is scored or trained on. Training applies them unmerged (and so does TRL's
own evaluation); merged into bf16 weights, an update below half a bf16 step of its weight rounds away, weight by
weight, and the merged "dpo" model is no longer the model DPO trained (tests/test_modeling.py). Only the export
merges (chattune.export.merging), in float32.
"""
from __future__ import annotations

import contextlib
import json
import warnings

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from chattune.common.errors import MissingOutput, ParamsError
from chattune.common.params import LoraParams
from chattune.common.paths import BASE_MODEL
from chattune.modeling.placement import accelerator, attention_kernels
from chattune.modeling.stacks import ADAPTERS, HUB_PIN, Level, check_stack

HALF = (torch.bfloat16, torch.float16)


def base_source() -> dict:
    """Arguments for from_pretrained: the local tiny model, or the pinned hub model."""
    if HUB_PIN.exists():
        pin = json.loads(HUB_PIN.read_text())
        return {"pretrained_model_name_or_path": pin["name"], "revision": pin["revision"]}
    if not (BASE_MODEL / "config.json").exists():
        raise MissingOutput(f"{BASE_MODEL}/ holds no model: run `dvc repro base_model` (or `dvc pull`) first")
    return {"pretrained_model_name_or_path": str(BASE_MODEL)}


def quiet_renamed_checkpointing() -> None:
    """transformers 5.24 renamed gradient checkpointing "activation checkpointing" and warns wherever the old names
    are used: by PEFT 0.21 and TRL 1.16 on every model they wrap, and by TRL's configs, whose default sets the old
    name. The old names still work (the trainers pass the old one, which older transformers take too): nothing a
    user could act on. Called where a base model is loaded, not on import."""
    warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing", category=FutureWarning)


def load_tokenizer():
    return AutoTokenizer.from_pretrained(**base_source())


def load_base_model(dtype: torch.dtype, attention: str | None = None):
    """The base model on the CPU, in `dtype` (compute_dtype of model.dtype, or float32 to merge). Trainers place it. `attention`:
    an attention implementation registered with transformers (packed SFT rows: chattune.training.packed_attention.ATTENTION)."""
    chosen = dict(attn_implementation=attention) if attention else {}
    attention_kernels()
    quiet_renamed_checkpointing()
    return AutoModelForCausalLM.from_pretrained(**base_source(), dtype=dtype, **chosen)


def stack(model, level: Level):
    """`model` with the adapters up to `level` applied, unmerged and frozen: base, base+SFT, or base+SFT+DPO
    (the DPO adapter was trained on base+SFT, so both stay active)."""
    adapters = ADAPTERS[level]
    check_stack(level)
    if not adapters:
        return model
    from peft import PeftModel  # here: importing peft takes seconds, which preprocess and base_model need not pay

    model = PeftModel.from_pretrained(model, adapters[0], adapter_name="sft")
    if level == "dpo":
        model.load_adapter(adapters[1], adapter_name="dpo")
        model.base_model.set_adapter(["sft", "dpo"], inference_mode=True)
    return model


def load_model(level: Level, dtype: torch.dtype, device: torch.device | None = None):
    """The stack up to `level`, in eval mode, in `dtype` on the accelerator (or `device`); the SFT and DPO adapters
    as one where that is exact (combined_adapters). Run it in run_in(model): in half precision its updates are then
    summed in float32 (lora_under_autocast)."""
    model = stack(load_base_model(dtype), level)
    if level == "dpo":
        model = combined_adapters(model)
    lora_under_autocast(model)
    return model.to(device or accelerator()).eval()


def combined_adapters(model):
    """base + SFT + DPO with the two adapters as one, unmerged: PEFT's "cat" combination puts their ranks side by
    side (A rows scaled as each adapter was, B columns as they are), so every adapted layer adds the same update
    in half the small matmuls and kernel launches. Exact for plain LoRA; a DoRA, rsLoRA or biased adapter stays
    stacked."""
    configs = [model.peft_config[name] for name in ("sft", "dpo")]
    if any(config.use_dora or config.use_rslora or config.lora_bias for config in configs):
        return model
    # PEFT makes the new adapter in its layers' dtype: a bf16 model would round the two float32 adapters to bf16.
    # Combined in float32, the rest goes back to its own dtype (bf16 -> float32 -> bf16 is exact).
    dtypes = {name: tensor.dtype for name, tensor in (*model.named_parameters(), *model.named_buffers())}
    model.float()
    model.add_weighted_adapter(["sft", "dpo"], [1.0, 1.0], "stack", combination_type="cat")
    model.set_adapter("stack")
    for name in ("sft", "dpo"):
        model.delete_adapter(name)
    model.base_model.set_adapter("stack", inference_mode=True)
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if name in dtypes:
            tensor.data = tensor.data.to(dtypes[name])
    return model


def check_targets(model, lora: LoraParams, key: str) -> None:
    """Stop, naming what the model has, when a LoRA target names no module of it (PEFT would raise deep inside
    the trainer)."""
    if lora.target_modules == "all-linear":
        return
    names = [name for name, _ in model.named_modules()]
    # PEFT's rule: a target is a module's name or the end of its dotted path
    missing = [target for target in lora.target_modules
               if not any(name == target or name.endswith(f".{target}") for name in names)]
    linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear)})
    if missing:
        raise ParamsError(f"{key}.lora.target_modules: {', '.join(missing)} not in the model; its linear layers are "
                         f"{', '.join(linear)} (or use all-linear)")


def lora_under_autocast(model, float32_sums: bool = True) -> None:
    """Fit every LoRA layer of `model` to autocast (mixed-precision training, and half-precision evaluation, which
    runs under autocast too: run_in): while autocast is on, the layer skips PEFT's cast of its input to the
    adapter's float32, and in eval mode it adds its update to its base layer's output in float32 (unless
    `float32_sums` is False: DPO's policy and reference, whose log-probs must be computed alike in both modes).

    The float32 sum keeps small updates where a model is scored. A half-precision base layer's output is a bf16 or
    fp16 number; an update smaller than half its last digit, added in that precision, rounds away, output by
    output: a few steps of LoRA are mostly such updates. SmolLM2's base + an SFT adapter of 6 steps scored an eval
    loss of 3.366 in bf16, 3.283 in float32 (from 3.625 before SFT): bf16 hid a quarter of what the adapter had
    learned. With the sum in float32 it scored 3.287. The activations after an adapted layer then stay float32
    (the residual stream among them); autocast casts them down for the next matmul. Training keeps the bf16 sum
    (its activations half the memory): the gradients reach the adapter all the same, and an adapter trained so
    scored 3.283 in float32, as float32 training's did (3.287).

    The skipped cast: PEFT keeps adapter weights in float32 on a bf16 or fp16 model and casts each adapted layer's
    input up to float32; under autocast the adapter's matmul casts it straight back down: two activation-sized
    copies per adapted layer, and two more in the backward pass. Copies (aten::copy_), these among them, took a
    fifth of the GPU time of every training run profiled on an H200 (bench/results/2026-12-04-nvidia-h200.json);
    skipping these removes 8% of the operations of a training step (TinyLlama's 22 layers, measured on the CPU).
    The adapter computes in half precision either way (only LoRA dropout's rescaling may round differently).
    Without autocast (a float32 model, the export) a float32 adapter needs float32 input, so there the cast stays:
    each call checks autocast on its input's device."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    def follow_autocast(layer, args):
        layer.cast_input_dtype_enabled = not torch.is_autocast_enabled(args[0].device.type)

    def sum_in_float32(base_layer, args, output):
        if not base_layer.training and torch.is_autocast_enabled(output.device.type) and output.dtype in HALF:
            return output.float()  # PEFT adds the update in the output's dtype and keeps it
        return None

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.register_forward_pre_hook(follow_autocast)
            if float32_sums:
                module.get_base_layer().register_forward_hook(sum_in_float32)


def run_in(model):
    """The context a half-precision model runs in outside a trainer (generation, log-probs, chat): autocast in its
    dtype, so that its LoRA updates are summed in float32 (lora_under_autocast); nothing for a float32 model."""
    dtype = getattr(model, "dtype", torch.float32)
    return torch.autocast(model.device.type, dtype=dtype) if dtype in HALF else contextlib.nullcontext()


def lora_config(lora: LoraParams):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
