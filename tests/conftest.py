import json
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
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
VENV_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference file {path} is absent (../shared/data/ sits beside the checkout)")
    return path


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF inside its installed wheel, as conf/model/smollm2.yaml pins it."""
    from chattune.basemodel.sources import gguf_path
    from chattune.common.params import GgufParams

    return gguf_path(GgufParams(**yaml.safe_load((ROOT / "conf/model/smollm2.yaml").read_text())["gguf"]))


def project_files() -> list[str]:
    """What a fresh clone holds: tracked files plus new files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return [name for name in out.split("\0") if name and (ROOT / name).is_file()]


def metrics(repo: Path, name: str) -> dict:
    """A project's metrics/<name>.json."""
    return json.loads((repo / "metrics" / f"{name}.json").read_text())


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
# The test suite's smaller preset (tests/conftest.py): one SFT epoch, a few DPO steps, fewer test prompts and
# fewer bootstrap resamples than the embedded default.
sft:
  epochs: 1
dpo:
  max_steps: 6
  warmup_steps: 5
eval:
  test_size: 16
  bootstrap_samples: 200
"""


def use_test_preset(repo: Path) -> None:
    with open(repo / "conf/config.yaml", "a") as config:
        config.write(TEST_PRESET)
    # `make params`, in a process of its own: Hydra's global state takes one composition at a time, and tests
    # compose in this process while the session's jobs build in threads
    run(["python", "-m", "chattune.common.params", "--compose"], repo)


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


# The suite runs on two pytest-xdist workers (pytest.ini). The expensive setup is built once for the whole
# session, in the background from the start, into a folder every worker shares: the embedded default's pipeline,
# a second clean pipeline (the determinism test) and the real model's run (test_real_model.py). Each job is
# started by one worker (the first takes the first job, the second the second, ...) and waited for by any.
if "SUITE_SHARED" not in os.environ:  # the controller (or the only process) makes it; its workers inherit it
    os.environ["SUITE_SHARED"] = tempfile.mkdtemp(prefix="suite-")
SHARED = Path(os.environ["SUITE_SHARED"])
WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...; None without xdist (and in the controller)
if WORKER:  # several processes share two cores: one thread each spends no time waiting on the others
    os.environ.setdefault("OMP_NUM_THREADS", "1")
JOBS: dict[str, threading.Thread] = {}  # the jobs this process started
SCHEDULED: set[str] = set()  # the jobs the session starts (in this process or another worker)


def start_job(name: str, build) -> None:
    """Run `build(folder)` in a thread of this process; when it ends, `<name>.ok` or `<name>.failed` (the error)
    appears beside the folder."""
    def work():
        try:
            build(SHARED / name)
            (SHARED / f"{name}.ok").touch()
        except BaseException as error:  # noqa: BLE001 (whatever it was, the waiting tests must hear of it)
            (SHARED / f"{name}.failed").write_text(f"{type(error).__name__}: {error}")

    JOBS[name] = threading.Thread(target=work, name=name, daemon=True)
    JOBS[name].start()


def wait_for_job(name: str) -> Path:
    while not (SHARED / f"{name}.ok").exists():
        if (SHARED / f"{name}.failed").exists():
            raise AssertionError(f"the session's {name} job failed: {(SHARED / f'{name}.failed').read_text()[-6000:]}")
        time.sleep(1)
    return SHARED / name


@pytest.fixture(scope="session")
def pipeline() -> Path:
    """A fresh clone after one `dvc repro` of the embedded default on the test preset, shared by every worker.
    Tests may read it, not change it (nor run dvc in it: two workers' dvc would fight over its lock)."""
    return wait_for_job("pipeline")


@pytest.fixture(scope="session")
def second_pipeline() -> Path:
    """Another fresh clone and `dvc repro`, built independently of `pipeline` and at the same time."""
    return wait_for_job("second-run")


@pytest.fixture
def pipeline_copy(pipeline, tmp_path, monkeypatch) -> Path:
    """A private copy of the finished pipeline (outputs and DVC cache included), as the working directory."""
    copy = tmp_path / "repo"
    shutil.copytree(pipeline, copy, symlinks=True)
    monkeypatch.chdir(copy)
    return copy


def place_on(monkeypatch, device: str, dtype) -> None:
    """Pretend the project places every model on `device` in `dtype` (whatever model.dtype says):
    chattune.modeling.placement's accelerator and compute_dtype, in every package or stage module that imported
    them by name."""
    from chattune.modeling import placement as placing

    fakes = {"accelerator": (placing.accelerator, lambda: torch.device(device)),
             "compute_dtype": (placing.compute_dtype, lambda choice: dtype)}
    for name, module in list(sys.modules.items()):
        if name.startswith(("chattune.", "stages.")):
            for attribute, (real, fake) in fakes.items():
                if getattr(module, attribute, None) is real:
                    monkeypatch.setattr(module, attribute, fake)


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


def pytest_collection_modifyitems(session, config, items):
    """Tests that need none of the session's jobs first, then those that read the pipelines, the real model's
    last; and the jobs this session needs start now, each in the worker whose turn it is."""
    def needs(item, fixtures):
        return bool(set(fixtures) & set(getattr(item, "fixturenames", ())))

    real = [item for item in items if item.path.name == "test_real_model.py"]
    piped = [item for item in items if item not in real and needs(item, ("pipeline", "pipeline_copy", "second_pipeline"))]
    items[:] = [item for item in items if item not in real and item not in piped] + piped + real
    jobs = {"pipeline": cloned_and_reproduced} if piped else {}
    if any(needs(item, ("second_pipeline",)) for item in piped):
        jobs["second-run"] = cloned_and_reproduced
    if real and SHARED_DATA.is_dir():
        jobs["real-model"] = real[0].module.run_in_background
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    mine = int(WORKER.removeprefix("gw")) if WORKER else 0
    SCHEDULED.update(jobs)
    for turn, (name, build) in enumerate(jobs.items()):
        if turn % workers == mine:
            start_job(name, build)
    if jobs:
        # The jobs are the session's longest chains (the real model's run alone is most of ten minutes on one core)
        # and every test that needs one waits for it: the tests yield to them. On Linux the nice value belongs to
        # the thread, so this lowers the thread that runs the tests (and what it starts), not the jobs' threads.
        os.nice(5)


def pytest_terminal_summary(terminalreporter):
    timing = SHARED / "real-model.timing.json"
    if timing.exists():
        took = json.loads(timing.read_text())
        terminalreporter.write_line(f"real-model profile: its dvc exp run took {took['took_s']:.0f} s; its tests "
                                    f"began {took['tests_began_s']:.0f} s after it started")


def pytest_sessionfinish(session, exitstatus):
    for job in JOBS.values():  # a worker out of tests still owes the others the jobs it started
        job.join()


def pytest_unconfigure(config):
    if not WORKER:  # the controller (or the only process): over a gigabyte of models, caches and outputs
        shutil.rmtree(SHARED, ignore_errors=True)


def lora_casts_in_forward(model, ids, autocast: bool) -> set[bool]:
    """Whether each LoRA layer of `model` cast its input to the adapter's dtype in one forward (every layer's
    cast_input_dtype_enabled as PEFT read it), with or without CPU autocast (bf16)."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    seen = set()
    hooks = [module.register_forward_hook(lambda layer, args, out: seen.add(layer.cast_input_dtype_enabled))
             for module in model.modules() if isinstance(module, BaseTunerLayer)]
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(input_ids=ids)
    finally:
        for hook in hooks:
            hook.remove()
    return seen
