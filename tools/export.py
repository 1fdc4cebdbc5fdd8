"""Merge the adapters into a standalone model directory that loads with plain transformers, no peft.

    python -m tools.export --model dpo --out exported/dpo

The merge is done in float32 and the weights are saved in float32: cast to bf16, an update smaller than
half a bf16 step of its weight would round away. After writing, it checks the export on the accelerator
when there is one: the logits of `AutoModelForCausalLM.from_pretrained(<out>)` must match the unmerged
adapter stack, both in float32, on a probe conversation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from stages.modeling import encode, load_model, load_tokenizer, merged_model, placement
from stages.outputs import atomic_dir

PROBE = [{"role": "system", "content": "You are a kind listener."},
         {"role": "user", "content": "I didn't get the job, and I really wanted it."}]
TOLERANCE = 1e-4  # max |logit difference| in float32


def max_logit_difference(exported, reference, tokenizer) -> float:
    ids = torch.tensor([encode(tokenizer, PROBE)[0]])
    with torch.no_grad():
        a = exported(input_ids=ids.to(exported.device)).logits.float()
        b = reference(input_ids=ids.to(reference.device)).logits.float()
    return (a - b).abs().max().item()


def export(stage: str, out: Path) -> float:
    tokenizer = load_tokenizer()
    with atomic_dir(out) as tmp:
        merged_model(stage).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    device = placement()[0]
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).to(device).eval()
    difference = max_logit_difference(exported, load_model(stage, device, torch.float32), tokenizer)
    if difference > TOLERANCE:
        raise SystemExit(f"export: {out} does not match the adapter stack: max |logit difference| {difference:.2e}")
    return difference


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["base", "sft", "dpo"], default="dpo")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    difference = export(args.model, args.out)
    print(f"export: {args.model} -> {args.out}/ (logits match the adapter stack: max difference {difference:.1e})")


if __name__ == "__main__":
    main(sys.argv[1:])
