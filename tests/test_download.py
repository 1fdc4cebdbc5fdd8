"""The hub download path, against an HTTPS server on 127.0.0.1 (a certificate this test makes) serving files
this test builds."""
import gzip
import hashlib
import io
import json
import lzma
import random
import ssl
import subprocess
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from chattune.common.errors import DownloadError
from chattune.common.params import compose
from chattune.data import fetching
from conftest import ROOT, edit_params
from stages import download

CSV = b"conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags\nc1,1,sad,s,1,hi,x,\n"
PAIRS = json.dumps([{"prompt": "Hi?", "chosen": "Hey!", "rejected": "Greetings."}]).encode()


def tarball(members: dict[str, bytes | Path | bytes]) -> bytes:
    """A gzipped tar; a Path value makes the member a symlink to that path, a tar type (e.g. tarfile.CHRTYPE)
    a special file of that type."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, Path):
                info.type, info.linkname = tarfile.SYMTYPE, str(data)
                tar.addfile(info)
            elif data in (tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.LNKTYPE):
                info.type = data
                if data == tarfile.LNKTYPE:
                    info.linkname = "empatheticdialogues/train.csv"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


GOOD_TAR = tarball({f"empatheticdialogues/{s}.csv": CSV + s.encode() for s in ("train", "valid", "test")})


class Server:
    """Serves `files`; a path listed in `drop_after` sends that many bytes of the body, then hangs up."""

    def __init__(self, certificate: Path, key: Path):
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.fail_first: dict[str, int] = {}
        self.headers: dict[str, dict[str, str]] = {}  # extra response headers per path
        self.redirects: dict[str, str] = {}  # path -> where it redirects (302), as the hub sends large files on
        self.hits: dict[str, int] = {}
        self.drip: dict[str, float] = {}  # path -> seconds between the bytes of its body, sent one at a time
        self.length: dict[str, str | None] = {}  # path -> its Content-Length header as sent (None: no header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if server.fail_first.get(self.path, 0) >= server.hits[self.path]:
                    self.send_error(503)
                    return
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    for name, value in server.headers.get(self.path, {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                length = server.length.get(self.path, str(len(body)))
                if length is not None:
                    self.send_header("Content-Length", length)
                for name, value in server.headers.get(self.path, {}).items():
                    self.send_header(name, value)
                self.end_headers()
                body = body[: server.drop_after.get(self.path, len(body))]
                try:
                    for start in range(0, len(body), 1 if self.path in server.drip else len(body) or 1):
                        time.sleep(server.drip.get(self.path, 0))
                        self.wfile.write(body[start: start + (1 if self.path in server.drip else len(body))])
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass  # the client gave up
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, which the downloads in this module trust."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "cert.pem")], check=True, capture_output=True)
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def server(certificate, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))  # requests trusts it, as a system CA
    server = Server(*certificate)
    server.files = {"/ed.tar.gz": GOOD_TAR, "/data.json": PAIRS}
    yield server
    server.httpd.shutdown()


@pytest.fixture
def hub_project(project, server, monkeypatch):
    monkeypatch.setattr(fetching.time, "sleep", lambda seconds: None)  # backoff without waiting
    compose(["data=hub"])
    edit_params(project / "params.yaml", **{
        "data.hub.empatheticdialogues_url": server.url + "/ed.tar.gz",
        "data.hub.empatheticdialogues_sha256": None,  # the preset pins the real tarball's; these tests serve others
        "data.hub.human_like_dpo_url": server.url + "/data.json",
        "data.hub.retries": 3,
        "data.hub.timeout_s": 5,
    })
    return project


def leftovers(project: Path) -> list[str]:
    """What download left in data/, besides the committed inputs (the sample and the eval prompt sets)."""
    return sorted(str(p.relative_to(project)) for p in (project / "data").iterdir() if p.name not in ("sample", "eval"))


def test_hub_download_fetches_extracts_and_records_checksums(hub_project):
    download.main()
    raw = hub_project / "data/raw"
    assert (raw / "empatheticdialogues/valid.csv").read_bytes() == CSV + b"valid"
    assert (raw / "human_like_dpo/data.json").read_bytes() == PAIRS
    assert sorted(p.name for p in raw.rglob("*") if p.is_file()) == ["data.json", "test.csv", "train.csv", "valid.csv"]
    metrics = json.loads((hub_project / "metrics/download.json").read_text())
    assert metrics["empatheticdialogues_sha256"] == hashlib.sha256(GOOD_TAR).hexdigest()
    assert metrics["human_like_dpo_sha256"] == hashlib.sha256(PAIRS).hexdigest()
    assert leftovers(hub_project) == ["data/raw"]


def test_pinned_checksums_that_match_pass(hub_project):
    edit_params(hub_project / "params.yaml", **{
        "data.hub.empatheticdialogues_sha256": hashlib.sha256(GOOD_TAR).hexdigest(),
        "data.hub.human_like_dpo_sha256": hashlib.sha256(PAIRS).hexdigest(),
    })
    download.main()
    assert (hub_project / "data/raw/human_like_dpo/data.json").exists()


def test_transient_server_errors_are_retried(hub_project, server):
    server.fail_first["/ed.tar.gz"] = 2
    download.main()
    assert server.hits["/ed.tar.gz"] == 3
    assert (hub_project / "data/raw/empatheticdialogues/train.csv").exists()


def test_connection_dropped_mid_file_fails_cleanly(hub_project, server):
    server.drop_after["/ed.tar.gz"] = len(GOOD_TAR) // 2
    with pytest.raises(DownloadError, match=r"ed.tar.gz: failed after 3 attempts: .*"):
        download.main()
    assert server.hits["/ed.tar.gz"] == 3
    assert leftovers(hub_project) == []  # no data/raw, no temporary folder


def test_the_hub_preset_pins_the_tarball_parlai_publishes():
    hub = yaml.safe_load((ROOT / "conf/data/hub.yaml").read_text())["hub"]
    assert hub["empatheticdialogues_sha256"] == "56f234d77b7dd1f005fd365bb17769cfe346c3c84295b69bc069c8ccb83be03d"


@pytest.mark.parametrize("key, url", [("human_like_dpo_sha256", "/data.json"),
                                      ("empatheticdialogues_sha256", "/ed.tar.gz")])
def test_a_file_that_differs_from_its_pin_stops_naming_both_hashes_and_writes_nothing(hub_project, server, key, url):
    metrics_before = (hub_project / "metrics/download.json").read_bytes()
    server.headers[url] = {"X-Repo-Commit": "c0ffee" * 6 + "c0ff"}
    edit_params(hub_project / "params.yaml", **{f"data.hub.{key}": "0" * 64})
    sent = hashlib.sha256(server.files[url]).hexdigest()
    with pytest.raises(DownloadError, match=rf"sha256 mismatch: data.hub.{key} pins 0{{64}}, the server sent "
                                                     rf"{sent} \(commit (c0ffee){{6}}c0ff\); nothing was written"):
        download.main()
    assert leftovers(hub_project) == []
    assert (hub_project / "metrics/download.json").read_bytes() == metrics_before


def test_an_unpinned_file_is_recorded_with_the_commit_the_hub_resolved(hub_project, server, capsys):
    """The hub answers a large file with a redirect to its CDN, and names the commit on that redirect only."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    server.files["/cdn/data.json"] = server.files.pop("/data.json")
    server.redirects["/data.json"] = server.url + "/cdn/data.json"
    server.headers["/data.json"] = {"X-Repo-Commit": commit}
    download.main()
    metrics = json.loads((hub_project / "metrics/download.json").read_text())
    sha = hashlib.sha256(PAIRS).hexdigest()
    assert (metrics["human_like_dpo_sha256"], metrics["human_like_dpo_commit"]) == (sha, commit)
    assert "empatheticdialogues_commit" not in metrics  # its server names no commit
    assert f"human_like_dpo is not pinned: its sha256 is {sha}, fetched at commit {commit}" in capsys.readouterr().err
    # pinned as docs/sharing.md says (the commit in the URL, the sha256 beside it), the same bytes pass
    server.files[f"/resolve/{commit}/data.json"] = PAIRS
    edit_params(hub_project / "params.yaml", **{"data.hub.human_like_dpo_url": f"{server.url}/resolve/{commit}/data.json",
                                                "data.hub.human_like_dpo_sha256": sha})
    download.main()
    assert "human_like_dpo is not pinned" not in capsys.readouterr().err


COMPLETE = {f"empatheticdialogues/{s}.csv": CSV for s in ("train", "valid", "test")}


@pytest.mark.parametrize("members, message", [
    ({"../escape.csv": b"x", **COMPLETE}, "refusing member '../escape.csv': its path leaves the destination"),
    ({"/tmp/escape.csv": b"x", **COMPLETE}, "refusing member '/tmp/escape.csv': its path leaves the destination"),
    ({**COMPLETE, "empatheticdialogues/x/../../../escape.csv": b"x"}, "its path leaves the destination"),
    ({"empatheticdialogues/train.csv": Path("../../../../escape.csv")},
     "refusing member 'empatheticdialogues/train.csv': it is a link"),
    ({**COMPLETE, "empatheticdialogues/hard": tarfile.LNKTYPE}, "refusing member 'empatheticdialogues/hard': it is a link"),
    ({**COMPLETE, "empatheticdialogues/tty": tarfile.CHRTYPE}, "it is a device, FIFO or other special file"),
    ({**COMPLETE, "empatheticdialogues/pipe": tarfile.FIFOTYPE}, "it is a device, FIFO or other special file"),
    ({"empatheticdialogues/train.csv": CSV}, "no empatheticdialogues/valid.csv in the archive"),
])
def test_unsafe_or_incomplete_archives_are_refused(hub_project, server, members, message):
    server.files["/ed.tar.gz"] = tarball(members)
    with pytest.raises(DownloadError, match=message):
        download.main()
    assert leftovers(hub_project) == []
    assert not (hub_project.parent / "escape.csv").exists()


def test_corrupt_tarball_is_refused(hub_project, server):
    server.files["/ed.tar.gz"] = GOOD_TAR[: len(GOOD_TAR) // 2]  # served in full, but truncated at the source
    with pytest.raises(DownloadError, match="empatheticdialogues.tar.gz: cannot extract: Compressed file ended"):
        download.main()
    assert leftovers(hub_project) == []


def test_an_xz_archive_that_breaks_off_is_refused(hub_project, server):
    filler = {"empatheticdialogues/filler.bin": random.Random(0).randbytes(300_000)}
    packed = bytearray(lzma.compress(gzip.decompress(tarball({**filler, **COMPLETE}))))
    packed[-2000:-1980] = bytes(20)  # past the first block: lzma.LZMAError while reading, not a tarfile error
    server.files["/ed.tar.gz"] = bytes(packed)
    with pytest.raises(DownloadError, match="empatheticdialogues.tar.gz: cannot extract"):
        download.main()
    assert leftovers(hub_project) == []


def test_a_server_that_sends_a_byte_at_a_time_meets_the_deadline(server, tmp_path):
    """Every read arrives within timeout_s, yet the file would take 12 s: the deadline (2 s) ends it."""
    server.drip["/data.json"] = 0.05
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"not complete within data.hub.deadline_s \(2 s\)"):
        fetching.fetch(server.url + "/data.json", tmp_path / "data.json", None, 3, 5, 2, "key")
    assert time.monotonic() - started < 6 and not (tmp_path / "data.json").exists()


@pytest.mark.parametrize("length", [str(len(PAIRS)), None])  # announced, or found out while streaming
def test_a_file_over_the_size_cap_stops_at_once_without_retrying(server, tmp_path, length):
    server.length["/data.json"] = length
    with pytest.raises(DownloadError, match=r"data.json: the server (announces \d+|sent more than 10) bytes"):
        fetching.fetch(server.url + "/data.json", tmp_path / "data.json", None, 3, 5, 60, "key", max_bytes=10)
    assert server.hits["/data.json"] == 1 and not (tmp_path / "data.json").exists()


@pytest.mark.parametrize("length", ["abc", "\u00b2", "9" * 5000])  # "²".isdigit(); int() refuses 5,000 digits
def test_a_malformed_content_length_is_a_failed_try(hub_project, server, length):
    server.length["/data.json"] = length
    with pytest.raises(DownloadError, match="failed after 3 attempts: malformed Content-Length header"):
        download.main()
    assert server.hits["/data.json"] == 3 and leftovers(hub_project) == []


def test_a_plain_http_url_is_refused_by_the_params_schema(project):
    from chattune.common.errors import ParamsError

    with pytest.raises(ParamsError, match="data.hub.human_like_dpo_url: String should match pattern '\\^https://'"):
        compose(["data=hub", "data.hub.human_like_dpo_url=http://example.org/data.json"])


def test_sample_and_local_sources_copy_the_raw_layout(project, tmp_path_factory):
    download.main()
    sample = project / "data/sample/empatheticdialogues/train.csv"
    assert (project / "data/raw/empatheticdialogues/train.csv").read_bytes() == sample.read_bytes()

    local = tmp_path_factory.mktemp("mine")
    (local / "empatheticdialogues").mkdir()
    compose(["data=local", f"data.local_dir={local}"])
    with pytest.raises(DownloadError, match=r"missing raw file\(s\): .*mine\d*/empatheticdialogues/train.csv"):
        download.main()


def test_a_hub_dataset_of_your_own_is_fetched_at_its_commit_and_nothing_else_of_sft(hub_project, server):
    commit = "0123456789abcdef0123456789abcdef01234567"
    chats = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    server.files[f"/datasets/me/chats/resolve/{commit}/data/train.jsonl"] = chats
    edit_params(hub_project / "params.yaml", **{"data.hub.endpoint": server.url, "data.sft": {
        "format": "messages", "own": {"files": {"train": "data/train.jsonl"}, "columns": {}, "repo": "me/chats",
                                      "commit": commit}, "label": None, "group": None}})
    download.main()
    raw = hub_project / "data/raw"
    assert (raw / "data/train.jsonl").read_bytes() == chats
    assert sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file()) == [
        "data/train.jsonl", "human_like_dpo/data.json"]  # no EmpatheticDialogues: SFT does not read it
    assert "/ed.tar.gz" not in server.hits
    recorded = json.loads((hub_project / "metrics/download.json").read_text())
    assert recorded["sft.data/train.jsonl_sha256"] == hashlib.sha256(chats).hexdigest()
    assert recorded["bytes.data/train.jsonl"] == len(chats)

    del server.files[f"/datasets/me/chats/resolve/{commit}/data/train.jsonl"]  # another commit would be other bytes
    with pytest.raises(DownloadError, match=f"me/chats/resolve/{commit}/data/train.jsonl"):
        download.main()
    assert (raw / "data/train.jsonl").read_bytes() == chats  # the last download stays whole
