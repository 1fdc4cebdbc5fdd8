"""Atomic outputs: a stage writes into a temporary sibling and renames it into place at the end,
so a stage killed half-way never leaves an output that looks done. The temporary's bytes are flushed to the
disk (fsync) before the rename, and the folder after it: without that, a power cut soon after can leave the
renamed file empty (the rating page rewrites its file on every click).

While a temporary exists, SIGTERM (a preempted job, `kill`) unwinds the stack as Ctrl-C does, so the
temporary is removed; one left by SIGKILL is removed by the next write of the same output."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _raise_exit(signum, _frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _terminate_unwinds() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def _prepare(final: Path) -> str:
    """Make the parent folder and remove temporaries a killed run left; return the temporary's prefix."""
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    for stale in final.parent.glob(f"{prefix}*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    return prefix


@contextlib.contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield an empty temporary directory beside `final`; on success it replaces `final`."""
    final = Path(final)
    with _terminate_unwinds():
        tmp = Path(tempfile.mkdtemp(prefix=_prepare(final), dir=final.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the output should not be
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(final.parent)


@contextlib.contextmanager
def atomic_file(final: Path | str, mode: str = "w") -> Iterator:
    final = Path(final)
    with _terminate_unwinds():
        fd, tmp = tempfile.mkstemp(prefix=_prepare(final), dir=final.parent)
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        os.replace(tmp, final)
        _fsync(final.parent)


def write_json(path: Path | str, data) -> None:
    with atomic_file(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def write_jsonl(path: Path | str, rows: Iterable[dict]) -> None:
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path | str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
