"""Merge the adapters into one model that runs without peft: a transformers folder, or GGUF for llama.cpp and Ollama.

    python -m tools.export --model dpo --out exported/dpo                          # float32 folder
    python -m tools.export --model dpo --out exported/dpo-bf16 --dtype bfloat16    # half the size
    python -m tools.export --model dpo --out exported/dpo-gguf --format gguf --gguf-type q8_0

The merge is always done in float32 (merged into bf16 weights, an update smaller than half a bf16 step of its
weight rounds away); a smaller dtype or a GGUF type is the last step. Every export is then loaded back
(transformers, or transformers' GGUF reader) and its logits on a probe conversation compared with the float32
adapter stack: the largest difference is printed and recorded in export.json beside the files, with what was
exported from which stack. A float32 folder must match within 1e-4. The folder also gets the stack's model card
(README.md), and a GGUF export an Ollama Modelfile.

The export is written to a temporary folder beside --out and renamed into place when it is complete, so a runner
never finds half a file; an existing --out is replaced only if it is an earlier export holding only the files its
export.json lists.
"""
from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from chattune.common.errors import ExportError, run
from chattune.export.exporting import DTYPES, export
from chattune.export.gguf import LLAMA_CPP_TYPES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["base", "sft", "dpo"], default="dpo")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (replaced if an earlier export)")
    parser.add_argument("--format", choices=["folder", "gguf"], default="folder")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="the folder's weights, cast after the float32 merge (--format folder)")
    parser.add_argument("--gguf-type", choices=["f16", "q8_0", *LLAMA_CPP_TYPES], default="q8_0",
                        help="the GGUF tensor type; q4_k_m and q5_k_m through llama.cpp's quantizer (llama-cpp-python)")
    args = parser.parse_args(argv)
    if args.format == "gguf" and args.dtype != "float32":
        parser.error("--dtype applies to --format folder; a GGUF export takes --gguf-type")
    try:
        record = export(args.model, args.out, args.format, args.dtype, args.gguf_type)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise ExportError(f"the disk filled while writing {args.out}; nothing was left there") from None
    size = sum(record["files"].values()) / 2**20
    print(f"export: {args.model} -> {args.out}/ ({args.format}, {record.get('dtype') or record['gguf_type']}, "
          f"{size:.1f} MiB); max logit difference to the float32 adapter stack {record['max_logit_difference']:.2e}")


if __name__ == "__main__":
    run(main, "export", sys.argv[1:])
