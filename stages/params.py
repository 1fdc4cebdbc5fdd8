"""The one typed schema for params.yaml. Every stage calls `load_params()` first.

params.yaml is composed from conf/ (Hydra config groups) by `dvc exp run`; the committed file is the
default composition.

An unknown key, a missing key or a bad value stops the stage with a message that names the key
(e.g. `sft.lora.r: Input should be greater than 0`). Numbers such as `2e-4`, which YAML reads as a
string, are coerced to floats.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = Path("params.yaml")
CONF_DIR = Path("conf")
SEVEN_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# A count: a whole number above 0 (YAML's true, false and 3.0 are refused, not read as 1, 0 and 3).
Count = Annotated[int, Field(gt=0, strict=True)]
# A positive finite number (.inf and .nan are refused; a string such as "2e-4" is read as the number).
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TinyModelParams(Strict):
    """Shape of the random-weight Llama built for the offline profile."""

    vocab_size: Count
    hidden_size: Count
    intermediate_size: Count
    num_layers: Count
    num_heads: Count
    num_kv_heads: Count
    max_position: Count

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})")
        return self


class GgufParams(Strict):
    """A GGUF file shipped inside an installed Python distribution (a wheel on PyPI), pinned by its sha256."""

    distribution: str = Field(min_length=1, description="the distribution's name, as pip knows it")
    file: str = Field(min_length=1, description="the file's path inside site-packages")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


ModelKind = Literal["tiny", "hub", "gguf", "folder"]


class ModelParams(Strict):
    name: str = Field(min_length=1, description="'tiny', a Hugging Face hub id, or a local model folder")
    revision: Optional[str] = Field(min_length=1, description="hub revision (branch, tag or commit) to pin")
    gguf: Optional[GgufParams]
    # Every stage multiplies its learning rate by this (see conf/model/tiny.yaml for why).
    lr_scale: Positive
    tiny: Optional[TinyModelParams]

    @property
    def kind(self) -> ModelKind:
        """Where the base model comes from. A name with neither a revision nor a GGUF file is a local folder,
        pinned by a hash of its files (the model_source stage)."""
        if self.name == "tiny":
            return "tiny"
        if self.gguf is not None:
            return "gguf"
        return "hub" if self.revision else "folder"

    @model_validator(mode="after")
    def _profile_is_complete(self):
        if (self.name == "tiny") != (self.tiny is not None):
            raise ValueError("tiny gives the tiny model's shape: set it exactly when name is 'tiny'")
        if self.gguf is not None and self.revision:
            raise ValueError("revision must be null for a GGUF file: gguf.sha256 pins it")
        return self


class HubParams(Strict):
    # https only: a download over plain http can be changed on the way (the sha256 pins are optional)
    empatheticdialogues_url: str = Field(pattern=r"^https://")
    empatheticdialogues_sha256: Optional[str] = Field(pattern=r"^[0-9a-f]{64}$")
    human_like_dpo_url: str = Field(pattern=r"^https://")
    human_like_dpo_sha256: Optional[str] = Field(pattern=r"^[0-9a-f]{64}$")
    retries: Count
    timeout_s: Positive


class DataParams(Strict):
    source: Literal["sample", "local", "hub"]
    local_dir: Optional[str]
    hub: Optional[HubParams]

    @model_validator(mode="after")
    def _source_is_complete(self):
        if self.source == "local" and not self.local_dir:
            raise ValueError("local_dir must name a directory when source is 'local'")
        if self.source == "hub" and self.hub is None:
            raise ValueError("hub must give the download URLs when source is 'hub'")
        return self


class LoraParams(Strict):
    r: Count
    alpha: Count
    dropout: float = Field(ge=0, lt=1, allow_inf_nan=False)
    # Module names of the model (Llama's: SEVEN_PROJECTIONS), or PEFT's "all-linear": every linear layer but
    # the output head. The sft and dpo stages stop on a name the model does not have, listing those it has.
    target_modules: Union[Literal["all-linear"], list[Annotated[str, Field(min_length=1)]]] = Field(min_length=1)


class TrainParams(Strict):
    """Knobs shared by the sft and dpo stages."""

    preset: str = Field(min_length=1, description="the conf/ preset composed (model cards name it)")
    train_size: Count
    lora: LoraParams
    lr: Positive
    # What one optimizer step trains: examples for SFT (packed rows with sft.packing), pairs for DPO. The notebook's
    # presets state what a step trained on its two T4s. Any number of processes trains these same examples a step,
    # each an equal share (stages.training.batch_split); a step that cannot be shared evenly stops the stage.
    examples_per_step: Count
    # The most examples a process puts through the model at once on a card of a T4's 16 GB (the notebook's batch per
    # GPU): a process's share of a step goes in equal micro-batches of the largest size up to this that divides it,
    # the rest of the step in gradient accumulation.
    batch_size: Count
    eval_batch_size: Count
    # On a CUDA GPU, a process's share of a step in as few equal micro-batches as its free memory is estimated to hold
    # (at least batch_size): the same recipe up to float rounding, in fewer, fuller passes.
    fill_gpu: bool
    max_length: Count
    checkpoint_steps: Count  # evaluate and save a checkpoint every this many optimizer steps
    # Liger's fused Triton kernels: "auto" uses them where they run (a CUDA GPU with liger-kernel installed:
    # requirements-gpu.txt), true insists (the stage stops where they cannot run), false never.
    liger: Union[Literal["auto"], Annotated[bool, Field(strict=True)]]
    # Recompute activations in the backward pass instead of keeping them: less memory, about a third more compute.
    # TRL turns it on by default; a LoRA run of a 1.1B model fits a 16 GiB card without it (see docs/speed.md).
    gradient_checkpointing: bool


class SFTParams(TrainParams):
    format: Literal["dialogue", "seed"]
    # Pack examples into rows of max_length tokens with no padding (batch_size then counts rows); each
    # example still sees only itself, through position ids that restart at 0.
    packing: bool
    system_prompt: str
    epochs: Count
    scheduler: Literal["cosine", "linear", "constant_with_warmup"]
    warmup_ratio: float = Field(ge=0, lt=1, allow_inf_nan=False)
    weight_decay: float = Field(ge=0, allow_inf_nan=False)


class DPOParams(TrainParams):
    # Opens every DPO prompt ("" for none). conf/ makes it sft.system_prompt, so SFT, DPO and evaluation share one
    # prompt format; docs/evaluation.md says what that prompt's "in a few sentences" does beside DPO's long replies.
    system_prompt: str
    beta: Positive
    # One pass over the training pairs for the reference's log-probs instead of a reference forward per step:
    # pays when training covers the pairs more than once.
    precompute_ref_log_probs: bool
    max_prompt_length: Count
    max_steps: Count
    # ...or this many passes over the train pairs, whichever ends first: the notebook's runs (9000 pairs,
    # 500-800 steps of 8 pairs) never reach it; a small set (the offline sample's 288 pairs) stops there.
    max_epochs: Count
    warmup_steps: int = Field(ge=0, strict=True)

    @model_validator(mode="after")
    def _room_for_the_reply(self):
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be below max_length, which counts prompt and reply")
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must not exceed max_steps ({self.max_steps})")
        return self


class EvalParams(Strict):
    # The fixed evaluation sets: their sizes belong to no SFT or DPO preset, so every experiment is scored
    # on the same rows (SFT eval examples from valid.csv, held-out DPO pairs, test prompts from test.csv).
    sft_eval_size: Count
    dpo_eval_size: Count
    test_size: Count
    # A JSONL file of {system (optional), user, reference} scored as the prompt set `custom`.
    prompts_file: Optional[str] = Field(min_length=1)
    # Replies per generate call, and sequences per log-prob forward pass; "auto" sizes it for the device
    # (stages.generation.AUTO_BATCH_SIZE: 64 on a GPU, 16 on a CPU).
    batch_size: Count | Literal["auto"]
    # The new tokens a reply may take; "auto": enough for what the trainings taught (stages.modeling.reply_budget,
    # from preprocess's metrics/lengths.json). A prompt and its reply share the model's context window.
    max_new_tokens: Count | Literal["auto"]
    temperature: float = Field(ge=0, allow_inf_nan=False)
    bertscore_model: str = Field(description="'packaged-minilm' (offline, from PyPI) or a hub id")
    bertscore_num_layers: Count
    bootstrap_samples: Count
    # The blind rating sheet: this many prompts of this prompt set, each answered by every model.
    human_set: Literal["ed_test", "probe", "custom"]
    human_prompts: Count

    @model_validator(mode="after")
    def _custom_set_has_a_file(self):
        if self.human_set == "custom" and not self.prompts_file:
            raise ValueError("prompts_file must name a JSONL file when human_set is 'custom'")
        return self


class Params(Strict):
    seed: int = Field(ge=0, lt=2**32, strict=True)  # numpy's seeds stop at 2**32
    model: ModelParams
    data: DataParams
    sft: SFTParams
    dpo: DPOParams
    eval: EvalParams


class ParamsError(SystemExit):
    """Exits the stage with a readable message (SystemExit with a string prints it and returns 1)."""


def _describe(error: ValidationError, path: Path) -> str:
    found: dict[str, list[str]] = {}
    for item in error.errors():
        # pydantic names the member of a union it tried (constrained-int, literal['auto']): no part of the key,
        # which is made of field names and list positions (an unknown key is named as the file spells it)
        loc = item["loc"] if item["type"] == "extra_forbidden" else [
            part for part in item["loc"] if isinstance(part, int) or part.isidentifier()]
        key = ".".join(map(str, loc)) or "<top level>"
        found.setdefault(key, []).append("unknown key" if item["type"] == "extra_forbidden" else item["msg"])
    return "\n".join([f"{path}: invalid params"] + [f"  {key}: {' or '.join(messages)}"
                                                     for key, messages in found.items()])


def parse_params(raw: dict, path: Path = PARAMS_FILE) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_describe(error, path)) from None


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ParamsError(f"{path}: cannot read params: {error}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of param groups at the top level")
    return parse_params(raw, path)


HEADER = """\
# Composed from conf/ by DVC's Hydra support: `dvc exp run` rewrites this file. Change a default in conf/ and
# run `make params`; change a knob for one run with `dvc exp run -S sft.lr=1e-4`. Every learning rate is
# multiplied by model.lr_scale (metrics/sft.json and metrics/dpo.json record the rate used as `lr`).
"""


def compose(overrides: list[str], output: Path = PARAMS_FILE, conf_dir: Path = CONF_DIR) -> Params:
    """Compose conf/ with Hydra overrides into `output`, exactly as `dvc exp run -S ...` does (with HEADER
    above), and validate it."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(str(output), str(Path(conf_dir).resolve()), None, "config", "", overrides)
    output.write_text(HEADER + output.read_text())
    return load_params(output)


if __name__ == "__main__":
    # `python -m stages.params` checks params.yaml; `python -m stages.params --compose [overrides]`
    # rewrites it from conf/ first (`make params`).
    if sys.argv[1:2] == ["--compose"]:
        compose(sys.argv[2:])
    print(load_params().model_dump_json(indent=2))
