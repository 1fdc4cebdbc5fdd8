"""A first view of the experiments that a person can read: one row per experiment, the params that differ
between them, and a dozen headline numbers, in well under 200 columns. `dvc exp show` has about 300 columns
(every param, data count and metric); it and `dvc metrics show` stay one command away, and every number
stays in its metrics file.

    python -m tools.show          # or: make show
    python -m tools.show -A       # `dvc exp show` options that choose the rows pass through
"""
from __future__ import annotations

import json
import sys

from tools.compare import dvc, flatten

# (title, keys as <metrics file>:<key>, format): several keys share a cell as a/b/c, base/sft/dpo in that order
EVAL = "eval.json:ed_test"
HEADLINE = [
    ("SFT loss base→sft", ("sft.json:base_eval_loss", "sft.json:eval_loss"), "{:.3f}→{:.3f}"),
    ("DPO acc", ("dpo.json:eval.rewards_accuracies",), "{:.2f}"),
    ("DPO margin", ("dpo.json:eval.rewards_margins",), "{:.3f}"),
    ("BERTScore b/s/d", tuple(f"{EVAL}.{m}.bertscore_f1" for m in ("base", "sft", "dpo")), "{:.3f}/{:.3f}/{:.3f}"),
    ("BLEU s/d", (f"{EVAL}.sft.bleu", f"{EVAL}.dpo.bleu"), "{:.3f}/{:.3f}"),
    ("stop b/s/d", tuple(f"{EVAL}.{m}.stop_rate" for m in ("base", "sft", "dpo")), "{:.2f}/{:.2f}/{:.2f}"),
    ("distinct s/d", ("eval.json:probe.sft.distinct_replies", "eval.json:probe.dpo.distinct_replies"), "{:.2f}/{:.2f}"),
    ("train s sft/dpo", ("sft.json:train_runtime_s", "dpo.json:train_runtime_s"), "{:.0f}/{:.0f}"),
]


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
    return "–" if None in values else fmt.format(*values)


def param(value) -> str:
    if isinstance(value, list):
        return ",".join(str(item).removesuffix("_proj") for item in value)
    return "–" if value is None else str(value)


def two_lines(title: str, separator: str) -> tuple[str, str]:
    """A column title over two header rows, split at its last separator, so that columns stay narrow."""
    first, found, last = title.rpartition(separator)
    return (first + found, last) if found else ("", title)


def render(found: list[dict]) -> str:
    changed = changed_params(found)
    header = [("", "experiment")] + [two_lines(key, ".") for key in changed] + [two_lines(title, " ")
                                                                                for title, *_ in HEADLINE]
    table = [[row["name"] + (" (failed)" if row["failed"] else "")]
             + [param(row["params"].get(key)) for key in changed]
             + [cell(row, *spec[1:]) for spec in HEADLINE] for row in found]
    lines = [[top for top, _ in header], [bottom for _, bottom in header]]
    widths = [max(len(line[i]) for line in lines + table) for i in range(len(header))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip()
                     for line in lines + [["─" * width for width in widths]] + table)


def main(options: list[str]) -> None:
    print(render(rows(json.loads(dvc("exp", "show", "--json", *options)))))


if __name__ == "__main__":
    main(sys.argv[1:])
