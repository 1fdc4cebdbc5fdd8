"""One export, start to end: merge the stack in float32, write a folder or a GGUF beside the destination, load it
back and compare its logits with the unmerged stack, add the card and the record (export.json), and only
then swap it into place (tools.export is the command).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from chattune.basemodel.sources import gguf_path
from chattune.common.errors import ExportError
from chattune.common.outputs import atomic_dir
from chattune.common.params import load_params
from chattune.common.paths import METRICS_DIR
from chattune.evaluation.cards import recorded, stack_card
from chattune.export.gguf import (
    LLAMA_CPP_TYPES,
    llama_cpp_or_refuse,
    llama_quantize,
    modelfile,
    pre_tokenizer,
    write_gguf,
)
from chattune.export.merging import merged_model
from chattune.modeling.loading import load_model, load_tokenizer
from chattune.modeling.placement import accelerator
from chattune.modeling.prompt import encode
from chattune.modeling.stacks import ADAPTERS, fingerprint

PROBE = [{"role": "system", "content": "You are a kind listener."},
         {"role": "user", "content": "I didn't get the job, and I really wanted it."}]
TOLERANCE = 1e-4  # max |logit difference| of a float32 folder
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RECORD = "export.json"


def max_logit_difference(exported, reference, tokenizer) -> float:
    ids = torch.tensor([encode(tokenizer, PROBE)[0]])
    with torch.no_grad():
        a = exported(input_ids=ids.to(exported.device)).logits.float()
        b = reference(input_ids=ids.to(reference.device)).logits.float()
    return (a.cpu() - b.cpu()).abs().max().item()


def check_destination(out: Path) -> None:
    """An existing --out may be replaced only if it is an earlier export: its record lists the files it wrote,
    and the folder holds nothing else (a file of yours put there is never deleted)."""
    if not out.exists():
        return
    refuse = f"{out} exists and is not an earlier export"
    try:
        written = json.loads((out / RECORD).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        written = None
    if not isinstance(written, dict):
        raise ExportError(f"{refuse} (no {RECORD} listing the files it wrote); choose another --out or remove it")
    foreign = sorted(path.name for path in out.iterdir() if path.name not in {*written, RECORD})
    if foreign:
        raise ExportError(f"{refuse}: it also holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, "
                         "which this tool did not write; choose another --out or move them")


def write_files(level: str, tokenizer, folder: Path, fmt: str, dtype: str, gguf_type: str) -> tuple[str, dict]:
    """The merged model in `folder`; returns the GGUF file to load back (none for a folder) and what the GGUF
    writer kept at a higher precision."""
    model = merged_model(level)
    if fmt == "folder":
        model.to(DTYPES[dtype]).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return "", {}
    name, params = f"model-{gguf_type}.gguf", load_params()
    source = gguf_path(params.model.gguf) if params.model.gguf else None  # its pre-tokenizer name is llama.cpp's
    with tempfile.TemporaryDirectory() as scratch:  # the GGUF carries the tokenizer; its files are not kept
        tokenizer.save_pretrained(scratch)
        pre = pre_tokenizer(Path(scratch), source)
        if gguf_type in LLAMA_CPP_TYPES:  # f16 first, then llama.cpp's quantizer picks each tensor's type
            write_gguf(model, Path(scratch), Path(scratch) / "model-f16.gguf", "f16", f"{level} stack", pre)
            llama_quantize(Path(scratch) / "model-f16.gguf", folder / name, gguf_type)
            kept = {}
        else:
            kept = write_gguf(model, Path(scratch), folder / name, gguf_type, f"{level} stack", pre)
    (folder / "Modelfile").write_text(modelfile(tokenizer, name, params.sft.system_prompt))
    return name, {"kept_at_higher_precision": kept, "tokenizer_pre": pre}


def card(level: str, fmt: str):
    """The stack's card, for the merged model: loads with transformers (or a GGUF runner), not peft."""
    scores_path = METRICS_DIR / "eval.json"
    scores = json.loads(scores_path.read_text()) if scores_path.is_file() else {}
    model_card = stack_card(load_params(), *recorded(), scores, model=level)
    model_card.data.library_name = "gguf" if fmt == "gguf" else "transformers"
    model_card.data.tags = [*model_card.data.tags, "merged", *(["gguf"] if fmt == "gguf" else [])]
    return model_card


def export(level: str, out: Path, fmt: str = "folder", dtype: str = "float32", gguf_type: str = "q8_0") -> dict:
    check_destination(out)
    if fmt == "gguf" and gguf_type in LLAMA_CPP_TYPES:
        llama_cpp_or_refuse(gguf_type)  # before any work
    tokenizer = load_tokenizer()
    device = accelerator()
    # checked again just before the swap: a file put in --out meanwhile is not deleted either
    with atomic_dir(out, check=lambda: check_destination(out)) as tmp:
        gguf_file, extra = write_files(level, tokenizer, tmp, fmt, dtype, gguf_type)
        exported = AutoModelForCausalLM.from_pretrained(
            tmp, **({"gguf_file": gguf_file} if gguf_file else {}),
            dtype=torch.float32 if gguf_file else DTYPES[dtype]).to(device).eval()
        difference = max_logit_difference(exported, load_model(level, torch.float32, device), tokenizer)
        del exported
        if fmt == "folder" and dtype == "float32" and difference > TOLERANCE:
            raise ExportError(f"the merged model does not match the adapter stack: max |logit difference| "
                             f"{difference:.2e} (allowed {TOLERANCE:.0e}); nothing was written to {out}")
        if level != "base":
            card(level, fmt).save(tmp / "README.md")
        record = {
            "model": level, "stack": ["base", *(path.name for path in ADAPTERS[level])],
            "stack_sha256": fingerprint(level), "format": fmt,
            **({"gguf_type": gguf_type} if fmt == "gguf" else {"dtype": dtype}),
            "max_logit_difference": difference,
            "compared_with": "the float32 adapter stack, unmerged, on the probe conversation in chattune/export/exporting.py",
            **extra,
            "files": {path.name: path.stat().st_size for path in sorted(tmp.iterdir()) if path.is_file()},
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record
