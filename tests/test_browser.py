"""In a real browser (Debian's headless Chromium, driven by Selenium through Debian's chromedriver), with the
network off: DVC's plot pages draw their charts from the checkout's own Vega (.dvc/plots.html), where DVC's
default page, which loads Vega from a CDN, stays blank; the side-by-side page streams three models' replies."""
import csv
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from chattune.common.outputs import read_jsonl
from chattune.common.paths import GENERATIONS
from conftest import ROOT, run, serve

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
VEGA = ROOT / "node_modules" / "vega-embed" / "build" / "vega-embed.min.js"

pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # --proxy-server to a closed port: every http(s) request fails, as on an air-gapped machine; file:// loads.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--proxy-server=127.0.0.1:9", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def charts_drawn(browser, page: Path, expected: int, timeout_s: float = 20) -> int:
    """How many Vega charts the page drew (a canvas or svg inside a vega-embed container)."""
    browser.get(page.as_uri())
    deadline, drawn = time.monotonic() + timeout_s, 0
    while time.monotonic() < deadline:
        drawn = browser.execute_script(
            "return [...document.querySelectorAll('.vega-embed')].filter(e => e.querySelector('canvas, svg')).length")
        if drawn >= expected:
            break
        time.sleep(0.5)
    return drawn


@pytest.mark.skipif(not VEGA.exists(), reason="needs node_modules/ (`make install` runs `npm ci`)")
def test_plot_pages_draw_offline_from_the_checkouts_vega(pipeline_copy, browser):
    os.symlink(ROOT / "node_modules", pipeline_copy / "node_modules")
    run(["dvc", "plots", "show"], pipeline_copy)
    page = pipeline_copy / "dvc_plots" / "index.html"
    html = page.read_text()
    plots = html.count("vegaEmbed(")
    assert plots >= 8 and "cdn.jsdelivr" not in html  # the training curves and the evaluation charts
    assert charts_drawn(browser, page, plots) == plots
    browser.save_screenshot(str(pipeline_copy / "plots.png"))
    # A negative axis label read back, drawn by the page's own Vega as SVG: its minus sign is U+2212, which a page
    # read as Windows-1252 garbles ("âˆ’2").
    labels = browser.execute_async_script("""
        const done = arguments[arguments.length - 1], div = document.createElement('div');
        document.body.appendChild(div);
        vegaEmbed(div, {data: {values: [{x: -2, y: 1}, {x: 2, y: 3}]}, mark: 'point',
                        encoding: {x: {field: 'x', type: 'quantitative'}, y: {field: 'y', type: 'quantitative'}}},
                  {renderer: 'svg', actions: false})
            .then(() => done([...div.querySelectorAll('.role-axis-label text')].map(t => t.textContent)));""")
    assert browser.execute_script("return document.characterSet") == "UTF-8"
    assert "\u22122" in labels and not any("â" in label for label in labels), labels

    # The same plots on DVC's own page: Vega from a CDN, which this browser cannot reach.
    shutil.rmtree(pipeline_copy / "dvc_plots")
    run(["dvc", "config", "--unset", "plots.html_template"], pipeline_copy)
    run(["dvc", "plots", "show"], pipeline_copy)
    assert "cdn.jsdelivr" in page.read_text()
    assert charts_drawn(browser, page, plots, timeout_s=3) == 0



def test_the_side_by_side_page_streams_three_replies_to_one_message(pipeline, browser, tmp_path):
    from selenium.webdriver.common.by import By

    server, address = serve("tools.arena", pipeline)
    try:
        browser.get(address)
        browser.find_element(By.ID, "message").send_keys("I lost my job today and I feel awful.")
        browser.find_element(By.ID, "send").click()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(browser.find_elements(By.CSS_SELECTOR, ".reply.done")) < 3:
            time.sleep(0.5)
        columns = {column.get_attribute("id"): column.find_element(By.CLASS_NAME, "text").text
                   for column in browser.find_elements(By.CSS_SELECTOR, ".reply.done")}
        assert set(columns) == {"base", "sft", "dpo"} and all(columns.values()), columns
        assert "greedy" in browser.find_element(By.CLASS_NAME, "settings").text  # evaluation's settings
        browser.save_screenshot(str(tmp_path / "arena.png"))
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_for(browser, condition, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while not condition(browser):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; the page says: {browser.find_element('tag name', 'body').text[:500]}")
        time.sleep(0.3)


def test_rating_by_keyboard_survives_a_reload_and_a_finished_sheet_reruns_only_human(pipeline_copy, browser):
    from selenium.webdriver.common.by import By

    saved = pipeline_copy / "eval/human/ratings/alice.csv"
    server, address = serve("tools.rate", pipeline_copy, "--rater", "alice")
    try:
        browser.get(address)
        wait_for(browser, lambda b: "Prompt 1 / 20" in b.find_element(By.ID, "progress").text)
        first_codes = [box.get_attribute("data-code") for box in browser.find_elements(By.CSS_SELECTOR, ".reply")]
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("3452" "4444" "5555")  # three replies, four criteria each, keyboard only
        wait_for(browser, lambda b: b.find_element(By.ID, "status").text == "saved"
                 and "3 / 60 replies rated" in b.find_element(By.ID, "progress").text)
        with open(saved, newline="", encoding="utf-8") as handle:
            rows = {row["code"]: row for row in csv.DictReader(handle)}
        assert [[rows[code][c] for c in ("helpfulness", "harmlessness", "relevance", "quality")] for code in first_codes] \
            == [list("3452"), list("4444"), list("5555")]

        browser.refresh()  # the rater comes back: resumes at the next prompt, and the first keeps its ratings
        wait_for(browser, lambda b: "Prompt 2 / 20" in b.find_element(By.ID, "progress").text)
        browser.find_element(By.TAG_NAME, "body").send_keys("p")
        chosen = [button.text for button in browser.find_elements(By.CSS_SELECTOR, "button.chosen")]
        assert chosen == list("345244445555")

        browser.find_element(By.TAG_NAME, "body").send_keys("n" + "4" * 4 * 57)  # the other 19 prompts
        wait_for(browser, lambda b: "60 / 60 replies rated" in b.find_element(By.ID, "progress").text
                 and b.find_element(By.ID, "status").text == "saved")
    finally:
        server.terminate()
        server.wait(timeout=30)
    repro = run(["dvc", "repro"], pipeline_copy).stdout
    assert [stage for stage in re.findall(r"Running stage '(\w+)'", repro) if stage != "model_source"] == ["human"]
    human = json.loads((pipeline_copy / "metrics/human.json").read_text())
    assert human["raters"] == 1 and human["replies_unrated"] == 0
    assert human["base.count"] == human["sft.count"] == human["dpo.count"] == 20


def test_a_missing_or_stale_sheet_gets_a_page_that_says_so(pipeline_copy, browser, tmp_path):
    from selenium.webdriver.common.by import By

    ratings = pipeline_copy / "eval/human/ratings"
    (ratings / "old.csv").write_text("code,prompt,reference,response,helpfulness,harmlessness,relevance,quality,comment\n"
                                     "deadbeef,p,r,x,1,1,1,1,\n")
    for cwd, rater, message in ((tmp_path, "alice", "There is no sheet to rate: eval/human/sheet.csv is missing"),
                                (pipeline_copy, "old", "eval/human/ratings/old.csv holds ratings of older replies")):
        server, address = serve("tools.rate", cwd, "--rater", rater)
        try:
            browser.get(address)
            assert message in browser.find_element(By.ID, "problem").text
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_pairwise_votes_by_keyboard_keep_the_hidden_sides_and_rerun_only_human(pipeline_copy, browser):
    from selenium.webdriver.common.by import By

    saved = pipeline_copy / "eval/human/votes/carol.csv"
    server, address = serve("tools.vote", pipeline_copy, "--rater", "carol")
    shown = []
    try:
        browser.get(address)
        for voted, key in enumerate("abt"):  # A better, B better, a tie: keyboard only
            wait_for(browser, lambda b: f"{voted} / " in b.find_element(By.ID, "progress").text
                     and b.find_element(By.CSS_SELECTOR, "#A .text").text)
            shown.append([browser.find_element(By.CSS_SELECTOR, f"#{side} .text").text for side in "AB"])
            browser.find_element(By.TAG_NAME, "body").send_keys(key)
        wait_for(browser, lambda b: "3 / " in b.find_element(By.ID, "progress").text)
        total = int(browser.find_element(By.ID, "progress").text.split(" / ")[1].split()[0])
        browser.refresh()  # the count survives a reload
        wait_for(browser, lambda b: f"3 / {total}" in b.find_element(By.ID, "progress").text)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert total == 3 * 50  # every ED test and probe prompt (16 + 34), each with three pairs
    with open(saved, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["choice"] for row in rows] == ["left", "right", "tie"]
    generations = {(g["set"], g["id"], g["model"]): g["response"] for g in read_jsonl(pipeline_copy / GENERATIONS)}
    for row, (a, b) in zip(rows, shown):
        assert row["left"] != row["right"] and {row["left"], row["right"]} <= {"base", "sft", "dpo"}
        # the side the page showed is the model the row names: the replies are those models' own
        assert generations[row["set"], row["prompt_id"], row["left"]].strip() == a.strip()
        assert generations[row["set"], row["prompt_id"], row["right"]].strip() == b.strip()
    repro = run(["dvc", "repro"], pipeline_copy).stdout
    assert [stage for stage in re.findall(r"Running stage '(\w+)'", repro) if stage != "model_source"] == ["human"]
    human = json.loads((pipeline_copy / "metrics/human.json").read_text())
    assert human["votes.count"] == 3 and human["rater.carol.votes"] == 3 and human["votes.stale"] == 0
