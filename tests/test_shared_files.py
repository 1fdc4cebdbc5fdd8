"""Files that two processes write: two rating pages (or two vote pages) for one rater, each a real server in its
own process, posting at once, lose nothing; and a writer removes only its own temporaries or those of ended
processes."""
import csv
import io
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from chattune.common.outputs import write_json
from chattune.common.paths import GENERATIONS, HUMAN_RATINGS, HUMAN_VOTES
from chattune.human import sheet
from chattune.modeling.stacks import MODELS
from conftest import ROOT, serve

PROMPTS = 40  # x 3 models: 120 replies to rate


def post(address: str, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(address.rstrip("/") + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def get(address: str, path: str) -> dict:
    with urllib.request.urlopen(address.rstrip("/") + path, timeout=60) as response:
        return json.load(response)


@pytest.fixture()
def sheet_and_replies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    HUMAN_RATINGS.mkdir(parents=True)
    HUMAN_VOTES.mkdir(parents=True)
    replies = [{"set": "probe", "id": f"p{number}", "model": model, "reference": "Oh no.",
                "prompt": [{"role": "user", "content": f"Trouble number {number}."}],
                "response": f"reply {number} of {model}"} for number in range(PROMPTS) for model in MODELS]
    sheet.write_sheet(replies)
    GENERATIONS.write_text("".join(json.dumps({**reply, "stack": reply["model"] * 22}) + "\n" for reply in replies))
    return tmp_path


def two_servers(module: str, cwd, *args):
    servers = [serve(module, cwd, *args) for _ in range(2)]
    return [process for process, _ in servers], [address for _, address in servers]


def stop(processes):
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


def test_two_rating_servers_for_one_rater_lose_no_rating(sheet_and_replies):
    codes = sorted(json.loads(sheet.HUMAN_KEY.read_text()))
    processes, addresses = two_servers("tools.rate", sheet_and_replies, "--rater", "alice")
    try:
        # four threads, two on each server, each rating its own quarter of the replies: 160 posts in all
        changes = [(addresses[number % 2], {"code": code, "field": field, "value": str(1 + number % 5)})
                   for number, code in enumerate(codes) for field in ("quality", "relevance")][:160]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda change: post(change[0], "/api/rate", change[1]), changes))
    finally:
        stop(processes)
    assert [status for status, _ in answers] == [200] * len(changes), [a for a in answers if a[0] != 200][:3]
    saved = {row["code"]: row for row in csv.DictReader(io.StringIO((HUMAN_RATINGS / "alice.csv").read_text()))}
    for _, change in changes:
        assert saved[change["code"]][change["field"]] == change["value"]
    assert not [path.name for path in HUMAN_RATINGS.iterdir() if ".tmp-" in path.name]


def test_two_vote_servers_for_one_rater_keep_every_vote_once(sheet_and_replies):
    processes, addresses = two_servers("tools.vote", sheet_and_replies, "--rater", "alice", "--sets", "probe")

    def vote_a_few(address: str) -> list[int]:
        statuses = []
        for _ in range(12):
            shown = get(address, "/api/next")
            if shown.get("done"):
                break
            statuses.append(post(address, "/api/vote", {"token": shown["token"], "choice": "A"})[0])
        return statuses

    try:
        with ThreadPoolExecutor(4) as pool:
            statuses = [status for batch in pool.map(vote_a_few, addresses * 2) for status in batch]
    finally:
        stop(processes)
    rows = list(csv.DictReader(io.StringIO((HUMAN_VOTES / "alice.csv").read_text())))
    # every vote answered 200 is in the file, and one prompt and pair is voted on once: a vote on an item the
    # other server had just written is refused (409), never written twice
    assert set(statuses) <= {200, 409} and statuses.count(200) == len(rows) >= 24
    assert len({(row["prompt_id"], frozenset((row["left"], row["right"]))) for row in rows}) == len(rows)


LIVE = "import time; time.sleep(60)"


def test_a_writer_removes_only_temporaries_of_ended_processes(tmp_path):
    """A temporary of a process still running (another server writing the same file) is left alone; one of an
    ended process, or of no process this module names, is removed."""
    live = subprocess.Popen([sys.executable, "-c", LIVE])
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    try:
        in_flight = tmp_path / f".alice.csv.tmp-{live.pid}-abc"
        stale = [tmp_path / f".alice.csv.tmp-{ended.stdout.strip()}-def", tmp_path / ".alice.csv.tmp-xyz"]
        for path in [in_flight, *stale]:
            path.write_text("half")
        write_json(tmp_path / "alice.csv", {})
        assert in_flight.exists() and not any(path.exists() for path in stale)
    finally:
        live.kill()
        live.wait()
