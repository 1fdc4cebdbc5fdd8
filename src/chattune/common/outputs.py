"""Atomic outputs: a stage writes into a temporary sibling and renames it into place at the end,
so a stage killed half-way never leaves an output that looks done. The temporary's bytes are flushed to the
disk (fsync) before the rename, and the folder after it: without that, a power cut soon after can leave the
renamed file empty (the rating page rewrites its file on every click).

While a temporary exists, SIGTERM (a preempted job, `kill`) unwinds the stack as Ctrl-C does, so the
temporary is removed; one left by SIGKILL is removed by the next write of the same output. A temporary carries
its process's id, and that cleanup removes only those of processes that have ended: two processes writing one
file (two rating servers for one rater) never delete each other's in flight. Files that people or processes
share are read, changed and written under a lock (`locked`), which holds across processes.

Every file of an output follows the umask, weights included (safetensors writes its files private, 0600), so
a teammate or a server running as another user can read what `dvc pull` or the export put there."""
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

from filelock import FileLock, Timeout

from chattune.common.errors import ProjectError


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


def _seal_tree(folder: Path) -> None:
    """Give every file the umask's mode and flush it, then each folder, to the disk."""
    mode = 0o666 & ~_umask()
    for root, _, files in os.walk(folder):
        for name in files:
            os.chmod(Path(root) / name, mode)
            _fsync(Path(root) / name)
        _fsync(Path(root))


def _ended(name: str, prefix: str) -> bool:
    """Whether the process that made the temporary `name` (named prefix + pid + "-" + random) has ended."""
    pid = name[len(prefix):].split("-", 1)[0]
    if not (pid.isascii() and pid.isdigit() and len(pid) <= 9):
        return True  # not named by this module's rule (left by an older version), or no pid there can be
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _prepare(final: Path) -> str:
    """Make the parent folder and remove the temporaries of ended processes; return this process's prefix."""
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    for stale in final.parent.glob(f"{prefix}*"):
        if _ended(stale.name, prefix):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    return f"{prefix}{os.getpid()}-"


def _temporary_file(final: Path) -> tuple[int, str]:
    fd, tmp = tempfile.mkstemp(prefix=_prepare(final), dir=final.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    return fd, tmp


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGTERM and SIGINT back (they arrive once this ends) while outputs are swapped in."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _commit(texts: dict[Path, str], folders: dict[Path, Path], check=None) -> None:
    """Swap in text outputs and finished temporary folders (final -> temporary) together: every text is encoded
    and written to its temporary and every folder flushed first, then `check()` (which may refuse by raising),
    then the renames, with SIGTERM and SIGINT held back. A folder replaces its old self by two renames, and the
    old one is removed afterwards. Only a SIGKILL or a power cut in that instant could part the outputs."""
    encoded = {Path(path): text.encode("utf-8") for path, text in texts.items()}  # refuses before any file changes
    written = []
    try:
        for final, data in encoded.items():
            fd, tmp = _temporary_file(final)
            written.append((tmp, final))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        for tmp in folders.values():
            _seal_tree(tmp)
        if check:
            check()
    except BaseException:
        for tmp, _ in written:
            Path(tmp).unlink(missing_ok=True)
        raise
    old = []
    with _signals_held():
        for tmp, final in written:
            os.replace(tmp, final)
        for final, tmp in folders.items():
            if final.exists():
                old.append(final.parent / f"{tmp.name}-old")
                os.replace(final, old[-1])
            os.replace(tmp, final)
    for folder in {final.parent for final in [*encoded, *folders]}:
        _fsync(folder)
    for path in old:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: Path | str, together: dict[Path, str] | None = None, check=None) -> Iterator[Path]:
    """Yield an empty temporary directory beside `final`; on success it replaces `final`, and the `together` texts
    (path -> text) their files, all at once (_commit). `check()`, run just before, may refuse by raising."""
    final = Path(final)
    with _terminate_unwinds():
        tmp = Path(tempfile.mkdtemp(prefix=_prepare(final), dir=final.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the output should not be
        try:
            yield tmp
            _commit(together or {}, {final: tmp}, check)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextlib.contextmanager
def atomic_file(final: Path | str, mode: str = "w") -> Iterator:
    final = Path(final)
    with _terminate_unwinds():
        fd, tmp = _temporary_file(final)
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


def write_together(texts: dict[Path, str]) -> None:
    """Write several outputs of one stage (path -> text) so that they change together or not at all (_commit):
    text that UTF-8 cannot hold stops here, before any file changes."""
    with _terminate_unwinds():
        _commit(texts, {})


class FileBusy(ProjectError, OSError):
    """Another writer has held a shared file's lock for longer than a writer waits."""


LOCK_WAIT_S = 10  # how long a writer waits for a shared file's lock before it gives up (FileBusy)


@contextlib.contextmanager
def locked(path: Path | str) -> Iterator[None]:
    """Hold the lock of `path` (the file `.<name>.lock` beside it), across threads and processes, for a
    read-change-write of a file that several writers share."""
    path, timeout_s = Path(path), LOCK_WAIT_S
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path.parent / f".{path.name}.lock", timeout=timeout_s)
    try:
        with lock:
            yield
    except Timeout:
        raise FileBusy(f"{path}: another writer has held it for {timeout_s:.0f} s; try again") from None


def json_text(data) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def jsonl_text(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_json(path: Path | str, data) -> None:
    with atomic_file(path) as handle:
        handle.write(json_text(data))


def read_jsonl(path: Path | str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
