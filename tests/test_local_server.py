"""The pages on 127.0.0.1 answer their own page only: a foreign Host, a cross-site request, a body that is not
JSON and an oversized body are refused with a 4xx before anything is written; the arena bounds its work, stops
generating for a reader who left, and ends a failed column with its error."""
import http.client
import json
import time
from types import SimpleNamespace

import pytest
import torch

from chattune.basemodel.tiny import train_tokenizer
from chattune.common.paths import GENERATIONS, HUMAN_RATINGS, HUMAN_VOTES
from chattune.human import sheet
from chattune.modeling.stacks import MODELS
from chattune.pages import arena
from chattune.pages import rating as rate
from chattune.pages import voting as vote
from conftest import serve
from tools import rate as rate_command
from tools import vote as vote_command

PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"
PROMPT = [{"role": "user", "content": "My cat is ill."}]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["I am so sorry to hear that.", "That sounds hard.", "My cat is ill."] * 20, 300, 256)


class ScriptedModel:
    """Stands in for a model in Chat: streams `tokens` tokens, one every `delay` seconds, stops when the
    stopping criteria say so, or raises on the third token."""

    device = torch.device("cpu")
    config = SimpleNamespace(max_position_embeddings=256)

    def __init__(self, token_id: int, tokens: int = 40, delay: float = 0.0, fail: bool = False):
        self.token_id, self.tokens, self.delay, self.fail = token_id, tokens, delay, fail
        self.made, self.running = 0, 0

    def generate(self, input_ids, attention_mask, generation_config, streamer, stopping_criteria):
        self.running += 1
        try:
            streamer.put(input_ids[0])  # the prompt, which the streamer skips
            for step in range(self.tokens):
                if self.fail and step == 2:
                    raise RuntimeError("CUDA out of memory")
                time.sleep(self.delay)
                if stopping_criteria(input_ids, None).all():
                    break
                self.made += 1
                streamer.put(torch.tensor([self.token_id]))
            streamer.end()
        finally:
            self.running -= 1


def arena_app(tokenizer, **model_options):
    token = tokenizer("sorry", add_special_tokens=False).input_ids[0]
    models = {name: (ScriptedModel(token, **model_options), tokenizer) for name in MODELS}
    return arena.create_app(models, "Be kind.", 40, 0.0, PORT), models


@pytest.fixture()
def pages(tmp_path, monkeypatch, tokenizer):
    """The three apps over a tiny sheet and generations file, in an empty working directory."""
    monkeypatch.chdir(tmp_path)
    HUMAN_RATINGS.mkdir(parents=True)
    HUMAN_VOTES.mkdir(parents=True)
    replies = [{"set": "probe", "id": "ill-1", "model": model, "prompt": PROMPT, "reference": "Oh no.",
                "response": f"reply of {model}"} for model in MODELS]
    sheet.write_sheet(replies)
    GENERATIONS.write_text("".join(json.dumps({**reply, "stack": model * 20}) + "\n"
                                   for reply, model in zip(replies, MODELS)))
    code = json.loads(sheet.HUMAN_KEY.read_text()).popitem()[0]
    return {
        "rate": (rate.create_app("ann", PORT), "/api/rate", {"code": code, "field": "quality", "value": "4"}),
        "vote": (vote.create_app("ann", PORT, ["probe"], "Be kind."), "/api/typed", {"message": "Hi"}),
        "arena": (arena_app(tokenizer)[0], "/reply/sft", {"message": "My cat is ill.", "system": ""}),
    }


def on_disk(folder):
    return sorted((path.name, path.read_bytes()) for path in folder.rglob("*") if path.is_file())


@pytest.mark.parametrize("page", ["rate", "vote", "arena"])
def test_requests_from_anywhere_but_the_page_are_refused_and_change_nothing(pages, page, tmp_path):
    app, path, body = pages[page]
    client = app.test_client()
    before = on_disk(tmp_path)
    refusals = [
        (client.get("/", base_url="http://evil.example:8765"), 400, "is not this server"),  # DNS rebinding
        (client.post(path, json=body, base_url="http://evil.example:8765"), 400, "is not this server"),
        (client.post(path, json=body, base_url=BASE, headers={"Origin": "http://evil.example"}), 403, "cross-site"),
        (client.post(path, json=body, base_url=BASE, headers={"Sec-Fetch-Site": "cross-site"}), 403, "cross-site"),
        (client.get("/api/next" if page == "vote" else "/api/sheet", base_url=BASE,
                    headers={"Sec-Fetch-Site": "cross-site"}), 403, "cross-site"),
        # what a plain HTML form, or a fetch with no preflight, can send from any site
        (client.post(path, data=json.dumps(body), content_type="text/plain", base_url=BASE), 415, "application/json"),
        (client.post(path, data="code=x", content_type="application/x-www-form-urlencoded", base_url=BASE), 415,
         "application/json"),
        (client.post(path, json={**body, "padding": "x" * 1_000_000}, base_url=BASE), 413, "at most"),
    ]
    for response, status, message in refusals:
        assert response.status_code == status and message in response.get_json()["error"], response.get_json()
    assert on_disk(tmp_path) == before
    # The page itself, from its own origin: opening it, and opening it through a link from elsewhere, work.
    assert client.get("/", base_url=BASE).status_code == 200
    assert client.get("/", base_url="http://localhost:8765", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_the_rating_page_saves_what_its_own_page_sends_and_caps_comments(pages, tmp_path):
    app, path, body = pages["rate"]
    client = app.test_client()
    headers = {"Origin": BASE, "Sec-Fetch-Site": "same-origin"}
    assert client.post(path, json=body, base_url=BASE, headers=headers).status_code == 200
    saved = (HUMAN_RATINGS / "ann.csv").read_text()
    assert ",4," in saved
    too_long = client.post(path, json={**body, "field": "comment", "value": "x" * 2001}, base_url=BASE, headers=headers)
    assert too_long.status_code == 400 and "at most 2000" in too_long.get_json()["error"]
    assert (HUMAN_RATINGS / "ann.csv").read_text() == saved
    assert 'maxLength = COMMENT_LIMIT' in client.get("/", base_url=BASE).get_data(as_text=True)


def test_the_arena_page_is_rendered_with_escaping(tokenizer):
    models = {name: (ScriptedModel(5), tokenizer) for name in MODELS}
    app = arena.create_app(models, 'COLUMNS "><script>alert(1)</script>', 40, 0.0, PORT)
    html = app.test_client().get("/", base_url=BASE).get_data(as_text=True)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert html.count('class="reply"') == 3  # the system prompt's COLUMNS did not add columns


def events(response) -> list[dict]:
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines() if line]


def test_a_failed_generation_ends_its_column_with_the_error(tokenizer):
    app, _ = arena_app(tokenizer, fail=True)
    response = app.test_client().post("/reply/dpo", json={"message": "Hi"}, base_url=BASE)
    got = events(response)
    assert got[0] == {"accepted": True} and got[-1] == {"error": "generation failed: RuntimeError: CUDA out of memory"}
    assert "".join(event.get("text", "") for event in got[1:-1])  # what came before the error was shown


def test_the_arena_bounds_its_work_and_stops_for_a_reader_who_left(tokenizer):
    app, models = arena_app(tokenizer, tokens=400, delay=0.02)
    client = app.test_client()
    # One client per reader: a test client serves one request at a time.
    streams = [app.test_client().post("/reply/sft", json={"message": f"message {i}"}, base_url=BASE, buffered=False)
               for i in range(1 + arena.WAITING)]
    assert all(stream.status_code == 200 for stream in streams)
    refused = client.post("/reply/sft", json={"message": "one too many"}, base_url=BASE)
    assert refused.status_code == 429 and "busy" in refused.get_json()["error"]
    other = app.test_client().post("/reply/dpo", json={"message": "another model"}, base_url=BASE, buffered=False)
    assert other.status_code == 200  # each model has its own seat

    sft = models["sft"][0]
    deadline = time.monotonic() + 10
    while sft.made < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sft.running == 1  # one generation at a time; the others wait
    for stream in streams:  # every reader goes away
        stream.close()
    deadline = time.monotonic() + 10
    while sft.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sft.running == 0 and sft.made < 100, sft.made  # stopped, not the 400 tokens (8 s) asked for
    accepted = client.post("/reply/sft", json={"message": "again"}, base_url=BASE)
    assert accepted.status_code == 200 and events(accepted)[-1] == {"done": True}


def test_the_real_server_refuses_a_foreign_host_and_a_form_post(pages, tmp_path):
    """The same guard on the server `python -m tools.rate` starts on 127.0.0.1."""
    server, address = serve("tools.rate", tmp_path, "--rater", "ann")
    try:
        port = int(address.rsplit(":", 1)[1].strip("/"))
        for headers, body, status in (({"Host": "evil.example"}, None, 400),
                                      ({"Content-Type": "text/plain"}, '{"code": "x"}', 415)):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("POST" if body else "GET", "/api/rate" if body else "/", body=body, headers=headers)
            answer = connection.getresponse()
            assert answer.status == status and "error" in json.loads(answer.read())
            connection.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert not (HUMAN_RATINGS / "ann.csv").exists()


DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize("page", ["rate", "vote", "arena"])
def test_bodies_a_page_would_never_send_get_a_4xx_and_change_nothing(pages, page, tmp_path):
    """Fields of the wrong type, a body nested thousands deep, text no file can hold: each a 4xx naming why."""
    app, path, body = pages[page]
    client = app.test_client()
    before = on_disk(tmp_path)
    field = {"rate": "value", "vote": "message", "arena": "message"}[page]
    bodies = [
        ('{"x": %s}' % DEEP, "nests objects and arrays more than"),
        (json.dumps({**body, field: ["A"]}), "string"),
        (json.dumps({**body, field: {"a": 1}}), "string"),
        (json.dumps({**body, field: "hi \ud83d there"}), "lone surrogate"),
        ('[1, 2]', "must be a JSON object"),
        ('{"a": 1' , "must be a JSON object"),
        ('{"a": ' + "9" * 5000 + "}", "must be a JSON object"),
    ]
    for text, message in bodies:
        response = client.post(path, data=text, content_type="application/json", base_url=BASE)
        assert 400 <= response.status_code < 500 and message in response.get_json()["error"], (text[:40], response.data)
    assert on_disk(tmp_path) == before


def test_a_vote_with_a_choice_of_the_wrong_type_is_refused(pages, tmp_path):
    app = pages["vote"][0]
    client = app.test_client()
    shown = client.get("/api/next", base_url=BASE).get_json()
    for choice in (["A"], {"A": 1}, 1, None):
        response = client.post("/api/vote", json={"token": shown["token"], "choice": choice}, base_url=BASE)
        assert response.status_code == 400 and "choice must be one of A, B, tie" in response.get_json()["error"]
    assert client.post("/api/vote", json={"token": shown["token"], "choice": "A"}, base_url=BASE).status_code == 200


def test_one_rater_votes_once_on_a_prompt_and_pair(pages, monkeypatch):
    """Two tabs shown the same prompt and pair: the first vote counts, the second is refused."""
    app = pages["vote"][0]
    monkeypatch.setattr(vote, "next_item", lambda items, mine, others: items[0])  # both tabs draw the same item
    tabs = [app.test_client(), app.test_client()]
    tokens = [tab.get("/api/next", base_url=BASE).get_json()["token"] for tab in tabs]
    assert tabs[0].post("/api/vote", json={"token": tokens[0], "choice": "A"}, base_url=BASE).status_code == 200
    second = tabs[1].post("/api/vote", json={"token": tokens[1], "choice": "B"}, base_url=BASE)
    assert second.status_code == 409 and "voted on this prompt and pair already" in second.get_json()["error"]
    rows = (HUMAN_VOTES / "ann.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # the header and the first vote


@pytest.mark.parametrize("argv, message", [
    (["--rater", "a" * 65], "up to 64 letters, digits, - and _"),
    (["--rater", "al/ice"], "up to 64 letters, digits, - and _"),
    (["--rater", "alice", "--port", "70000"], "a port is from 1 to 65535"),
])
@pytest.mark.parametrize("page", [rate_command, vote_command])
def test_a_page_refuses_a_rater_or_port_it_cannot_use_at_start(page, argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        page.main(argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("max_new_tokens, temperature, message", [
    (-5, 0.0, "max new tokens -5: from 1 to 255"),
    (256, 0.0, "max new tokens 256: from 1 to 255"),
    (40, float("nan"), r"temperature nan: 0 \(greedy\), or from 0.01 to 100"),
    (40, 1e-320, "temperature 1e-320: 0 "),  # a float32 logit divided by it overflows
])
def test_the_arena_refuses_settings_it_cannot_use_at_start(tokenizer, max_new_tokens, temperature, message):
    models = {name: (ScriptedModel(5), tokenizer) for name in MODELS}
    with pytest.raises(ValueError, match=message):
        arena.create_app(models, "Be kind.", max_new_tokens, temperature, PORT)


def test_the_arena_frees_each_slot_whatever_the_reply(tokenizer):
    """Replies that fail, one after another, never use up a model's slots: the next message is still taken."""
    app, _ = arena_app(tokenizer, fail=True)
    client = app.test_client()
    for _ in range(3 * (1 + arena.WAITING)):
        response = client.post("/reply/dpo", json={"message": "Hi"}, base_url=BASE)
        assert response.status_code == 200 and "error" in events(response)[-1]


def test_a_page_whose_file_another_writer_holds_answers_503_and_the_click_can_be_sent_again(pages, monkeypatch):
    """Another server for the same rater stopped (Ctrl-Z) while writing: a 503 that says so, not a 500."""
    from chattune.common import outputs

    monkeypatch.setattr(outputs, "LOCK_WAIT_S", 0.2)
    app, path, body = pages["rate"]
    with outputs.locked(HUMAN_RATINGS / "ann.csv"):
        response = app.test_client().post(path, json=body, base_url=BASE)
    assert response.status_code == 503 and "another writer has held it" in response.get_json()["error"]
    assert app.test_client().post(path, json=body, base_url=BASE).status_code == 200
    vote_app = pages["vote"][0]
    client = vote_app.test_client()
    token = client.get("/api/next", base_url=BASE).get_json()["token"]
    with outputs.locked(HUMAN_VOTES / "ann.csv"):
        response = client.post("/api/vote", json={"token": token, "choice": "A"}, base_url=BASE)
    assert response.status_code == 503 and "the vote was not saved" in response.get_json()["error"]
    assert client.post("/api/vote", json={"token": token, "choice": "A"}, base_url=BASE).status_code == 200


@pytest.mark.parametrize("damage", [lambda text: text[:-5], lambda text: text.replace('"id"', '"ident"')])
def test_the_vote_page_says_what_is_wrong_with_a_damaged_replies_file(pages, damage):
    GENERATIONS.write_text(damage(GENERATIONS.read_text()))
    client = pages["vote"][0].test_client()
    for response in (client.get("/", base_url=BASE), client.get("/api/next", base_url=BASE)):
        assert response.status_code == 409
        assert "eval/generations.jsonl cannot be read" in response.get_data(as_text=True)
