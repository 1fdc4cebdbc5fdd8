"""Merge the adapters into a standalone model directory that loads with plain transformers, no peft.

    python -m stages.export --model dpo --out exported/dpo

After writing, it checks the export: the logits of `AutoModelForCausalLM.from_pretrained(<out>)` must match
the adapter-stacked model (adapters applied, not merged) on a probe conversation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from stages.modeling import load_base_model, load_model, load_tokenizer, prompt_ids, use_bf16
from stages.outputs import atomic_dir
from stages.paths import DPO_MODEL, SFT_MODEL

PROBE = [{"role": "system", "content": "You are a kind listener."},
         {"role": "user", "content": "I didn't get the job, and I really wanted it."}]
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}  # max |logit difference|


def stacked_model(stage: str):
    """The adapters applied on top of the base without merging: the reference for the check."""
    if stage == "base":
        return load_base_model()
    model = PeftModel.from_pretrained(load_base_model(), SFT_MODEL)
    if stage == "dpo":  # the DPO adapter was trained on base+SFT merged, so it goes on top of that
        model = PeftModel.from_pretrained(model.merge_and_unload(), DPO_MODEL)
    return model


def max_logit_difference(exported, reference, tokenizer) -> float:
    ids = torch.tensor([prompt_ids(tokenizer, PROBE)])
    with torch.no_grad():
        a = exported(input_ids=ids.to(exported.device)).logits.float()
        b = reference(input_ids=ids.to(reference.device)).logits.float()
    return (a - b).abs().max().item()


def export(stage: str, out: Path) -> float:
    tokenizer = load_tokenizer()
    with atomic_dir(out) as tmp:
        load_model(stage).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    dtype = torch.bfloat16 if use_bf16() else torch.float32
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=dtype).eval()
    difference = max_logit_difference(exported, stacked_model(stage).eval(), tokenizer)
    if difference > TOLERANCE[dtype]:
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
