"""Fetching the raw datasets: the committed sample or a local folder copied, or the two files streamed from the web
with a progress bar, retries with backoff, a deadline and size caps, each checked against its sha256 pin, and the
EmpatheticDialogues tarball extracted only after every member is checked."""
from __future__ import annotations

import hashlib
import lzma
import re
import shutil
import sys
import tarfile
import time
import zlib
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import requests
import urllib3
from tqdm import tqdm

from chattune.common.errors import DownloadError
from chattune.common.paths import DPO_FILE, DPO_SUBDIR, ED_SPLITS, ED_SUBDIR

CHUNK = 1 << 16
# Far above the real files (the tarball is 28 MB and holds 105 MB; data.json is 20 MB), far below a full disk.
MAX_BYTES = 2 << 30
MAX_EXTRACTED = 2 << 30
MAX_MEMBERS = 1000


class OverLimit(DownloadError):
    """A download that broke a limit: trying again would break it again."""


def raw_files(data) -> list[Path]:
    """The files the data params need in the raw layout, relative to data/raw/ (and to the source folder): the
    built-in datasets' fixed names, and each file of a dataset of your own as it names it."""
    files = [] if data.sft.own else [Path(ED_SUBDIR) / f"{split}.csv" for split in ED_SPLITS]
    files += [] if data.dpo.own else [Path(DPO_SUBDIR) / DPO_FILE]
    for own in (data.sft.own, data.dpo.own):
        files += [Path(name) for name in own.files.values()] if own else []
    return list(dict.fromkeys(files))


def copy_raw(source: Path, dest: Path, files: list[Path]) -> None:
    """Copy `files` (relative paths) from `source` into `dest`."""
    missing = [str(source / rel) for rel in files if not (source / rel).is_file()]
    if missing:
        raise DownloadError("missing raw file(s): " + ", ".join(missing))
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, dest / rel)


def fetch(url: str, dest: Path, sha256: str | None, retries: int, timeout_s: float, deadline_s: float, key: str,
          max_bytes: int = MAX_BYTES) -> tuple[str, str | None]:
    """Stream `url` into `dest`, retrying with exponential backoff; return the file's sha256 and the commit the
    server resolved the URL to (its X-Repo-Commit header), or None.

    A dropped connection, a short body, a malformed header or a silence of timeout_s counts as a failed attempt.
    The attempts together end within deadline_s. A file over max_bytes or a checksum mismatch does not retry:
    the server sent other bytes than those pinned in params (`key`).
    """
    deadline = time.monotonic() + deadline_s
    for attempt in range(1, retries + 1):
        try:
            digest, commit = _fetch_once(url, dest, timeout_s, deadline, max_bytes)
            break
        except OverLimit as error:
            dest.unlink(missing_ok=True)
            raise DownloadError(f"{url}: {error}; nothing was written") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, DownloadError) as error:
            dest.unlink(missing_ok=True)
            wait = min(2 ** (attempt - 1), 30)
            if attempt == retries:
                raise DownloadError(f"{url}: failed after {retries} attempts: {error}") from error
            if time.monotonic() + wait >= deadline:
                raise DownloadError(f"{url}: not complete within data.hub.deadline_s ({deadline_s:g} s), after "
                                    f"{attempt} attempt(s): {error}") from error
            print(f"{url}: attempt {attempt} failed ({error}); retrying in {wait}s", file=sys.stderr)
            time.sleep(wait)
    if sha256 and digest != sha256:
        dest.unlink(missing_ok=True)
        raise DownloadError(f"{url}: sha256 mismatch: {key} pins {sha256}, the server sent {digest}"
                            + (f" (commit {commit})" if commit else "") + "; nothing was written")
    return digest, commit


def content_length(headers) -> int | None:
    value = headers.get("Content-Length")
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,18}", value.strip()):  # ASCII digits ("²".isdigit()), and few enough for int()
        raise DownloadError(f"malformed Content-Length header {value[:40]!r}")
    return int(value)


def _fetch_once(url: str, dest: Path, timeout_s: float, deadline: float, max_bytes: int) -> tuple[str, str | None]:
    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DownloadError("the deadline passed before the file was complete")
        return left

    digest = hashlib.sha256()
    with requests.get(url, stream=True, timeout=min(timeout_s, remaining())) as response:
        response.raise_for_status()
        expected = content_length(response.headers)
        if expected is not None and expected > max_bytes:
            raise OverLimit(f"the server announces {expected} bytes; at most {max_bytes}")
        received = 0
        with open(dest, "wb") as out, tqdm(total=expected, unit="B", unit_scale=True, desc=dest.name) as bar:
            # read1 returns what has arrived (a read of CHUNK bytes waits for all of them), so a server sending a
            # byte at a time meets the deadline too
            while chunk := response.raw.read1(CHUNK, decode_content=True):
                received += len(chunk)
                if received > max_bytes:
                    raise OverLimit(f"the server sent more than {max_bytes} bytes")
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
                remaining()
    if expected is not None and received != expected:
        raise DownloadError(f"connection closed after {received} of {expected} bytes")
    # The hub names the commit in its own answer; for a large file that answer redirects to a CDN, which names none
    return digest.hexdigest(), next((hop.headers["X-Repo-Commit"] for hop in (*response.history, response)
                                     if "X-Repo-Commit" in hop.headers), None)


def unsafe(member: tarfile.TarInfo) -> str | None:
    """Why a tar member may not be extracted, or None. Checked here before tarfile's 'data' filter, which
    CPython 3.11 before 3.11.13 lets some escapes through (CVE-2025-4517 and its siblings)."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        return "its path leaves the destination"
    if member.issym() or member.islnk():
        return "it is a link"
    if not (member.isfile() or member.isdir()):
        return "it is a device, FIFO or other special file"
    return None


def extract_empatheticdialogues(tarball: Path, dest: Path) -> None:
    """Extract the three CSVs. Every member must be a plain file or folder inside `dest`; the 'data' filter
    checks the same again."""
    unpack = dest / ".unpack"
    try:
        with tarfile.open(tarball, "r:*") as tar:
            size = 0
            for count, member in enumerate(tar, start=1):
                why = unsafe(member)
                if why:
                    raise DownloadError(f"{tarball.name}: refusing member {member.name!r}: {why}")
                size += member.size
                if count > MAX_MEMBERS or size > MAX_EXTRACTED:
                    raise DownloadError(f"{tarball.name}: over {MAX_MEMBERS} members or {MAX_EXTRACTED} bytes "
                                        "unpacked: not the EmpatheticDialogues archive")
            tar.extractall(unpack, filter="data")
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error) as error:
        raise DownloadError(f"{tarball.name}: cannot extract: {error}") from error
    (dest / ED_SUBDIR).mkdir(parents=True, exist_ok=True)
    for split in ED_SPLITS:
        member = unpack / ED_SUBDIR / f"{split}.csv"
        if not member.is_file():
            raise DownloadError(f"{tarball.name}: no {ED_SUBDIR}/{split}.csv in the archive")
        member.rename(dest / ED_SUBDIR / f"{split}.csv")
    shutil.rmtree(unpack)


def download_hub(data, dest: Path) -> dict:
    """What the data params need from the web into `dest`: the built-in datasets from their hosts, each dataset of
    your own from its hub repository at its commit. Returns what metrics/download.json records of them: sha256, and
    the commit where known."""
    hub, recorded = data.hub, {}
    wanted = []  # (name, url, sha256 pin, target, the pin's key)
    if not data.sft.own:
        wanted.append(("empatheticdialogues", hub.empatheticdialogues_url, hub.empatheticdialogues_sha256,
                       dest / "empatheticdialogues.tar.gz", "data.hub.empatheticdialogues_sha256"))
    if not data.dpo.own:
        wanted.append(("human_like_dpo", hub.human_like_dpo_url, hub.human_like_dpo_sha256,
                       dest / DPO_SUBDIR / DPO_FILE, "data.hub.human_like_dpo_sha256"))
    for section, own in (("sft", data.sft.own), ("dpo", data.dpo.own)):
        for file in own.files.values() if own else []:  # a commit pins the bytes: the hub addresses files by it
            url = f"{hub.endpoint}/datasets/{own.repo}/resolve/{own.commit}/{quote(file)}"
            wanted.append((f"{section}.{file}", url, None, dest / file, f"data.{section}.own.commit"))
    for name, url, pin, target, key in wanted:
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, commit = fetch(url, target, pin, hub.retries, hub.timeout_s, hub.deadline_s, key)
        recorded[f"{name}_sha256"] = digest
        if commit:
            recorded[f"{name}_commit"] = commit
        if not pin and key.endswith("_sha256"):
            print(f"download: {name} is not pinned: its sha256 is {digest}"
                  + (f", fetched at commit {commit}" if commit else "")
                  + f". Pin it with {key} (docs/sharing.md, Pinning the data)", file=sys.stderr)
    if not data.sft.own:
        extract_empatheticdialogues(dest / "empatheticdialogues.tar.gz", dest)
        (dest / "empatheticdialogues.tar.gz").unlink()
    return recorded


def file_sizes(root: Path, files: list[Path]) -> dict:
    return {f"bytes.{rel.as_posix()}": (root / rel).stat().st_size for rel in files}
