"""Sharing through a real S3 API: moto's server on 127.0.0.1, DVC's S3 remote, a bare git repo as origin."""
import hashlib
import json
import re
import socket

import boto3
import moto.settings
import pytest
from configobj import ConfigObj
from moto.server import ThreadedMotoServer

from conftest import run

BUCKET = "team-models"
CREDENTIALS = {}  # the team's access key, made by the s3 fixture


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server with a bucket and one IAM user allowed to use it; then it checks every key."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    admin = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="team")
    iam.put_user_policy(UserName="team", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="team")["AccessKey"]
    CREDENTIALS.update(access_key_id=key["AccessKeyId"], secret_access_key=key["SecretAccessKey"])
    boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
    unchecked = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
    moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from here on, unknown keys are refused
    yield url
    moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = unchecked
    server.stop()


@pytest.fixture(autouse=True)
def s3_compatible_checksums(monkeypatch):
    # What recent botocore needs for S3-compatible servers; the README says the same.
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "WHEN_REQUIRED")


def edit_config(path, section: str, values: dict) -> None:
    """What `dvc remote add/modify` writes, written directly (each dvc command costs a second or more)."""
    config = ConfigObj(str(path))
    config.setdefault(section, {}).update(values)
    config.write()


def use_remote(repo, endpoint: str, url: str = f"s3://{BUCKET}/project", credentials: dict | None = None) -> None:
    edit_config(repo / ".dvc/config", 'remote "storage"', {"url": url, "endpointurl": endpoint})
    edit_config(repo / ".dvc/config", "core", {"remote": "storage"})
    local_credentials(repo, credentials)


def local_credentials(repo, credentials: dict | None = None) -> None:
    # .dvc/config.local, which git ignores: never committed
    edit_config(repo / ".dvc/config.local", 'remote "storage"', credentials or CREDENTIALS)


def commit(repo, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", message], repo)


def digests(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tracked_outputs(repo) -> dict[str, str]:
    found = {}
    for folder in ("models/base", "models/sft", "models/dpo", "data/processed", "data/raw"):
        found.update({f"{folder}/{name}": digest for name, digest in digests(repo / folder).items()})
    return found


def test_push_then_a_fresh_clone_pulls_identical_adapters(pipeline_copy, s3, tmp_path):
    repo = pipeline_copy
    use_remote(repo, s3)
    commit(repo, "share through S3")
    assert ".dvc/config.local" not in run(["git", "ls-files"], repo).stdout
    run(["dvc", "push"], repo)

    clone = tmp_path / "teammate"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    local_credentials(clone)
    run(["dvc", "pull"], clone)
    assert tracked_outputs(clone) == tracked_outputs(repo)
    assert {"models/sft/adapter_model.safetensors", "models/dpo/adapter_model.safetensors"} <= set(tracked_outputs(clone))
    assert "in sync" in run(["dvc", "status", "-c"], clone).stdout
    answer = run(["python", "-m", "tools.chat", "--model", "dpo", "--prompt", "I feel lonely.",
                  "--max-new-tokens", "8"], clone)
    assert answer.stdout.strip()


def test_experiments_and_released_adapters_travel_through_git_and_s3(pipeline_copy, s3, tmp_path, monkeypatch):
    repo = pipeline_copy
    use_remote(repo, s3, f"s3://{BUCKET}/experiments")
    commit(repo, "baseline")
    released = digests(repo / "models/dpo")
    # GTO-style release: an annotated tag named artifact@version.
    run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "tag", "-a", "dpo-adapter@v0.1.0",
         "-m", "Release dpo-adapter v0.1.0"], repo)
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    run(["git", "push", "-q", "origin", "HEAD", "dpo-adapter@v0.1.0"], repo)
    run(["dvc", "push"], repo)

    run(["dvc", "exp", "run", "-n", "short-dpo", "-S", "dpo.max_steps=2", "-S", "dpo.warmup_steps=1"], repo)
    experiment = digests(repo / "models/dpo")
    assert experiment != released
    run(["dvc", "exp", "push", "origin", "short-dpo"], repo)

    clone = tmp_path / "teammate"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    local_credentials(clone)
    run(["dvc", "exp", "pull", "origin", "short-dpo"], clone)
    run(["dvc", "exp", "apply", "short-dpo"], clone)
    assert digests(clone / "models/dpo") == experiment

    # Fetched without cloning; credentials from the environment, as on a machine with no .dvc/config.local.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["secret_access_key"])
    out = tmp_path / "fetched"
    run(["dvc", "artifacts", "get", str(origin), "dpo-adapter", "--rev", "v0.1.0", "-o", str(out)], tmp_path)
    assert digests(out) == released


def cache_state(repo) -> dict[str, str]:
    return digests(repo / ".dvc/cache")


@pytest.mark.parametrize("breakage, message", [
    ("endpoint", r"Could not connect to the endpoint URL: \"http://127.0.0.1:\d+/"),
    ("credentials", r"Forbidden: An error occurred \(403\)"),
    ("bucket", "The specified bucket does not exist"),
])
def test_a_broken_remote_fails_clearly_and_keeps_local_work(pipeline_copy, s3, breakage, message):
    repo = pipeline_copy
    if breakage == "endpoint":
        use_remote(repo, f"http://127.0.0.1:{free_port()}")
    elif breakage == "credentials":
        use_remote(repo, s3, credentials={"access_key_id": "AKIANOTAREALKEY00000", "secret_access_key": "wrong"})
    else:
        use_remote(repo, s3, "s3://no-such-bucket/project")
    before_cache, before_work = cache_state(repo), tracked_outputs(repo)
    result = run(["dvc", "push"], repo, check=False)
    assert result.returncode != 0
    assert re.search(message, result.stderr)
    assert cache_state(repo) == before_cache and tracked_outputs(repo) == before_work
