"""The pages in a real browser: Debian's Chromium driven by Playwright, against a real `vvtrt serve` on the
tiny model (CPU). The try-it page plays a synthesis through Web Audio; the dashboard updates by itself.
Screenshots go to $VVTRT_TEST_ARTIFACTS (default tests/artifacts/browser/).

Skipped only when Chromium or Playwright is missing outside CI; with CI=true a missing browser fails."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from server_fixtures import start_server, write_voice_clip

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("VVTRT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("VVTRT_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts" / "browser")


def _require_browser():
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright package is not installed (pip install -e '.[dev]')"
    if missing is None and not Path(CHROMIUM).exists():
        missing = f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser tests must run in CI: {missing}")
        pytest.skip(missing)


@pytest.fixture(scope="module")
def server(tiny_workdir, tmp_path_factory):
    _require_browser()
    tmp = tmp_path_factory.mktemp("serve_browser")
    write_voice_clip(tmp / "voices" / "dana.wav", seed=4)
    srv = start_server(tiny_workdir.root, tmp, "--voices", tmp / "voices", "--max-streams", 4)
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.errors = errors
        yield pg
        browser.close()


def shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_try_it_page_plays_a_synthesis_through_web_audio(server, page):
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#voice option').length > 0")
    assert page.input_value("#voice") == "dana"
    page.fill("#script", "Speaker 1: Hello from the browser test.")
    page.fill("#frames", "12")
    page.click("#speak")
    page.wait_for_function("window.vvtrt.done", timeout=120_000)
    state = page.evaluate("window.vvtrt")
    assert state["error"] is None, state
    assert state["chunksReceived"] == 12 and state["chunksScheduled"] == 12
    assert state["ttfaMs"] > 0 and state["stopReason"]
    page.wait_for_function("window.vvtrt.chunksEnded >= 1", timeout=30_000)  # audio actually played
    assert page.text_content("#chunks") == "12" and page.text_content("#stop-reason") == state["stopReason"]
    assert page.text_content("#ttfa").endswith("ms") and page.text_content("#rtf") != "–"
    assert page.get_attribute("#download", "href").startswith("blob:")
    assert not page.errors, page.errors
    shot(page, "try-it")


def test_dashboard_shows_live_values(server, page):
    page.goto(server.url + "/dashboard")
    page.wait_for_function("window.vvtrtDash.updates >= 3 && window.vvtrtDash.last !== null", timeout=30_000)
    first = page.evaluate("window.vvtrtDash.last.t")
    page.wait_for_function(f"window.vvtrtDash.last.t > {first}", timeout=30_000)  # it updates by itself
    assert page.text_content("#state") == "ready"
    assert page.text_content("#v-active").endswith("/ 4")  # "0 / 4": active of --max-streams 4
    assert page.text_content("#v-fps") != "–"
    assert page.locator("canvas").count() == 10  # the SM clock has its own chart (MHz), not the power's (W)
    assert page.text_content("h3:has-text('SM clock')") == "GPU SM clock (MHz)"
    ticks = page.evaluate("window.vvtrtDash.ticks.streams")
    assert ticks and all(t.isdigit() for t in ticks), ticks  # whole streams on the stream-count axis
    assert not page.errors, page.errors
    shot(page, "dashboard")


def _speak(page, frames: str = "", cfg: str | None = None):
    if cfg is not None:
        page.fill("#cfg", cfg)
    page.fill("#frames", frames)
    page.click("#speak")
    page.wait_for_function("window.vvtrt.done", timeout=120_000)
    return page.evaluate("window.vvtrt")


def test_try_it_page_shows_failures_in_red_and_resets_its_stats(server, page):
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#voice option').length > 0")
    assert page.input_value("#cfg") == "1.3"  # the server's default, as the API's
    assert _speak(page, "4")["failed"] is False
    assert page.text_content("#chunks") == "4" and "error" not in (page.get_attribute("#status", "class") or "")
    state = _speak(page, "4", cfg="99")  # refused by the server: its reason, in red
    assert state["failed"] and "cfg_scale" in state["error"]
    assert page.get_attribute("#status", "class") == "error" and "cfg_scale" in page.text_content("#status")
    assert page.evaluate("getComputedStyle(document.getElementById('status')).color") == "rgb(198, 40, 40)"
    assert page.text_content("#chunks") == "0" and page.text_content("#seconds") == "0.00 s"  # no stale stats
    assert page.text_content("#ttfa") == "–" and page.text_content("#rtf") == "–"
    page.fill("#maxframes", "40")  # a random-weight model left to itself says nothing: a failure
    state = _speak(page, "", cfg="1.3")
    assert state["chunksReceived"] == 0 and state["failed"] and "no audio" in page.text_content("#status")
    assert page.get_attribute("#status", "class") == "error"
    assert not page.errors, page.errors
    shot(page, "try-it-failure")
