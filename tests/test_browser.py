"""In a real browser (Debian's headless Chromium, driven by Selenium through Debian's chromedriver), with the
network off: DVC's plot pages draw their charts from the checkout's own Vega (.dvc/plots.html), where DVC's
default page, which loads Vega from a CDN, stays blank."""
import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import ROOT, run

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
VEGA = ROOT / "node_modules" / "vega-embed" / "build" / "vega-embed.min.js"

pytestmark = [
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="needs Debian's chromium and chromium-driver (.ci/run installs them)"),
    pytest.mark.skipif(not VEGA.exists(), reason="needs node_modules/ (`make install` runs `npm ci`)"),
]


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


def test_plot_pages_draw_offline_from_the_checkouts_vega(pipeline_copy, browser):
    os.symlink(ROOT / "node_modules", pipeline_copy / "node_modules")
    run(["dvc", "plots", "show"], pipeline_copy)
    page = pipeline_copy / "dvc_plots" / "index.html"
    html = page.read_text()
    plots = html.count("vegaEmbed(")
    assert plots >= 8 and "cdn.jsdelivr" not in html  # the training curves and the evaluation charts
    assert charts_drawn(browser, page, plots) == plots
    browser.save_screenshot(str(pipeline_copy / "plots.png"))

    # The same plots on DVC's own page: Vega from a CDN, which this browser cannot reach.
    shutil.rmtree(pipeline_copy / "dvc_plots")
    run(["dvc", "config", "--unset", "plots.html_template"], pipeline_copy)
    run(["dvc", "plots", "show"], pipeline_copy)
    assert "cdn.jsdelivr" in page.read_text()
    assert charts_drawn(browser, page, plots, timeout_s=3) == 0
