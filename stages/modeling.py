"""Loading the model stack: base, base+SFT, base+SFT+DPO. Every stage that needs a model goes through here,
so the DPO stage and evaluation can never disagree about which adapters sit on which base."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from stages.params import LoraParams
from stages.paths import BASE_MODEL, DPO_MODEL, SFT_MODEL

# The real profile's models/base/ holds only this file: the hub id and the commit it resolved to.
HUB_PIN = BASE_MODEL / "hub.json"
# Written beside each adapter: a fingerprint of the model it was trained on top of.
TRAINED_ON = "trained_on.json"

Stage = Literal["base", "sft", "dpo"]
ADAPTERS = {"base": [], "sft": [SFT_MODEL], "dpo": [SFT_MODEL, DPO_MODEL]}


class AdapterMismatch(SystemExit):
    """An adapter sits on a different base than the one it was trained on."""


def fingerprint(stage: Stage) -> str:
    """sha256 over what defines the model stack up to `stage`: the hub pin or the tiny model's files,
    then the weights of each adapter on it."""
    digest = hashlib.sha256()
    files = [HUB_PIN] if HUB_PIN.exists() else [BASE_MODEL / "config.json", BASE_MODEL / "model.safetensors"]
    for path in files + [adapter / "adapter_model.safetensors" for adapter in ADAPTERS[stage]]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def record_base(adapter_dir: Path, below: Stage) -> None:
    (Path(adapter_dir) / TRAINED_ON).write_text(json.dumps({"stack": below, "sha256": fingerprint(below)}) + "\n")


def check_base(adapter: Path, below: Stage) -> None:
    recorded = json.loads((adapter / TRAINED_ON).read_text())["sha256"]
    if recorded != fingerprint(below):
        raise AdapterMismatch(
            f"{adapter}/ was trained on a different {'base model' if below == 'base' else 'base + SFT adapter'} "
            f"than the one in models/ now ({TRAINED_ON} does not match). Run `dvc repro` to retrain it, or "
            "`dvc checkout` / `dvc exp apply <exp>` to restore matching models.")


def use_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def cpu_only() -> bool:
    """No GPU (CUDA or Apple's MPS): several processes then form a gloo group on the CPU (torchrun)."""
    return not torch.cuda.is_available() and not torch.backends.mps.is_available()


def base_source() -> dict:
    """Arguments for from_pretrained: the local tiny model, or the pinned hub model."""
    if HUB_PIN.exists():
        pin = json.loads(HUB_PIN.read_text())
        return {"pretrained_model_name_or_path": pin["name"], "revision": pin["revision"]}
    return {"pretrained_model_name_or_path": str(BASE_MODEL)}


def load_tokenizer():
    return AutoTokenizer.from_pretrained(**base_source())


def load_base_model():
    return AutoModelForCausalLM.from_pretrained(
        **base_source(), dtype=torch.bfloat16 if use_bf16() else torch.float32
    )


def load_model(stage: Stage):
    """The base model with the adapters up to `stage` merged in, ready for inference or a new adapter."""
    model = load_base_model()
    for below, adapter in zip(("base", "sft"), ADAPTERS[stage]):
        check_base(adapter, below)
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model


def prompt_ids(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt as the model sees it before replying: chat messages through the chat
    template with the generation prompt, or plain text (the seed format)."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    return tokenizer(prompt).input_ids


def generation_config(tokenizer, max_new_tokens: int, temperature: float) -> GenerationConfig:
    """Greedy at temperature 0, sampling exactly when temperature > 0 (the notebook passed a temperature
    without do_sample, so it was ignored); stops at EOS."""
    sampling = dict(do_sample=True, temperature=temperature) if temperature > 0 else dict(do_sample=False)
    return GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, **sampling)


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of prompts padded on the left, as generation needs, and its attention mask."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def completion_ids(tokenizer, prompt, completion) -> list[int]:
    """Token ids of a reply as training sees it: what prompt + completion adds after the prompt's ids
    (TRL's rule), so the end-of-turn token counts as part of the reply."""
    if isinstance(prompt, list):
        full = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=False)
    else:
        full = tokenizer(prompt + completion).input_ids + [tokenizer.eos_token_id]
    return full[len(prompt_ids(tokenizer, prompt)):]


def lora_config(lora: LoraParams) -> LoraConfig:
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
