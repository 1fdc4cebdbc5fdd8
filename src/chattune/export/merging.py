"""The adapter stack merged into one model, for the export (tools.export): in float32, so that no update rounds away."""
from __future__ import annotations

import torch

from chattune.modeling.loading import load_base_model
from chattune.modeling.stacks import ADAPTERS, Level, check_stack


def merged_model(level: Level):
    """The stack up to `level` merged into plain float32 weights (what `tools.export` saves). In float32 the
    update survives the merge; cast the result to bf16 and small updates round away again."""
    from peft import PeftModel

    check_stack(level)
    model = load_base_model(torch.float32)
    for adapter in ADAPTERS[level]:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model
