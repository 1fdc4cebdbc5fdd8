"""Where a model runs and in which dtype: one answer for every stage, tool and trainer."""
from __future__ import annotations

import os

import torch

from chattune.common.errors import ParamsError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # model.dtype, where not "auto"


def accelerator() -> torch.device:
    """Where every model this project runs goes: a CUDA GPU, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), as torch reports it: on 2 threads of an
    AVX512-BF16 CPU, a 1024x2048x2048 matmul ran at 135 GFLOP/s in bf16 against 62 in float32. Without the units
    torch emulates bf16, slower than float32."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def compute_dtype(choice: str) -> torch.dtype:
    """The dtype models run in for model.dtype `choice` on this machine. "auto": bf16 on a CUDA GPU with bf16 units
    (compute capability 8.0, Ampere, and later), fp16 below that; float32 on Apple's MPS (its bf16 support depends
    on the OS) and on a CPU. "float32" everywhere; "bfloat16" only where the hardware has the units, a CPU's
    included.

    On a CPU, bf16 is a choice, not the default: the SmolLM2 CPU profile ran 1.31x faster end to end in bf16 on
    2 AVX512-BF16 cores, with SFT's eval loss float32's, but its greedy replies differed enough that none of the
    six differences float32's run decided was decided (docs/speed.md).

    A T4 (7.5, the notebook's Kaggle and Colab card) has no bf16 units, yet torch.cuda.is_bf16_supported()
    answers True there by emulation, far slower than fp16: the capability decides, not that answer."""
    device = accelerator()
    if device.type == "cuda":
        bf16_units = torch.cuda.get_device_capability() >= (8, 0)
        best = torch.bfloat16 if bf16_units else torch.float16
    elif device.type == "mps":
        bf16_units, best = False, torch.float32
    else:
        bf16_units, best = cpu_has_bf16_units(), torch.float32
    if choice == "auto":
        return best
    if choice == "bfloat16" and not bf16_units:
        raise ParamsError(f"model.dtype: bfloat16 needs bf16 units, which this {device.type} lacks (torch would "
                          f"emulate them, slower than {str(best).removeprefix('torch.')}, which auto picks here)")
    return DTYPES[choice]


def device_record(dtype: torch.dtype) -> dict[str, str]:
    """Where this process ran, as the training and evaluation metrics record it: the device, the GPUs it was
    shown (CUDA_VISIBLE_DEVICES, which each of a study's queue workers sets to its own GPU: tools.study; "all"
    where nothing narrowed them), and the dtype the models ran in."""
    device = accelerator()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"device": name, "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "all"),
            "dtype": str(dtype).removeprefix("torch.")}


def use_bf16(choice: str) -> bool:
    """Whether the trainers train in bf16 mixed precision (autocast; LoRA weights float32, as PEFT keeps them):
    exactly when model.dtype `choice` comes to bf16 here, on a GPU or a CPU alike."""
    return compute_dtype(choice) == torch.bfloat16


def use_fp16(choice: str) -> bool:
    """Whether the trainers train in fp16 mixed precision (base weights fp16, LoRA weights float32 as PEFT keeps
    them, the loss scaled): exactly when model.dtype `choice` comes to fp16 here."""
    return compute_dtype(choice) == torch.float16


def cpu_only() -> bool:
    """No GPU (CUDA or Apple's MPS): several processes then form a gloo group on the CPU (torchrun)."""
    return accelerator().type == "cpu"


def attention_kernels() -> None:
    """On a CUDA GPU, leave cuDNN out of the kernels PyTorch's sdpa may pick (flash and memory-efficient
    attention remain). cuDNN's attention builds a graph for every new shape, and here shapes change with every
    batch and every generated token: on an H200 (torch 2.11) each call cost 2.5 ms of CPU time, 38% of a DPO
    step's, while the GPU waited (bench/results/2026-12-04-nvidia-h200.json, dpo_project's profile)."""
    if accelerator().type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)
