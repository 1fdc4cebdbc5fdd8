import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
VENV_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference file {path} is absent (../shared/data/ sits beside the checkout)")
    return path


def project_files() -> list[str]:
    """What a fresh clone holds: tracked files plus new files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return [name for name in out.split("\0") if name and (ROOT / name).is_file()]


def copy_project(dest: Path) -> Path:
    for name in project_files():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    return dest


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PATH": VENV_PATH})
    if check and result.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def edit_params(path: Path, **changes) -> None:
    """edit_params(p, **{"sft.lora.r": 4}) sets a dotted key in a params.yaml."""
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A copy of the project (code, params, sample data), as the working directory."""
    copy_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# The suite's smaller preset for the embedded default: conf/config.yaml's own keys override the group presets
# (its `_self_` comes last), so appended there in a clone it holds for `dvc repro` and for `dvc exp run -S ...`
# alike. It leaves every preset's own knobs alone (tests/test_experiments.py checks them through the queue).
TEST_PRESET = """
# The test suite's smaller preset (tests/conftest.py): one SFT epoch, a few DPO steps, fewer test prompts,
# shorter replies and fewer bootstrap resamples than the embedded default.
sft:
  epochs: 1
dpo:
  max_steps: 12
eval:
  test_size: 16
  max_new_tokens: 24
  bootstrap_samples: 200
"""


COMPOSING = threading.Lock()  # Hydra's global state takes one composition at a time


def use_test_preset(repo: Path) -> None:
    from stages.params import compose

    with open(repo / "conf/config.yaml", "a") as config:
        config.write(TEST_PRESET)
    with COMPOSING:
        compose([], output=repo / "params.yaml", conf_dir=repo / "conf")


def cloned_and_reproduced(dest: Path) -> Path:
    """The project as a fresh clone (a git repo) at `dest`, on the test preset, after one `dvc repro` (log in
    repro.log), its results committed."""
    repo = copy_project(dest)
    use_test_preset(repo)
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "clone"], repo)
    result = run(["dvc", "repro"], repo)
    (repo / "repro.log").write_text(result.stdout)
    # Committed as a user would: an experiment then starts from this dvc.lock and reruns only what it changes.
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "dvc repro"], repo)
    return repo


# A second clean run, for the determinism test (test_pipeline.py), when that test is in the session: it is built
# beside the first, since each `dvc repro` of the tiny pipeline keeps about one core busy.
SECOND_RUN: dict = {}


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Path:
    """A fresh clone after one `dvc repro` of the embedded default on the test preset. Tests may read it, not
    change it."""
    if SECOND_RUN.get("wanted"):
        SECOND_RUN["future"] = concurrent.futures.ThreadPoolExecutor(1).submit(
            cloned_and_reproduced, tmp_path_factory.mktemp("second-run"))
    return cloned_and_reproduced(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="session")
def second_pipeline(pipeline, tmp_path_factory) -> Path:
    """Another fresh clone and `dvc repro`, independent of `pipeline` (built at the same time when it can be)."""
    future = SECOND_RUN.get("future")
    return future.result() if future else cloned_and_reproduced(tmp_path_factory.mktemp("second-run"))


@pytest.fixture
def pipeline_copy(pipeline, tmp_path, monkeypatch) -> Path:
    """A private copy of the finished pipeline (outputs and DVC cache included), as the working directory."""
    copy = tmp_path / "repo"
    shutil.copytree(pipeline, copy, symlinks=True)
    monkeypatch.chdir(copy)
    return copy


def serve(module: str, cwd: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """Start `python -m module --port P` (the project's code, in `cwd`) and return it with its address once
    it answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", module, "--port", str(port), *args], cwd=cwd,
                              env={**os.environ, "PATH": VENV_PATH, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    address = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"{module} exited: {server.stdout.read()}")
        try:
            urllib.request.urlopen(address, timeout=2)
            return server, address
        except urllib.error.HTTPError:  # it answers, with an error page
            return server, address
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise AssertionError(f"{module} did not answer at {address}")


BACKGROUND_DIRS: list[Path] = []


def pytest_collection_modifyitems(session, config, items):
    """The real-model tests go last, and their `dvc exp run` starts now, in the background (test_real_model.py);
    the second clean pipeline is built with the first if a test wants it."""
    SECOND_RUN["wanted"] = any("second_pipeline" in getattr(item, "fixturenames", ()) for item in items)
    real = [item for item in items if item.path.name == "test_real_model.py"]
    if real and len(real) < len(items) and SHARED_DATA.is_dir():
        items[:] = [item for item in items if item not in real] + real
        BACKGROUND_DIRS.append(Path(tempfile.mkdtemp(prefix="real-model-")))
        real[0].module.start_in_background(BACKGROUND_DIRS[-1])


def pytest_terminal_summary(terminalreporter):
    background = getattr(sys.modules.get("test_real_model"), "BACKGROUND", {})
    if "took_s" in background:
        terminalreporter.write_line(f"real-model profile: its dvc exp run took {background['took_s']:.0f} s; its "
                                    f"tests began {background['tests_began_s']:.0f} s after it started")


def pytest_sessionfinish(session, exitstatus):
    background = getattr(sys.modules.get("test_real_model"), "BACKGROUND", {})
    if background and background["process"].poll() is None:  # the session ended early
        background["process"].terminate()
        background["process"].wait()
    for folder in BACKGROUND_DIRS:  # over a gigabyte: the model, its DVC cache and the experiment's outputs
        shutil.rmtree(folder, ignore_errors=True)
