"""A first view of the experiments that a person can read in a 120-column terminal: the params that differ
between them, a dozen headline numbers, and the paired differences, each marked where its 95% interval
excludes zero. `dvc exp show` has about 400 columns (every param, data count and metric); it and
`dvc metrics show` stay one command away, and every number stays in its metrics file.

    python -m tools.show              # or: make show
    python -m tools.show -A           # `dvc exp show` options that choose the rows pass through
    python -m tools.show --width 200  # fold the tables at another width

A table wider than the terminal is folded: its columns continue in a block below, each block repeating the
experiment's name.
"""
from __future__ import annotations

import argparse
import json
import textwrap

from chattune.common.errors import run
from chattune.evaluation.verdicts import informative
from chattune.experiments import decided, dvc, flatten

# (title, keys as <metrics file>:<key>, format): several keys share a cell as a/b/c, in the order the title gives
ED = "eval.json:ed_test"
MODELS = ("base", "sft", "dpo")
HEADLINE = [
    ("SFT loss base→sft", ("sft.json:base_eval_loss", "sft.json:eval_loss"), "{:.3f}→{:.3f}"),
    ("DPO acc", ("dpo.json:eval.rewards_accuracies",), "{:.2f}"),
    ("DPO margin", ("dpo.json:eval.rewards_margins",), "{:.3f}"),
    ("BERTScore raw b/s/d", tuple(f"{ED}.{m}.bertscore_raw_f1" for m in MODELS), "{:.3f}/{:.3f}/{:.3f}"),
    # where bert-score ships a baseline for the model (eval=roberta); – elsewhere
    ("BERTScore rescaled b/s/d", tuple(f"{ED}.{m}.bertscore_rescaled_f1" for m in MODELS), "{:.3f}/{:.3f}/{:.3f}"),
    ("human-like b/s/d", tuple(f"{ED}.{m}.humanlike" for m in MODELS), "{:.2f}/{:.2f}/{:.2f}"),
    ("emotion real|b/s/d", (f"{ED}.reference.emotion_accuracy", *(f"{ED}.{m}.emotion_accuracy" for m in MODELS)),
     "{:.2f}|{:.2f}/{:.2f}/{:.2f}"),
    ("stop b/s/d", tuple(f"{ED}.{m}.stop_rate" for m in MODELS), "{:.2f}/{:.2f}/{:.2f}"),
    # replies that reached the reply budget (the last number) without their EOS
    ("cut b/s/d@budget", (*(f"{ED}.{m}.cut_rate" for m in MODELS), f"{ED}.max_new_tokens"),
     "{:.2f}/{:.2f}/{:.2f}@{}"),
    # Stock openers and repeated replies alike lower it; the real listeners' is the mark to reach.
    ("openings real|b/s/d", (f"{ED}.reference.distinct_openings", *(f"{ED}.{m}.distinct_openings" for m in MODELS)),
     "{:.2f}|{:.2f}/{:.2f}/{:.2f}"),
    ("train s sft/dpo", ("sft.json:train_runtime_s", "dpo.json:train_runtime_s"), "{:.0f}/{:.0f}"),
    ("lr used sft/dpo", ("sft.json:lr", "dpo.json:lr"), "{:.2g}/{:.2g}"),  # times model.lr_scale
]
# (title, eval.json key of a paired difference on the ED test prompts)
DIFFERENCES = [(f"{title} {step}", f"ed_test.{name}.{metric}")
               for title, metric in (("BERTScore raw", "bertscore_raw_f1"), ("human-like", "humanlike"),
                                     ("emotion", "emotion_accuracy"))
               for step, name in (("s−b", "sft_minus_base"), ("d−s", "dpo_minus_sft"))]
LEGEND = ("Paired differences on the ED test prompts: ▲ / ▼ mark a rise / fall whose 95% interval excludes 0; "
          "unmarked ones are not decided; ? marks a learned metric whose classifier failed its own check in that run "
          "(uninformative: never decided). A headline cell of such a metric ends in ?.")


def rows(shown: list) -> list[dict]:
    """Every row of `dvc exp show --json` (workspace, commits, experiments) as {name, params, metrics files}."""
    found = []
    for baseline in shown:
        revs = [baseline] + [exp for group in baseline.get("experiments") or [] for exp in group.get("revs", [])]
        for rev in revs:
            data = rev.get("data") or {}
            if "params.yaml" not in (data.get("params") or {}):
                continue
            found.append({
                "name": rev.get("name") or (rev["rev"] if rev["rev"] == "workspace" else rev["rev"][:7]),
                "failed": bool(rev.get("error")),
                "params": flatten(data["params"]["params.yaml"]["data"]),
                **{path.rsplit("/", 1)[-1]: m.get("data", {}) for path, m in (data.get("metrics") or {}).items()},
            })
    return found


def changed_params(found: list[dict]) -> list[str]:
    """Params whose values are not the same in every row."""
    keys = sorted({key for row in found for key in row["params"]})
    return [key for key in keys if len({json.dumps(row["params"].get(key)) for row in found}) > 1]


def cell(row: dict, keys: tuple, fmt: str) -> str:
    if row["failed"]:
        return "–"  # its metrics files are another run's
    values = [row.get(file, {}).get(key) for file, key in (spec.split(":") for spec in keys)]
    if None in values:
        return "–"
    learned = [key.split(":")[1] for key in keys if key.startswith("eval.json:")]
    return fmt.format(*values) + ("" if all(informative(row.get("eval.json", {}), key) for key in learned) else "?")


def difference(row: dict, key: str) -> str:
    metrics = row.get("eval.json", {})
    values = [metrics.get(f"{key}{end}") for end in ("", "_low", "_high")]
    return "–" if row["failed"] or None in values else decided(*values, informative(metrics, key))


def param(value) -> str:
    if isinstance(value, list):  # LoRA targets: q,k,v,o,gate,up,down
        return ",".join(str(item).removesuffix("_proj") for item in value)
    return "–" if value is None else str(value)


def two_lines(title: str, separator: str) -> tuple[str, str]:
    """A column title over two header rows, split at its last separator, so that columns stay narrow."""
    first, found, last = title.rpartition(separator)
    return (first + found, last) if found else ("", title)


def fold(header: list[tuple[str, str]], table: list[list[str]], width: int) -> list[str]:
    """Lines of the table (first column: the experiment), in blocks no wider than `width`."""
    titles = [[top for top, _ in header], [bottom for _, bottom in header]]
    widths = [max(len(line[i]) for line in titles + table) for i in range(len(header))]
    blocks, current = [], [0]
    for column in range(1, len(header)):
        if current != [0] and sum(widths[i] + 2 for i in current) + widths[column] > width:
            blocks.append(current)
            current = [0]
        current.append(column)
    blocks.append(current)
    lines = []
    for block in blocks:
        if lines:
            lines.append("")
        for line in (*titles, ["─" * w for w in widths], *table):
            lines.append("  ".join(line[i].ljust(widths[i]) for i in block).rstrip())
    return lines


def render(found: list[dict], width: int = 120) -> str:
    names = [row["name"] + (" (failed)" if row["failed"] else "") for row in found]
    changed = changed_params(found)
    sections = []
    if changed:
        sections.append(["Params that differ:"] + fold(
            [("", "experiment")] + [two_lines(key, ".") for key in changed],
            [[name] + [param(row["params"].get(key)) for key in changed] for name, row in zip(names, found)], width))
    sections.append(["Headline numbers (ED test unless named):"] + fold(
        [("", "experiment")] + [two_lines(title, " ") for title, *_ in HEADLINE],
        [[name] + [cell(row, *spec[1:]) for spec in HEADLINE] for name, row in zip(names, found)], width))
    sections.append(textwrap.wrap(LEGEND, width) + fold(
        [("", "experiment")] + [two_lines(title, " ") for title, _ in DIFFERENCES],
        [[name] + [difference(row, key) for _, key in DIFFERENCES] for name, row in zip(names, found)], width))
    return "\n\n".join("\n".join(section) for section in sections)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=120, help="fold tables wider than this (default 120)")
    args, options = parser.parse_known_args(argv)
    print(render(rows(json.loads(dvc("exp", "show", "--json", *options))), args.width))


if __name__ == "__main__":
    run(main, "show")
