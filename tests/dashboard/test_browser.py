"""End to end in a real headless Chromium: the demo's dashboard fills and moves.

Needs Debian's chromium (``scripts/browser`` installs it) and Playwright's Python package.
Saves the screenshot used in ``docs/dashboard.md`` to ``docs/img/dashboard.png``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dash_helpers import free_port, http

pytestmark = pytest.mark.browser

#: Milliseconds to wait for the page to fill or move: generous, the machine may be very busy
#: (no speed is asserted here; a stuck page still fails).
WAIT = 90_000

ROOT = Path(__file__).resolve().parents[2]


def _chromium() -> str:
    """Debian's chromium; installed through scripts/browser (apt-get) when missing."""
    found = os.environ.get("TIDEFLOW_CHROMIUM") or shutil.which("chromium")
    if found:
        return found
    done = subprocess.run(
        [str(ROOT / "scripts" / "browser")], capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/browser could not install chromium:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _text_ends(selector: str, suffix: str) -> str:
    return f"document.querySelector('{selector}').textContent.endsWith('{suffix}')"


def _text_starts(selector: str, prefix: str) -> str:
    return f"document.querySelector('{selector}').textContent.startsWith('{prefix}')"


def _number(text: str) -> int:
    return int(text.replace(",", "") or 0)


@pytest.fixture
def demo(tmp_path: Path):  # type: ignore[no-untyped-def]
    """``tideflow demo --rate 20000 --dashboard 127.0.0.1:PORT`` in a subprocess; Ctrl-C at the end."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("TIDEFLOW_DASHBOARD_TOKEN", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tideflow.cli",
            "demo",
            "--rate",
            "20000",
            "--dashboard",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--checkpoint-interval",
            "5",
            "--quiet-alerts",
            "--no-progress",
            "--out",
            str(tmp_path / "out"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if http(url + "healthz")[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"the demo's dashboard did not come up: {proc.stderr.read().decode()[-2000:]}")
    yield url
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stderr.close()


def test_demo_dashboard_in_chromium(demo: str, tmp_path: Path) -> None:
    chromium = _chromium()
    from playwright import sync_api

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.goto(demo)
            page.wait_for_function(
                "parseInt(document.querySelector('#records-in').textContent.replace(/,/g, '')) > 0",
                timeout=WAIT,
            )
            first = _number(page.inner_text("#records-in"))
            assert page.inner_text("#status") == "running"
            assert page.inner_text("#flow") == "fraud"
            # The numbers move: more records a moment later, and a non-zero rate.
            page.wait_for_function(
                f"parseInt(document.querySelector('#records-in').textContent.replace(/,/g, '')) > {first}",
                timeout=WAIT,
            )
            assert _number(page.inner_text("#rate-in")) > 0
            # The alert feed and the live alerts table fill.
            page.wait_for_selector("#table-alerts tbody tr", timeout=WAIT)
            page.wait_for_selector("#panel-4 tbody tr", timeout=WAIT)
            assert page.locator("#table-alerts tbody tr").count() > 0
            headers = page.locator("#table-alerts thead th").all_inner_texts()
            assert {"card", "rule", "amount"} <= set(headers)
            # Charts: spend per minute (a line) and cards flagged per rule (bars).
            page.wait_for_selector("#panel-0 svg polyline", timeout=WAIT)
            page.wait_for_selector("#panel-1 svg rect", timeout=WAIT)
            # The dataflow graph is drawn with the demo's steps.
            assert page.locator("#graph g.node").count() >= 10
            # The engine reports late records now: a count (0 or more), not "n/a".
            assert page.inner_text("#late").replace(",", "").isdigit()
            # Batch latency (source to sink) and backpressure: measured, drawn, moving.
            page.wait_for_function(_text_ends("#latency", " ms"), timeout=WAIT)
            page.wait_for_selector("#latency-chart polyline", timeout=WAIT)
            assert page.inner_text("#backpressure").endswith("%")
            lat = page.locator("#steps tbody tr").first.locator("td").nth(9).inner_text()
            assert lat == "n/a"  # the source's own latency is not measured
            # Checkpoints: the card names the newest one, which moves on (every 5 s here).
            page.wait_for_function(_text_starts("#checkpoint", "#"), timeout=WAIT)
            ck = _number(page.inner_text("#checkpoint").split()[0][1:])
            page.wait_for_function(
                f"parseInt(document.querySelector('#checkpoint').textContent.slice(1)) > {ck}",
                timeout=WAIT,
            )
            assert "written" in page.inner_text("#checkpoint")
            page.wait_for_selector("#checkpoint-chart polyline", timeout=WAIT)
            # Model panels: the evaluate step's row and its metric chart; the value moves.
            page.wait_for_selector("#model-table tbody tr", timeout=WAIT)
            row = page.locator("#model-table tbody tr").first.locator("td").all_inner_texts()
            assert row[1] == "evaluate" and row[5] == "Accuracy@2000"
            records = _number(row[3])
            page.wait_for_function(
                "parseInt(document.querySelector('#model-table tbody tr td:nth-child(4)')"
                f".textContent.replace(/,/g, '')) > {records}",
                timeout=WAIT,
            )
            page.wait_for_selector("#model-charts svg polyline", timeout=WAIT)
            page.wait_for_selector("#panel-3 svg polyline", timeout=WAIT)
            # Keyed state, read at one consistent cut: the top-spenders panel fills and moves.
            page.wait_for_selector("#panel-2 tbody tr", timeout=WAIT)
            top = page.inner_text("#panel-2 tbody")
            page.wait_for_function(
                f"document.querySelector('#panel-2 tbody').innerText != {top!r}", timeout=WAIT
            )
            assert "fraud_features_card_stats" in page.inner_text("#steps")
            # SQL from the page.
            page.fill("#sql-text", "SELECT rule, count(*) AS n FROM alerts GROUP BY rule")
            page.click("#sql-run")
            page.wait_for_selector("#sql-table tbody tr", timeout=WAIT)
            page.fill("#sql-text", "DELETE FROM alerts")
            page.click("#sql-run")
            page.wait_for_function(
                "document.querySelector('#sql-info').textContent.includes('only SELECT')",
                timeout=WAIT,
            )
            page.fill(
                "#sql-text",
                "SELECT (SELECT sum(tx_count) FROM fraud_features_card_stats) AS counted, "
                "(SELECT sum(records) FROM state_cut) AS read",
            )
            for _ in range(6):  # a read may run past the 5 s limit behind a checkpoint
                page.click("#sql-run")
                page.wait_for_function(
                    "document.querySelector('#sql-info').textContent.includes(' rows') || "
                    "document.querySelector('#sql-info').textContent.includes('within')",
                    timeout=WAIT,
                )
                if page.locator("#sql-table tbody tr").count():
                    break
            page.wait_for_selector("#sql-table tbody tr", timeout=WAIT)
            counted, read = page.locator("#sql-table tbody td").all_inner_texts()
            assert 0 < _number(counted) <= _number(read)  # state of valid records at the cut
            page.fill("#sql-text", "SELECT rule, count(*) AS n FROM alerts GROUP BY rule")
            page.click("#sql-run")
            page.wait_for_selector("#sql-table tbody tr", timeout=WAIT)
            time.sleep(1.5)  # let the throughput chart gather a few points
            # The docs screenshot is refreshed on request only, so a test run leaves the
            # repository clean: TIDEFLOW_UPDATE_SCREENSHOT=1 ./scripts/test -k browser
            if os.environ.get("TIDEFLOW_UPDATE_SCREENSHOT") == "1":
                out = ROOT / "docs" / "img" / "dashboard.png"
            else:
                out = tmp_path / "dashboard.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            assert out.stat().st_size > 10_000
        finally:
            browser.close()
