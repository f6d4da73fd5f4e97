"""The dashboard in a real browser: `wherecnn dashboard` in a subprocess, Debian's Chromium via Playwright.

Uploads a ground image, waits for the ranked results and the map, and saves a screenshot. With
WHERECNN_E2E_DEMO_DIR set to a `wherecnn demo` folder it shoots that demo into docs/images/dashboard.png (the
README's picture); otherwise it builds a miniature demo folder in seconds and saves to var/e2e/dashboard.png,
so a plain test run never overwrites the committed picture with test patterns.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.e2e,
    # `make test` installs Debian's Chromium where it may (root with apt-get); elsewhere say so, once
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"no {CHROMIUM}: install Debian's Chromium (apt-get install -y chromium, as root) to run "
        "the browser test; `make test` does that where it can",
    ),
]
README_SCREENSHOT = ROOT / "docs" / "images" / "dashboard.png"
TEST_SCREENSHOT = ROOT / "var" / "e2e" / "dashboard.png"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # WebGL for the deck.gl map without a GPU: software rendering.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demo_fixture() -> object:
    spec = importlib.util.spec_from_file_location(
        "wherecnn_demo_fixture", ROOT / "tests/search/demo_fixture.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    explicit = os.environ.get("WHERECNN_E2E_DEMO_DIR")
    if explicit:
        return Path(explicit)
    return _demo_fixture().build_demo_dir(tmp_path_factory.mktemp("e2e_demo"))  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def dashboard_url(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("e2e_log") / "dashboard.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHERECNN_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wherecnn", "dashboard", "--demo-dir", str(demo_dir), "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                        if resp.read().strip() == b"ok":
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dashboard did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _query_image(demo_dir: Path) -> Path:
    import pandas as pd

    captures = pd.read_parquet(demo_dir / "data" / "captures.parquet")
    if "split" in captures:
        captures = captures[captures["split"] == "test"]
    if "kind" in captures and (captures["kind"] == "panorama").any():
        captures = captures[captures["kind"] == "panorama"]
    uri = str(captures.iloc[0]["uri"])
    path = Path(uri) if Path(uri).is_absolute() else demo_dir / "data" / uri
    assert path.exists(), path
    return path


def _metric(page: object, label: str) -> str:
    metric = page.locator("[data-testid='stMetric']").filter(has_text=label)  # type: ignore[attr-defined]
    return str(metric.locator("[data-testid='stMetricValue']").inner_text()).strip()


def _map_city(page: object) -> str:
    box = page.locator("[data-testid='stSelectbox']").filter(has_text="Map")  # type: ignore[attr-defined]
    return str(box.locator("input[role='combobox']").input_value()).strip()


def test_upload_and_screenshot(dashboard_url: str, demo_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    query = tmp_path / f"street{_query_image(demo_dir).suffix}"
    shutil.copy(_query_image(demo_dir), query)
    outside: list[str] = []  # requests that leave this machine (the map must need none)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1500}, device_scale_factor=1)
            page.on(
                "request",
                lambda r: (
                    outside.append(r.url)
                    if r.url.split("://", 1)[0] in ("http", "https", "ws", "wss")
                    and r.url.split("://", 1)[1].split("/", 1)[0].split(":")[0]
                    not in ("127.0.0.1", "localhost")
                    else None
                ),
            )
            page.goto(dashboard_url, wait_until="domcontentloaded")
            expect(page.get_by_text("Upload a ground photo")).to_be_visible(timeout=120_000)
            page.locator("input[type=file]").first.set_input_files(str(query))
            expect(page.get_by_text("Ranked locations", exact=True)).to_be_visible(timeout=180_000)
            expect(page.get_by_text("Best guess", exact=True)).to_be_visible()
            deck = page.locator("[data-testid='stDeckGlJsonChart']")
            expect(deck).to_be_visible(timeout=60_000)
            expect(deck.locator("canvas").first).to_be_visible(timeout=60_000)
            expect(page.locator("[data-testid='stException']")).to_have_count(0)
            expect(page.locator("[data-testid='stSpinner']")).to_have_count(0, timeout=120_000)
            rows = page.locator("[data-testid='stDataFrame']")
            expect(rows.first).to_be_visible()
            page.wait_for_timeout(2500)  # let deck.gl draw the bitmap layers
            shot = README_SCREENSHOT if os.environ.get("WHERECNN_E2E_DEMO_DIR") else TEST_SCREENSHOT
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)

            # the map follows the best guess; a city picked by hand holds until the next search
            best = _metric(page, "Best guess")
            assert _map_city(page) == best
            expect(page.get_by_text(f"Top 5 in {best}")).to_be_visible()
            page.locator("[data-testid='stSelectbox']").filter(has_text="Map").locator("input").click()
            other = page.locator("[role='option']").filter(has_not_text=best).first
            picked = other.inner_text().strip()
            other.click()
            expect(page.get_by_text(f"Top 5 in {picked}")).to_be_visible(timeout=60_000)
            slider = page.locator("[data-testid='stSlider']").filter(has_text="Results per city")
            slider.get_by_role("slider").focus()
            page.keyboard.press("ArrowLeft")  # K 5 -> 4: a new search
            expect(page.get_by_text(f"Top 4 in {best}")).to_be_visible(timeout=120_000)
            assert _map_city(page) == best
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000
    assert not outside, f"the dashboard fetched from outside this machine: {outside[:5]}"
