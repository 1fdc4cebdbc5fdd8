import json
import subprocess
import sys

import pytest
import torch
from transformers import DataCollatorForLanguageModeling

from chattune.common.errors import ParamsError
from chattune.common.outputs import read_jsonl
from chattune.common.params import SEVEN_PROJECTIONS, load_params
from chattune.common.paths import SFT_DATA
from chattune.modeling.placement import cpu_has_bf16_units
from chattune.modeling.prompt import encode
from chattune.training.packed_attention import ATTENTION
from conftest import edit_params, lora_casts_in_forward, place_on
from stages import base_model, download, model_source, preprocess, sft


@pytest.fixture
def sft_trainer(project, tmp_path_factory):
    download.main()
    base_model.main()
    preprocess.main()
    return sft.build_trainer(load_params(), str(tmp_path_factory.mktemp("run")))


def eval_steps(path) -> list[int]:
    return [int(line.split("\t")[0]) for line in path.read_text().splitlines()[1:]]


def wandb_history(run_file) -> tuple[str, list[dict]]:
    """An offline W&B run's name and logged rows, read from its run file: a LevelDB-style log (32 KiB blocks of
    chunks, each with a 7-byte header: checksum, length, type) of wandb's protobuf records, after a 7-byte file
    header. wandb 0.31 ships the protobuf classes but no longer a reader."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    at, pending, name, rows = 7, b"", None, []
    while at + 7 <= len(data):
        if block - at % block < 7:  # too little room left in a block for a header: zero padding
            at += block - at % block
            continue
        _, length, kind = struct.unpack("<IHB", data[at:at + 7])
        if kind == 0:
            break
        pending, at = pending + data[at + 7:at + 7 + length], at + 7 + length
        if kind in (1, 4):  # a whole record, or its last chunk
            record = wandb_internal_pb2.Record.FromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "run":
                name = record.run.display_name
            elif record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return name, rows


def test_a_run_shorter_than_checkpoint_steps_ends_evaluated_once(project, monkeypatch):
    """The last step is always evaluated (sft7's 375 steps used to end at its eval of step 360), never
    twice, and a run with fewer steps than checkpoint_steps finishes (it used to crash on best_metric)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    edit_params(project / "params.yaml", **{"sft.train_size": 40, "sft.epochs": 1, "sft.examples_per_step": 8,
                                            "sft.checkpoint_steps": 100, "sft.report_to": ["tensorboard", "wandb"]})
    for stage in (download, model_source, base_model, preprocess):
        stage.main()
    sft.main()  # 40 examples, 8 a step: 5 steps
    import wandb

    wandb.finish()  # a stage's process ends its run on exit; this one goes on
    metrics = json.loads((project / "metrics/sft.json").read_text())
    assert metrics["steps"] == 5 and metrics["eval_loss"] < metrics["base_eval_loss"]
    assert eval_steps(project / "dvclive/sft/plots/metrics/eval/loss.tsv") == [0, 5]  # the base's, then the end
    # sft.report_to: TensorBoard's event files hold the curve dvclive holds, step for step.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(project / "logs/tensorboard/sft"))
    events.Reload()
    live = [line.split("\t") for line in (project / "dvclive/sft/plots/metrics/loss.tsv").read_text().splitlines()[1:]]
    logged = events.Scalars("train/loss")
    assert [event.step for event in logged] == [int(step) for step, _ in live] == [1, 5]
    assert [event.value for event in logged] == pytest.approx([float(loss) for _, loss in live])
    # ... and so does W&B's offline run, named for the stage
    [run_file] = project.glob("wandb/offline-run-*/run-*.wandb")
    name, rows = wandb_history(run_file)
    losses = [(row["train/global_step"], row["train/loss"]) for row in rows if "train/loss" in row]
    assert name == "sft" and losses == [(int(step), pytest.approx(float(loss))) for step, loss in live]
    # Throughput counts training steps only, never the evaluations around them.
    assert metrics["train_steps_timed"] == 5 and metrics["train_step_seconds"] < metrics["train_runtime_s"]
    tokens = sum(len(ids) for ids in sft.build_trainer(load_params(), str(project / "again")).train_dataset["input_ids"])
    assert metrics["train_tokens_per_s"] == pytest.approx(tokens / metrics["train_step_seconds"])

    edit_params(project / "params.yaml", **{"sft.checkpoint_steps": 5})
    sft.main()  # the in-loop evaluation of step 5 is the final one: not repeated
    assert eval_steps(project / "dvclive/sft/plots/metrics/eval/loss.tsv") == [0, 5]


def test_the_eval_loss_is_per_reply_token_whatever_the_eval_batch(sft_trainer, tmp_path):
    """transformers' eval_loss averages each batch's mean over its examples: it moved with the eval batch (SmolLM2's
    base model, 16 real examples: 3.895 one at a time, 3.664 eight at a time). The stage's is the set's loss per reply
    token, the same for any batching, process count or GPU (fill_gpu grows the eval batch)."""
    trainer = sft_trainer
    found = {}
    for size in (1, 3, 8):
        trainer.args.per_device_eval_batch_size = size
        found[size] = trainer.evaluate()
    assert found[1]["eval_loss"] == pytest.approx(found[3]["eval_loss"], rel=1e-6)
    assert found[1]["eval_loss"] == pytest.approx(found[8]["eval_loss"], rel=1e-6)
    # by hand, one example at a time: every reply token's negative log-likelihood over their number
    model, total, tokens = trainer.model.eval(), 0.0, 0
    with torch.no_grad():
        for row in trainer.eval_dataset:
            batch = trainer.data_collator([row])  # one row: no padding; labels -100 but on the reply and its EOS
            targets = batch["labels"][0, 1:]
            reply = targets != -100
            logprobs = model(input_ids=batch["input_ids"]).logits[0, :-1].float().log_softmax(-1)
            total -= logprobs[reply].gather(1, targets[reply, None]).sum().item()
            tokens += int(reply.sum())
    assert found[8]["eval_loss"] == pytest.approx(total / tokens, rel=1e-5)
    # with sft.packing, evaluation's padding-free batch is one flattened row, cut back into its examples: the same
    params = load_params()
    packed = sft.build_trainer(params.model_copy(update={"sft": params.sft.model_copy(update={"packing": True})}),
                               str(tmp_path / "packed"))
    batch = next(iter(packed.get_eval_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and len(batch["cu_seq_lens_q"]) > 2  # several examples in one row
    assert packed.evaluate()["eval_loss"] == pytest.approx(found[8]["eval_loss"], rel=1e-5)


def test_collated_batch_trains_on_the_reply_and_its_eos_only(sft_trainer):
    tokenizer = sft_trainer.processing_class
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # TinyLlama's setup: the notebook's trap
    features = [sft_trainer.train_dataset[i] for i in range(8)]
    batch = sft_trainer.data_collator(features)
    lengths = [len(f["input_ids"]) for f in features]
    assert batch["input_ids"].shape[1] == max(lengths) < 512  # padded to the batch's longest row, not 512
    for row, feature in enumerate(features):
        labels = batch["labels"][row]
        trained = labels[labels != -100].tolist()
        assert tokenizer.eos_token_id in trained, "the EOS that ends the reply must be a label"
        text = tokenizer.decode(trained)
        assert "</s>" in text and "<|user|>" not in text and "<|system|>" not in text
        assert (labels[lengths[row]:] == -100).all()  # padding (also id 2) is not trained
    # The notebook's collator masks every pad id, and with pad = eos that erases the EOS labels.
    notebook = DataCollatorForLanguageModeling(tokenizer, mlm=False)(
        [{"input_ids": f["input_ids"]} for f in features])
    assert not (notebook["labels"] == tokenizer.eos_token_id).any()


def test_reply_in_the_batch_is_the_listener_turn(sft_trainer):
    tokenizer = sft_trainer.processing_class
    example = sft_trainer.train_dataset[0]
    batch = sft_trainer.data_collator([example])
    labels = batch["labels"][0]
    reply = tokenizer.decode(labels[labels != -100].tolist(), skip_special_tokens=True).strip()
    rows = [row for row in read_jsonl(SFT_DATA / "train.jsonl")
            if sum(encode(tokenizer, row["prompt"], row["completion"]), []) == example["input_ids"]]
    assert rows and reply == rows[0]["completion"][0]["content"]


def test_a_packed_batch_gives_the_padded_batchs_loss(sft_trainer, tmp_path):
    """With sft.packing, examples share a row with no padding; they must still not see each other. The packed
    model attends within each example (chattune.training.packed_attention, tests/test_varlen.py); the base model's sdpa, given the
    same row, builds a block-diagonal mask from the restarting position ids (no cache: TRL passes use_cache=False)."""
    params = load_params()
    packed = params.model_copy(update={"sft": params.sft.model_copy(update={"packing": True})})
    free_trainer = sft.build_trainer(packed, str(tmp_path / "packed"))
    assert free_trainer.model.config._attn_implementation == ATTENTION
    row = free_trainer.train_dataset[0]
    assert len(row["input_ids"]) > 2 * max(len(f["input_ids"]) for f in sft_trainer.train_dataset.select(range(20)))
    features = [sft_trainer.train_dataset[i] for i in range(6)]
    padded, free = sft_trainer.data_collator(features), free_trainer.data_collator(features)
    lengths = [len(f["input_ids"]) for f in features]
    assert padded["input_ids"].shape == (6, max(lengths)) and free["input_ids"].shape == (1, sum(lengths))
    # same weights in both models: the LoRA adapters start as no-ops
    model, free_model = sft_trainer.model.eval(), free_trainer.model.eval()
    with torch.no_grad():
        loss_padded = sft_trainer.compute_loss(model, padded)
        loss_free = free_trainer.compute_loss(free_model, free)
        loss_masked = sft_trainer.compute_loss(model, free)
        # The same row with one running position and no boundaries: the examples attend to each other.
        leaked = {key: value for key, value in free.items() if not key.startswith(("cu_seq", "max_length"))}
        loss_leaked = free_trainer.compute_loss(free_model, dict(leaked, position_ids=torch.arange(sum(lengths))[None]))
    assert loss_free.item() == pytest.approx(loss_padded.item(), rel=1e-5)
    assert loss_masked.item() == pytest.approx(loss_padded.item(), rel=1e-5)
    assert abs(loss_leaked.item() - loss_padded.item()) > 1e-3


def test_lora_targets_are_any_module_names_or_all_linear_and_a_missing_one_is_named(sft_trainer, tmp_path):
    params = load_params()
    def with_targets(targets):
        return params.model_copy(update={"sft": params.sft.model_copy(update={
            "lora": params.sft.lora.model_copy(update={"target_modules": targets})})})
    with pytest.raises(ParamsError) as stop:  # a model whose projections are named otherwise (Phi-3's qkv_proj)
        sft.build_trainer(with_targets(["qkv_proj", "o_proj"]), str(tmp_path / "a"))
    assert str(stop.value) == ("sft.lora.target_modules: qkv_proj not in the model; its linear layers are down_proj, "
                               "gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj (or use all-linear)")
    every = sft.build_trainer(with_targets("all-linear"), str(tmp_path / "b")).model
    # PEFT resolves all-linear to every linear layer but the output head: here, the seven projections
    resolved = {name.rsplit(".", 1)[-1] for name in every.peft_config["default"].target_modules}
    assert resolved == set(SEVEN_PROJECTIONS)
    dotted = sft.build_trainer(with_targets(["self_attn.q_proj"]), str(tmp_path / "c")).model
    assert dotted.peft_config["default"].target_modules == {"self_attn.q_proj"}


# What the adapters' matmuls receive: on a CPU, accelerate runs bf16 mixed precision under autocast, where the
# adapters take the bf16 input itself (chattune.modeling.loading.lora_under_autocast), and fp16 without autocast or a
# loss scaler, where PEFT casts the input to the adapters' float32.
@pytest.mark.parametrize("dtype, adapter_input", [(torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16)],
                         ids=["fp16", "bf16"])
def test_sft_trains_in_mixed_precision_with_float32_lora_weights(project, monkeypatch, tmp_path, dtype,
                                                                 adapter_input):
    """The GPU's paths on the CPU: fp16 below compute capability 8.0 (a T4), bf16 from it (chattune.modeling.placement.placement).
    The trainer set to that mixed precision, the base weights in it, the LoRA weights float32 (what loss scaling
    and small updates need), and steps that move them with a finite loss. The loss scaler itself only runs on a
    GPU."""
    import math

    from peft.tuners.lora import LoraLayer

    edit_params(project / "params.yaml", **{"sft.train_size": 8, "sft.epochs": 1, "sft.examples_per_step": 4})
    for stage in (download, model_source, base_model, preprocess):
        stage.main()
    place_on(monkeypatch, "cpu", dtype)
    trainer = sft.build_trainer(load_params(), str(tmp_path / "run"))
    assert (trainer.args.fp16, trainer.args.bf16) == (dtype == torch.float16, dtype == torch.bfloat16)
    weights = dict(trainer.model.named_parameters())
    lora = {name: param.detach().clone() for name, param in weights.items() if param.requires_grad}
    assert lora and all("lora_" in name for name in lora)
    assert {weights[name].dtype for name in lora} == {torch.float32}
    assert {param.dtype for name, param in weights.items() if name not in lora} == {dtype}
    seen = set()
    for layer in (module for module in trainer.model.modules() if isinstance(module, LoraLayer)):
        # the training steps' inputs (evaluation sums each update in float32: lora_under_autocast)
        layer.lora_A["default"].register_forward_pre_hook(
            lambda module, args: seen.add(args[0].dtype) if module.training else None)
    result = trainer.train()
    assert seen == {adapter_input}
    assert math.isfinite(result.training_loss) and trainer.state.global_step == 2
    assert any(not torch.equal(weights[name].detach(), before) for name, before in lora.items())


def test_the_trained_adapter_skips_its_input_cast_under_autocast_only(sft_trainer):
    """Mixed-precision training runs under autocast: there PEFT's float32 cast of each LoRA layer's input is
    skipped (chattune.modeling.loading.lora_under_autocast); a forward without autocast keeps it."""
    ids = torch.tensor([[1, 5, 9, 12, 2]])
    assert lora_casts_in_forward(sft_trainer.model, ids, autocast=True) == {False}
    assert lora_casts_in_forward(sft_trainer.model, ids, autocast=False) == {True}


def test_building_the_trainer_raises_no_deprecation_warning_from_the_pinned_libraries(project):
    """transformers 5.24 deprecates gradient checkpointing's names, which TRL's config and PEFT still use on every
    model they wrap: each stage printed those warnings at every run. Turned into errors, none may come."""
    for stage in (download, base_model, preprocess):
        stage.main()
    build = "from stages import sft; from chattune.common.params import load_params; sft.build_trainer(load_params(), 'run')"
    done = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", build], cwd=project,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_tracker_that_is_not_installed_stops_the_stage_naming_the_key(monkeypatch):
    from chattune.training import callbacks

    real = callbacks.importlib.util.find_spec
    monkeypatch.setattr(callbacks.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ParamsError, match=r"dpo.report_to: wandb is not installed \(pip install wandb"):
        callbacks.tracker_callbacks("dpo", ["tensorboard", "wandb"])


@pytest.mark.skipif(not cpu_has_bf16_units(), reason="this CPU has no bf16 units (AVX512-BF16 or AMX)")
def test_model_dtype_bfloat16_trains_in_bf16_on_a_cpu_with_bf16_units_and_says_so(project):
    """model.dtype: bfloat16 on the CPU itself, nothing patched: the trainer in bf16 mixed precision, the base
    weights bf16 and the LoRA weights float32, and the metrics and the adapter's card record it."""
    import json

    edit_params(project / "params.yaml", **{"model.dtype": "bfloat16", "sft.train_size": 16, "sft.epochs": 1,
                                            "sft.examples_per_step": 8, "sft.checkpoint_steps": 100})
    for stage in (download, model_source, base_model, preprocess):
        stage.main()
    trainer = sft.build_trainer(load_params(), str(project / "run"))
    assert trainer.args.bf16 and not trainer.args.fp16
    weights = {name: p.dtype for name, p in trainer.model.named_parameters()}
    assert {dtype for name, dtype in weights.items() if "lora_" in name} == {torch.float32}
    assert {dtype for name, dtype in weights.items() if "lora_" not in name} == {torch.bfloat16}
    sft.main()
    metrics = json.loads((project / "metrics/sft.json").read_text())
    assert (metrics["device"], metrics["dtype"]) == ("cpu", "bfloat16") and metrics["eval_loss"] < metrics["base_eval_loss"]
    assert "| trained on | cpu, in bfloat16 mixed precision (the LoRA weights float32) |" in (
        project / "models/sft/README.md").read_text()
