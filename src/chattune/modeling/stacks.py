"""Which adapters sit on which base, and the fingerprints that prove it. No torch here: the human stage and
the vote page identify the models that answered without loading them.

Each adapter folder holds trained_on.json, the fingerprint of the stack it was trained on top of; loading an
adapter on anything else stops with AdapterMismatch.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from chattune.common.errors import AdapterMismatch
from chattune.common.paths import BASE_MODEL, DPO_MODEL, SFT_MODEL

# The real profile's models/base/ holds only this file: the hub id and the commit it resolved to.
HUB_PIN = BASE_MODEL / "hub.json"
# Written beside each adapter: a fingerprint of the model it was trained on top of.
TRAINED_ON = "trained_on.json"

# A level of the stack: the base model, base + SFT adapter, or base + SFT + DPO adapters.
Level = Literal["base", "sft", "dpo"]
MODELS: tuple[Level, ...] = ("base", "sft", "dpo")
ADAPTERS = {"base": [], "sft": [SFT_MODEL], "dpo": [SFT_MODEL, DPO_MODEL]}




def fingerprint(level: Level) -> str:
    """sha256 over what defines the model stack up to `level`: the hub pin or the base model's config and
    weights, then the weights of each adapter on it."""
    digest = hashlib.sha256()
    files = [HUB_PIN] if HUB_PIN.exists() else [BASE_MODEL / "config.json", *sorted(BASE_MODEL.glob("*.safetensors"))]
    for path in files + [adapter / "adapter_model.safetensors" for adapter in ADAPTERS[level]]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def record_base(adapter_dir: Path, below: Level) -> None:
    (Path(adapter_dir) / TRAINED_ON).write_text(json.dumps({"stack": below, "sha256": fingerprint(below)}) + "\n")


def check_base(adapter: Path, below: Level) -> None:
    if not (adapter / TRAINED_ON).is_file():
        raise AdapterMismatch(f"{adapter}/ holds no adapter: run `dvc repro` (or `dvc pull`) first")
    recorded = json.loads((adapter / TRAINED_ON).read_text())["sha256"]
    if recorded != fingerprint(below):
        raise AdapterMismatch(
            f"{adapter}/ was trained on a different {'base model' if below == 'base' else 'base + SFT adapter'} "
            f"than the one in models/ now ({TRAINED_ON} does not match). Run `dvc repro` to retrain it, or "
            "`dvc checkout` / `dvc exp apply <exp>` to restore matching models.")


def check_stack(level: Level) -> None:
    """Every adapter up to `level` sits on the stack it was trained on."""
    for below, adapter in zip(MODELS, ADAPTERS[level]):
        check_base(adapter, below)
