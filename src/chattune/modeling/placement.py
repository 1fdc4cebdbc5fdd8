"""Where a model runs and in which dtype: one answer for every stage, tool and trainer."""
from __future__ import annotations

import os

import torch


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


def device_record() -> dict[str, str]:
    """Where this process ran, as the training and evaluation metrics record it: the device, and the GPUs it was
    shown (CUDA_VISIBLE_DEVICES, which each of a study's queue workers sets to its own GPU: tools.study; "all"
    where nothing narrowed them)."""
    device = placement()[0]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"device": name, "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "all")}


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


def attention_kernels() -> None:
    """On a CUDA GPU, leave cuDNN out of the kernels PyTorch's sdpa may pick (flash and memory-efficient
    attention remain). cuDNN's attention builds a graph for every new shape, and here shapes change with every
    batch and every generated token: on an H200 (torch 2.11) each call cost 2.5 ms of CPU time, 38% of a DPO
    step's, while the GPU waited (bench/results/2026-12-04-nvidia-h200.json, dpo_project's profile)."""
    if placement()[0].type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)
