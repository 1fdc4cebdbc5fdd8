"""evaluate's PNG charts: one grouped bar chart per metric (prompt sets on the x axis, a bar per model, 95%
intervals as error bars) and one chart of the paired differences. `dvc plots show` lists them beside its own
charts of plots/eval.json."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CHARTS = {  # metric -> chart title
    "bleu": "BLEU (nltk sentence BLEU, method 4, 0-1)",
    "sacrebleu": "sacreBLEU (corpus, 0-100)",
    "chrf": "chrF (corpus, 0-100)",
    "bertscore_raw_f1": "BERTScore F1 (raw)",
    "bertscore_rescaled_f1": "BERTScore F1 (rescaled with bert-score's baseline)",
    "perplexity": "Perplexity of the reference replies",
    "mean_new_tokens": "Mean reply length (tokens)",
    "stop_rate": "Stop rate (reply ended with EOS)",
    "cut_rate": "Cut rate (reply reached the budget without EOS)",
    "repetition": "Repetition (share of replies repeating a 4-gram)",
    "humanlike": "Human-like replies (share, by the DPO-data classifier)",
    "emotion_accuracy": "Emotion named from the reply (accuracy; dashed: chance)",
}
BAR = 0.2


UNINFORMATIVE = "\nUNINFORMATIVE here: its classifier does not clear chance on its own check"


def draw(rows: list[dict], differences: dict[str, tuple[float, float, float]], chance: dict[str, float],
         uninformative: set[str], folder: Path) -> None:
    """`rows`: {set, model, <metric>, <metric>_low, <metric>_high} per set and model (the human reference
    among them, with the learned metrics only); `differences`: "<set>.<after>_minus_<before>.<metric>" ->
    (value, low, high); `chance`: set -> the emotion classifier's chance level; `uninformative`: the learned
    metrics whose classifier failed its check, said so on their charts, their differences never coloured decided;
    `folder`: where the PNGs go (evaluate's temporary for EVAL_CHARTS)."""
    sets = list(dict.fromkeys(row["set"] for row in rows))
    models = list(dict.fromkeys(row["model"] for row in rows))
    for metric, title in CHARTS.items():
        drawn = [m for m in models if any(metric in r for r in rows if r["model"] == m)]
        if not drawn:  # rescaled BERTScore where no baseline ships
            continue
        fig, ax = plt.subplots(figsize=(6.5, 3.5))
        for offset, model in enumerate(drawn):
            got = [next((r for r in rows if r["set"] == s and r["model"] == model and metric in r), None)
                   for s in sets]
            values = np.array([r[metric] if r else np.nan for r in got])
            errors = np.array([[r[metric] - r[f"{metric}_low"], r[f"{metric}_high"] - r[metric]] if r else [0, 0]
                               for r in got]).T
            ax.bar(np.arange(len(sets)) + (offset - (len(drawn) - 1) / 2) * BAR, values, BAR, yerr=errors,
                   capsize=3, label=model)
        if metric == "emotion_accuracy":
            for i, name in enumerate(sets):
                if name in chance:
                    ax.hlines(chance[name], i - 0.45, i + 0.45, colors="black", linestyles="dashed", linewidth=1)
        ax.set_xticks(np.arange(len(sets)), sets)
        ax.set_title(title + (UNINFORMATIVE if metric in uninformative else ""), fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / f"{metric}.png", dpi=100)
        plt.close(fig)
    draw_differences(folder, differences, uninformative)


def draw_differences(folder, differences: dict[str, tuple[float, float, float]], uninformative: set[str]) -> None:
    """One panel per metric (their scales differ); a bar per prompt set and training step."""
    metrics = list(dict.fromkeys(name.rsplit(".", 1)[1] for name in differences))
    labels = list(dict.fromkeys(name.rsplit(".", 1)[0] for name in differences))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 0.35 * len(labels) + 1.4), sharey=True)
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        got = [differences.get(f"{label}.{metric}", (np.nan, np.nan, np.nan)) for label in labels]
        values = np.array([value for value, _, _ in got])
        errors = np.nan_to_num(np.array([[value - low, high - value] for value, low, high in got]).T)
        decided = ["tab:gray" if metric in uninformative else "tab:blue" if low > 0 else "tab:red" if high < 0
                   else "tab:gray" for _, low, high in got]
        ax.barh(np.arange(len(labels)), values, xerr=errors, capsize=3, color=decided)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(np.arange(len(labels)), labels, fontsize=8)
        ax.set_title(metric + (" (uninformative)" if metric in uninformative else ""), fontsize=9)
    fig.suptitle("Paired differences, 95% bootstrap intervals: blue / red bars are rises / falls whose interval "
                 "is clear of 0; grey ones are undecided, as is every difference of an uninformative metric",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "differences.png", dpi=100)
    plt.close(fig)
