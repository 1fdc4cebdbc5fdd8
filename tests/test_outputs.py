"""Atomic outputs: a write that fails or is killed leaves the previous output whole, and no temporary behind."""
import signal
import subprocess
import sys

import pytest

from chattune.common.outputs import atomic_dir, write_json
from conftest import ROOT

# Starts writing `out/model` (a folder) and `out/metrics.json` over earlier versions, then signals itself.
KILLED_MID_WRITE = """
import os, signal, sys
from chattune.common.outputs import atomic_dir, atomic_file
with atomic_dir("out/model") as folder:
    (folder / "weights.bin").write_bytes(b"half")
    with atomic_file("out/metrics.json") as handle:
        handle.write('{"loss": ')
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
"""


def leftovers(folder):
    return sorted(path.name for path in folder.iterdir() if ".tmp-" in path.name)


def test_an_exception_keeps_the_old_output(tmp_path):
    write_json(tmp_path / "out/metrics.json", {"loss": 1})
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as folder:
            (folder / "weights.bin").write_bytes(b"new")
            raise RuntimeError("out of memory")
    assert (tmp_path / "out/metrics.json").read_text() == '{\n  "loss": 1\n}\n'
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_killed_write_leaves_the_old_output_and_the_next_write_cleans_up(tmp_path, signal_name):
    (tmp_path / "out/model").mkdir(parents=True)
    (tmp_path / "out/model/weights.bin").write_bytes(b"old")
    write_json(tmp_path / "out/metrics.json", {"loss": 1})
    result = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, signal_name], cwd=tmp_path,
                            env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    number = getattr(signal, signal_name)
    assert result.returncode in (128 + number, -number), result.stderr
    assert (tmp_path / "out/model/weights.bin").read_bytes() == b"old"
    assert (tmp_path / "out/metrics.json").read_text() == '{\n  "loss": 1\n}\n'
    # SIGTERM unwinds and removes the temporaries; SIGKILL cannot, so the next write does.
    left = [name.split(".tmp-")[0] for name in leftovers(tmp_path / "out")]
    assert left == ([] if signal_name == "SIGTERM" else [".metrics.json", ".model"])
    with atomic_dir(tmp_path / "out/model") as folder:
        (folder / "weights.bin").write_bytes(b"new")
    write_json(tmp_path / "out/metrics.json", {"loss": 0.5})
    assert leftovers(tmp_path / "out") == []
    assert (tmp_path / "out/model/weights.bin").read_bytes() == b"new"


def test_bytes_reach_the_disk_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """fsync of the temporary file (and every file of a temporary folder) before it is renamed, then of the
    folder holding it: a power cut then leaves the old output or the new one, never an empty file."""
    import os

    from chattune.common import outputs

    synced, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (synced.append(f"rename {a} -> {b}"), real_replace(a, b)))
    write_json(tmp_path / "out/metrics.json", {"loss": 1})
    assert len(synced) == 3 and ".metrics.json.tmp-" in synced[0]
    assert synced[1].startswith("rename") and synced[2] == str(tmp_path / "out")
    synced.clear()
    with outputs.atomic_dir(tmp_path / "out/model") as folder:
        (folder / "weights.bin").write_bytes(b"new")
    files = [entry for entry in synced[:-2] if not entry.startswith("rename")]
    assert any(entry.endswith("/weights.bin") for entry in files) and synced[-2].startswith("rename")
    assert synced[-1] == str(tmp_path / "out")
