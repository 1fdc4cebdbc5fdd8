"""download: put the raw datasets in data/raw/, from the committed sample, a local folder, or the web.

`hub` streams the EmpatheticDialogues tarball and the Human-Like-DPO data.json with a progress bar,
retries with backoff, checks each file's sha256 against its pin in params, and extracts the tarball safely.
Each file's download, retries included, ends within data.hub.deadline_s, and none may exceed 2 GiB (nor the
tarball's contents: chattune.data.fetching): a server that sends slowly or endlessly stops the stage, naming the limit.
Everything lands in a temporary folder renamed to data/raw at the end: a file that differs from its pin stops
the stage, naming both hashes, and nothing is written. metrics/download.json records every file's sha256 and,
where the server names it (the Hugging Face hub's X-Repo-Commit header), the commit it resolved, so that a
file fetched from a branch can be pinned afterwards (docs/sharing.md).
"""
from __future__ import annotations

from pathlib import Path

from chattune.common.errors import run
from chattune.common.outputs import atomic_dir, write_json
from chattune.common.params import load_params
from chattune.common.paths import METRICS_DIR, RAW_DIR, SAMPLE_DIR
from chattune.data.fetching import copy_raw, download_hub, file_sizes, raw_files


def main() -> None:
    params = load_params()
    data = params.data
    files = raw_files(data)
    with atomic_dir(RAW_DIR) as tmp:
        if data.source == "hub":
            checksums = download_hub(data, tmp)
        else:
            copy_raw(SAMPLE_DIR if data.source == "sample" else Path(data.local_dir), tmp, files)
            checksums = {}
        metrics = {"source": data.source, **checksums, **file_sizes(tmp, files)}
    write_json(METRICS_DIR / "download.json", metrics)
    print(f"download: {data.source} -> {RAW_DIR}/")


if __name__ == "__main__":
    run(main, "download")
