"""The model stack and the one prompt format. Every stage and tool that touches a model goes through here,
so training, evaluation, chat and export agree on how the adapters are stacked (chattune.modeling.stacks says which
sit on which base), where the model runs, and which token ids a conversation becomes.

Adapters are never merged where a model is scored or trained on. Training applies them unmerged (and so
does TRL's own evaluation); merged into bf16 weights, an update below half a bf16 step of its weight
rounds away, weight by weight, and the merged "dpo" model is no longer the model DPO trained
(tests/test_modeling.py). Only `tools.export` merges, in float32, and saves float32 weights.
"""
from __future__ import annotations

import json
import math
import warnings

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast

from chattune.params import LoraParams, Params
from chattune.data.parsing import parse_dpo, parse_empathetic, read_bytes
from chattune.paths import BASE_MODEL, DPO_FILE, DPO_SUBDIR, ED_SPLITS, ED_SUBDIR, LENGTHS, SAMPLE_DIR
from chattune.modeling.stacks import ADAPTERS, HUB_PIN, Stage, check_stack


# transformers 5.24 renamed gradient checkpointing "activation checkpointing" and warns wherever the old names are
# used: by PEFT 0.21 and TRL 1.16 on every model they wrap, and by TRL's configs, whose default sets the old name.
# The old names still work (chattune.training.trainer passes the old one, which older transformers take too); nothing a user
# could act on.
warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing", category=FutureWarning)


class PromptTooLong(ValueError):
    """A conversation whose last message (with its reply) alone exceeds the token budget."""


# --- where a model runs -------------------------------------------------------------------------------

def placement() -> tuple[torch.device, torch.dtype]:
    """The device and dtype for every model this project runs: a CUDA GPU in bf16 where it has bf16 units
    (compute capability 8.0, Ampere, and later), in fp16 below that; Apple's MPS in float32 (its bf16 support
    depends on the OS); else the CPU in float32.

    A T4 (7.5, the notebook's Kaggle and Colab card) has no bf16 units, yet torch.cuda.is_bf16_supported()
    answers True there by emulation, far slower than fp16: the capability decides, not that answer."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.get_device_capability() >= (8, 0) else torch.float16
    if torch.backends.mps.is_available():
        return torch.device("mps"), torch.float32
    return torch.device("cpu"), torch.float32


def use_bf16() -> bool:
    """Whether the trainers train in bf16 mixed precision: exactly when the placement says bf16."""
    return placement()[1] == torch.bfloat16


def use_fp16() -> bool:
    """Whether the trainers train in fp16 mixed precision (base weights fp16, LoRA weights float32 as PEFT keeps
    them, the loss scaled): exactly when the placement says fp16."""
    return placement()[1] == torch.float16


def cpu_only() -> bool:
    """No GPU (CUDA or Apple's MPS): several processes then form a gloo group on the CPU (torchrun)."""
    return placement()[0].type == "cpu"


def embedder_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the sentence embedders that score replies (BERTScore's, the emotion judge's): float64 on a CPU,
    where float32 kernels round with the memory alignment of their inputs, so the same replies scored ~1e-9 apart
    from run to run; float32 elsewhere, since a GPU's float64 is slow (a T4 runs it at 1/32 of float32) or
    missing (Apple's MPS has none)."""
    return torch.float64 if device.type == "cpu" else torch.float32


def attention_kernels() -> None:
    """On a CUDA GPU, leave cuDNN out of the kernels PyTorch's sdpa may pick (flash and memory-efficient
    attention remain). cuDNN's attention builds a graph for every new shape, and here shapes change with every
    batch and every generated token: on an H200 (torch 2.11) each call cost 2.5 ms of CPU time, 38% of a DPO
    step's, while the GPU waited (bench/results/2026-12-04-nvidia-h200.json, dpo_project's profile)."""
    if placement()[0].type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


# --- loading ------------------------------------------------------------------------------------------

def base_source() -> dict:
    """Arguments for from_pretrained: the local tiny model, or the pinned hub model."""
    if HUB_PIN.exists():
        pin = json.loads(HUB_PIN.read_text())
        return {"pretrained_model_name_or_path": pin["name"], "revision": pin["revision"]}
    if not (BASE_MODEL / "config.json").exists():
        raise SystemExit(f"{BASE_MODEL}/ holds no model: run `dvc repro base_model` (or `dvc pull`) first")
    return {"pretrained_model_name_or_path": str(BASE_MODEL)}


def load_tokenizer():
    return AutoTokenizer.from_pretrained(**base_source())


def load_base_model(dtype: torch.dtype | None = None, attention: str | None = None):
    """The base model on the CPU, in the placement's dtype unless told otherwise. Trainers place it. `attention`:
    an attention implementation registered with transformers (packed SFT rows: chattune.training.packed_attention.ATTENTION)."""
    chosen = dict(attn_implementation=attention) if attention else {}
    attention_kernels()
    return AutoModelForCausalLM.from_pretrained(**base_source(), dtype=dtype or placement()[1], **chosen)


def stack(model, stage: Stage):
    """`model` with the adapters up to `stage` applied, unmerged and frozen: base, base+SFT, or base+SFT+DPO
    (the DPO adapter was trained on base+SFT, so both stay active)."""
    adapters = ADAPTERS[stage]
    check_stack(stage)
    if not adapters:
        return model
    from peft import PeftModel  # here: importing peft takes seconds, which preprocess and base_model need not pay

    model = PeftModel.from_pretrained(model, adapters[0], adapter_name="sft")
    if stage == "dpo":
        model.load_adapter(adapters[1], adapter_name="dpo")
        model.base_model.set_adapter(["sft", "dpo"], inference_mode=True)
    return model


def load_model(stage: Stage, device: torch.device | None = None, dtype: torch.dtype | None = None):
    """The stack up to `stage`, in eval mode, on the placement's device and dtype (or those given); the SFT and
    DPO adapters as one where that is exact (combined_adapters)."""
    where, kind = placement()
    model = stack(load_base_model(dtype or kind), stage)
    if stage == "dpo":
        model = combined_adapters(model)
    return model.to(device or where).eval()


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


def merged_model(stage: Stage):
    """The stack up to `stage` merged into plain float32 weights (what `tools.export` saves). In float32 the
    update survives the merge; cast the result to bf16 and small updates round away again."""
    from peft import PeftModel

    check_stack(stage)
    model = load_base_model(torch.float32)
    for adapter in ADAPTERS[stage]:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
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
        raise SystemExit(f"{key}.lora.target_modules: {', '.join(missing)} not in the model; its linear layers are "
                         f"{', '.join(linear)} (or use all-linear)")


def lora_casts_follow_autocast(model) -> None:
    """Let every LoRA layer of `model` skip PEFT's cast of its input to the adapter's float32 while autocast is on.

    PEFT keeps adapter weights in float32 on a bf16 or fp16 model and casts each adapted layer's input up to
    float32; in mixed-precision training (autocast) the adapter's matmul casts it straight back down: two
    activation-sized copies per adapted layer, and two more in the backward pass. Copies (aten::copy_), these
    among them, took a fifth of the GPU time of every training run profiled on an H200
    (bench/results/2026-12-04-nvidia-h200.json); skipping these removes 8% of the operations of a training step
    (TinyLlama's 22 layers, measured on the CPU). The numbers stay the same: the adapter computes in half
    precision either way (only LoRA dropout's rescaling may round differently). Without autocast (evaluation,
    chat, export) a float32 adapter needs float32 input, so there the cast stays: each call checks autocast on
    its input's device."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    def follow_autocast(layer, args):
        layer.cast_input_dtype_enabled = not torch.is_autocast_enabled(args[0].device.type)

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.register_forward_pre_hook(follow_autocast)


def lora_config(lora: LoraParams):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


# --- the tiny profile's tokenizer (base_model builds it; harness.bench too) ---------------------------------

# TinyLlama-1.1B-Chat-v1.0's chat template (its tokenizer_config.json), character for character.
TINYLLAMA_CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2, as in TinyLlama


def sample_texts() -> list[str]:
    texts = ["<|system|>", "<|user|>", "<|assistant|>"]
    for split in ED_SPLITS:
        path = SAMPLE_DIR / ED_SUBDIR / f"{split}.csv"
        turns = parse_empathetic(read_bytes(path), str(path)).records
        texts += [t.text for t in turns] + sorted({t.situation for t in turns})
    path = SAMPLE_DIR / DPO_SUBDIR / DPO_FILE
    for pair in parse_dpo(read_bytes(path), str(path)).records:
        texts += [pair[key][0]["content"] for key in ("prompt", "chosen", "rejected")]
    return texts


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    ))
    # Like TinyLlama's tokenizer: plain encoding starts with <s>; chat templates add no BOS.
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>",
        padding_side="right",
        chat_template=TINYLLAMA_CHAT_TEMPLATE,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )


# --- the one prompt format ----------------------------------------------------------------------------

def _text_ids(tokenizer, text: str) -> list[int]:
    """Token ids of rendered text, the way the model's own usage tokenizes it: the tokenizer's defaults,
    which add a BOS where the model expects one (TinyLlama: `<s>`; ChatML models: none). A template that
    writes the BOS itself is not given a second one."""
    ids = tokenizer(text).input_ids
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos:
        ids = ids[1:]
    return ids


def encode(tokenizer, prompt, completion=None) -> tuple[list[int], list[int]]:
    """Prompt ids as the model sees them before replying, and the reply's ids as training and scoring
    see them, ending at (and including) the first EOS: whatever a template writes after it (`\\n` after
    `</s>` or `<|im_end|>`) is neither trained nor scored.

    `prompt`: chat messages (rendered through the chat template) or plain text (the seed format);
    `completion`: the reply as [assistant message] or text, or None for the prompt alone. The reply's ids
    are what prompt + reply adds after the prompt's ids; the prompt's ids must be a prefix of them, so the
    model is trained on exactly the context it is given at generation time."""
    chat = isinstance(prompt, list)
    prompt_text = (tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) if chat
                   else prompt)
    prompt_ids = _text_ids(tokenizer, prompt_text)
    if completion is None:
        return prompt_ids, []
    full_ids = (_text_ids(tokenizer, tokenizer.apply_chat_template(prompt + completion, tokenize=False)) if chat
                else _text_ids(tokenizer, prompt + completion) + [tokenizer.eos_token_id])
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(f"the prompt's tokens are not a prefix of prompt + reply's tokens: {prompt_text[-40:]!r} "
                         "tokenizes differently alone than before the reply")
    reply = full_ids[len(prompt_ids):]
    eos = tokenizer.eos_token_id
    return prompt_ids, reply[: reply.index(eos) + 1] if eos in reply else reply


def fit(tokenizer, prompt, completion, budget: int) -> tuple[list, int]:
    """The prompt with its oldest turns dropped until prompt + reply fit in `budget` tokens, and how many
    messages were dropped. The system message and the last message always stay; turns go from the oldest,
    so that what remains starts with a user turn. Raises PromptTooLong if even that does not fit."""
    dropped = 0
    while sum(map(len, encode(tokenizer, prompt, completion))) > budget:
        if not isinstance(prompt, list):
            raise PromptTooLong("a plain-text prompt has no turns to drop")
        system = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
        turns = prompt[len(system):]
        if len(turns) <= 1:
            raise PromptTooLong(f"the last message alone (with the reply) exceeds {budget} tokens")
        cut = 1
        while cut < len(turns) - 1 and turns[cut]["role"] != "user":
            cut += 1
        prompt, dropped = system + turns[cut:], dropped + cut
    return prompt, dropped


# --- generation ---------------------------------------------------------------------------------------

def context_window() -> int:
    """How many tokens the base model reads at once (its config's max_position_embeddings): a prompt and its reply
    share them. Not sft.max_length, which only bounds what training was shown."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(**base_source()).max_position_embeddings


def reply_budget(params: Params, lengths: dict | None = None) -> int:
    """How many new tokens a reply may take in evaluation (and in the tools that answer as evaluation does):
    eval.max_new_tokens when it is a number. When it is "auto", enough for what the data teaches, so that a model is
    not cut off for saying what it was trained to say: the larger of the 95th percentiles of SFT's training replies
    and of DPO's chosen replies. It depends on the data and the base model's tokenizer only, never on a training
    preset, so every preset is scored alike. `lengths`: preprocess's measurements (metrics/lengths.json, read from
    there when not given)."""
    if params.eval.max_new_tokens != "auto":
        return params.eval.max_new_tokens
    if lengths is None:
        if not LENGTHS.exists():
            raise SystemExit(f"eval.max_new_tokens is auto, and {LENGTHS} (preprocess's reply lengths) is missing: "
                             "run `dvc repro preprocess` first, or give eval.max_new_tokens a number")
        lengths = json.loads(LENGTHS.read_text())
    return math.ceil(max(lengths["sft.train.reply_tokens.p95"], lengths["dpo.train.chosen_tokens.p95"]))


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
