"""Compare experiments the way the notebook's tables did, from `dvc exp show --json`.

Writes reports/compare.md (one row per experiment: its presets' knobs, then eval loss, DPO reward
accuracy and margin, BLEU, BERTScore, the paired differences of BERTScore, human-likeness and emotion accuracy
with their intervals, marked where they exclude zero, the learned metrics per model beside the human reference,
stop rate, distinct replies, runtime) and a PNG chart per main metric. Every
experiment is scored on the same fixed evaluation sets (eval.sft_eval_size, eval.dpo_eval_size,
eval.test_size), so its numbers are comparable across presets.

A failed experiment is listed as failed, with the stage that failed (from `dvc queue logs`), and no
numbers: `dvc exp show` reports the metrics files of the commit it started from, which are another run's.

    python -m tools.compare [experiment names...]      # default: every named experiment
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from chattune.common.errors import run
from chattune.evaluation.verdicts import informative  # noqa: E402
from chattune.experiments import decided, dvc, flatten

REPORTS = Path("reports")

# (column title, where: "params" or a metrics file, dotted key, format)
COLUMNS = [
    ("SFT r/alpha", "params", ("sft.lora.r", "sft.lora.alpha"), "{}/{}"),
    ("SFT train", "params", ("sft.train_size",), "{}"),
    ("SFT lr", "params", ("sft.lr",), "{:g}"),
    ("SFT batch", "params", ("sft.batch_size", "sft.eval_batch_size"), "{}/{}"),
    ("SFT warmup", "params", ("sft.warmup_ratio",), "{:g}"),
    ("DPO r/alpha", "params", ("dpo.lora.r", "dpo.lora.alpha"), "{}/{}"),
    ("DPO targets", "params", ("dpo.lora.target_modules",), "{}"),
    ("DPO train", "params", ("dpo.train_size",), "{}"),
    ("DPO lr", "params", ("dpo.lr",), "{:g}"),
    ("DPO batch", "params", ("dpo.batch_size", "dpo.eval_batch_size"), "{}/{}"),
    ("DPO steps", "params", ("dpo.max_steps",), "{}"),
    ("SFT eval loss", "metrics/sft.json", ("eval_loss",), "{:.4f}"),
    ("DPO reward acc", "metrics/dpo.json", ("eval.rewards_accuracies",), "{:.3f}"),
    ("DPO margin", "metrics/dpo.json", ("eval.rewards_margins",), "{:.3f}"),
    ("BLEU sft/dpo", "metrics/eval.json", ("ed_test.sft.bleu", "ed_test.dpo.bleu"), "{:.4f}/{:.4f}"),
    ("BERTScore raw sft/dpo", "metrics/eval.json", ("ed_test.sft.bertscore_raw_f1", "ed_test.dpo.bertscore_raw_f1"),
     "{:.4f}/{:.4f}"),
    # only where bert-score ships a baseline for the model and layer (roberta-large, eval=roberta)
    ("BERTScore rescaled sft/dpo", "metrics/eval.json",
     ("ed_test.sft.bertscore_rescaled_f1", "ed_test.dpo.bertscore_rescaled_f1"), "{:.4f}/{:.4f}"),
    *[(f"{title} {label} [95% CI]", "metrics/eval.json", tuple(f"ed_test.{name}.{metric}{end}" for end in
                                                                ("", "_low", "_high")), "decided")
      for title, metric in (("BERTScore raw", "bertscore_raw_f1"), ("human-like", "humanlike"),
                            ("emotion", "emotion_accuracy"))
      for label, name in (("sft-base", "sft_minus_base"), ("dpo-sft", "dpo_minus_sft"))],
    ("human-like base/sft/dpo", "metrics/eval.json", tuple(f"ed_test.{m}.humanlike" for m in ("base", "sft", "dpo")),
     "{:.2f}/{:.2f}/{:.2f}"),
    # The real listeners' replies are the human reference; chance is the commonest emotion's share.
    ("emotion real/base/sft/dpo (chance)", "metrics/eval.json",
     tuple(f"ed_test.{m}.emotion_accuracy" for m in ("reference", "base", "sft", "dpo")) + ("ed_test.emotion_chance",),
     "{:.2f}/{:.2f}/{:.2f}/{:.2f} ({:.2f})"),
    ("stop rate sft/dpo", "metrics/eval.json", ("ed_test.sft.stop_rate", "ed_test.dpo.stop_rate"), "{:.2f}/{:.2f}"),
    # replies that reached the reply budget without their EOS: scored cut short
    ("cut rate base/sft/dpo (budget)", "metrics/eval.json",
     tuple(f"ed_test.{m}.cut_rate" for m in ("base", "sft", "dpo")) + ("ed_test.max_new_tokens",),
     "{:.2f}/{:.2f}/{:.2f} ({})"),
    # Below 1, some prompts got the same reply word for word; far below 1, the model has collapsed.
    ("distinct replies sft/dpo (probe)", "metrics/eval.json", ("probe.sft.distinct_replies", "probe.dpo.distinct_replies"),
     "{:.2f}/{:.2f}"),
    # Replies that open with the same sentence, a stock opener among them, lower it; real listeners' is the mark.
    ("distinct openings real/base/sft/dpo", "metrics/eval.json",
     tuple(f"ed_test.{m}.distinct_openings" for m in ("reference", "base", "sft", "dpo")), "{:.2f}/{:.2f}/{:.2f}/{:.2f}"),
    ("runtime s sft/dpo", "metrics", ("sft.json:train_runtime_s", "dpo.json:train_runtime_s"), "{:.0f}/{:.0f}"),
]
CHARTS = [  # (file, title, metrics file, keys)
    ("eval_loss.png", "SFT eval loss (lower is better)", "metrics/sft.json", ["eval_loss"]),
    ("reward_accuracy.png", "DPO held-out reward accuracy", "metrics/dpo.json", ["eval.rewards_accuracies"]),
    ("bleu.png", "BLEU (nltk, method 4), ED test", "metrics/eval.json", ["ed_test.base.bleu", "ed_test.sft.bleu", "ed_test.dpo.bleu"]),
    ("bertscore.png", "BERTScore F1 (raw), ED test", "metrics/eval.json", ["ed_test.base.bertscore_raw_f1", "ed_test.sft.bertscore_raw_f1", "ed_test.dpo.bertscore_raw_f1"]),
    ("humanlike.png", "Human-like replies (share), ED test", "metrics/eval.json", ["ed_test.base.humanlike", "ed_test.sft.humanlike", "ed_test.dpo.humanlike"]),
    ("emotion.png", "Emotion named from the reply (accuracy), ED test", "metrics/eval.json", ["ed_test.reference.emotion_accuracy", "ed_test.base.emotion_accuracy", "ed_test.sft.emotion_accuracy", "ed_test.dpo.emotion_accuracy"]),
]


def failed_stage(name: str) -> str:
    """The stage a failed queued experiment stopped at, read from its log."""
    found = re.findall(r"failed to reproduce '([\w-]+)'", dvc("queue", "logs", name))
    return found[-1] if found else "unknown"


def experiments(shown: list) -> dict[str, dict]:
    """Named experiments in `dvc exp show --json` output -> {"params": flat, "<metrics file>": {...}}, or
    {"params": flat, "failed": stage} for one that failed (its metrics there are not its own)."""
    found = {}
    for baseline in shown:
        for group in baseline.get("experiments") or []:
            for exp in group.get("revs", []):
                if not (exp.get("name") and exp.get("data")):
                    continue
                data = exp["data"]
                record = {"params": flatten(data["params"]["params.yaml"]["data"])}
                if exp.get("error"):
                    record["failed"] = failed_stage(exp["name"])
                else:
                    record.update({name: m.get("data", {}) for name, m in (data.get("metrics") or {}).items()})
                found[exp["name"]] = record
    return found


def cell(record: dict, where: str, keys: tuple, fmt: str) -> str:
    metrics = record.get("metrics/eval.json", {})
    values = []
    for key in keys:
        if where == "metrics":
            file, key = key.split(":")
            value = record.get(f"metrics/{file}", {}).get(key)
        else:
            value = record.get(where, {}).get(key)
        if value is None:
            return "–"
        values.append(",".join(v.replace("_proj", "") for v in value) if isinstance(value, list) else value)
    if fmt == "decided":
        value, low, high = values
        return f"{decided(value, low, high, informative(metrics, keys[0]))} [{low:+.3f}, {high:+.3f}]"
    learned = where == "metrics/eval.json" and not all(informative(metrics, key) for key in keys)
    return fmt.format(*values) + (" uninformative" if learned else "")


def table(records: dict[str, dict]) -> str:
    header = ["experiment", "status"] + [title for title, *_ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, record in records.items():
        status = f"FAILED in stage `{record['failed']}`" if "failed" in record else "ok"
        lines.append("| " + " | ".join([name, status] + [cell(record, *spec[1:]) for spec in COLUMNS]) + " |")
    return "\n".join(lines)


def chart(records: dict[str, dict], path: Path, title: str, file: str, keys: list[str]) -> None:
    names = [name for name in records if "failed" not in records[name]]
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 4))
    highest = 0.0
    for i, key in enumerate(keys):
        values = [records[n].get(file, {}).get(key, float("nan")) for n in names]
        highest = max([highest, *(v for v in values if v == v)])
        ax.bar([x + i * width for x in range(len(names))], values, width, label=key.split(".")[-2] if key.count(".") > 1 else key)
    # a learned metric whose classifier failed its check in a run says so under that run's bars
    labels = [name + ("" if all(informative(records[name].get(file, {}), key) for key in keys) else "\n(uninformative)")
              for name in names]
    ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(names))], labels, rotation=30, ha="right")
    ax.set_title(title)
    if len(keys) > 1:  # one bar per model; room above the bars for the legend
        ax.set_ylim(top=highest * 1.3 or 1)
        ax.legend(ncols=len(keys), loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(selected: list[str]) -> None:
    records = experiments(json.loads(dvc("exp", "show", "--json")))
    if selected:
        missing = [name for name in selected if name not in records]
        if missing:
            sys.exit(f"compare: no experiment named {', '.join(missing)} (see `dvc exp show`)")
        records = {name: records[name] for name in selected}
    if not records:
        sys.exit("compare: no named experiments yet; run `make study` and `dvc queue start` first")
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "compare.md").write_text(
        "# Experiments compared\n\nFrom `dvc exp show --json`; regenerate with `make compare`. Differences are paired "
        "(the same ED test prompts) with 95% bootstrap intervals: ▲ / ▼ mark a rise / fall whose interval excludes "
        "0; unmarked ones are not decided. ? and \"uninformative\" mark a learned metric whose classifier did not "
        "clear chance on its own check in that run (metrics/judges.json): its differences are never decided.\n\n"
        + table(records) + "\n\n" + "\n".join(f"![{title}]({file})" for file, title, *_ in CHARTS) + "\n")
    for file, title, metrics_file, keys in CHARTS:
        chart(records, REPORTS / file, title, metrics_file, keys)
    failed = [name for name, record in records.items() if "failed" in record]
    print(f"compare: {len(records)} experiments -> {REPORTS}/compare.md and {len(CHARTS)} charts"
          + (f"; failed: {', '.join(failed)}" if failed else ""))


if __name__ == "__main__":
    run(main, "compare", sys.argv[1:])
