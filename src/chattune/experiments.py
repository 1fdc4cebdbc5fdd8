"""What the experiment tools (tools.compare, tools.show) share: DVC's own answers, flattened params, and one way
to mark a paired difference as decided or not."""
from __future__ import annotations

import subprocess
import sys


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def decided(value: float, low: float, high: float, decidable: bool = True) -> str:
    """A paired difference with its 95% interval, marked ▲ / ▼ when the interval lies above / below zero (a
    change the prompts can tell apart), unmarked when it holds zero, and ? when the metric is uninformative (a
    learned metric whose classifier failed its own check): never decided, whatever its interval."""
    mark = "?" if not decidable else "▲" if low > 0 else "▼" if high < 0 else " "
    return f"{value:+.3f}{mark}"


def dvc(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "dvc", *args], check=True, capture_output=True, text=True).stdout
