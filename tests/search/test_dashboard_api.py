"""The dashboard in API mode: WHERECNN_API_URL points at a live search API (uvicorn on loopback)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .demo_fixture import demo_env
from .test_dashboard import APP, _deck, _layer, _photo


@pytest.fixture(scope="module")
def api_url(demo_dir: Path) -> Iterator[str]:
    import uvicorn
    from wherecnn.config import get_settings
    from wherecnn.search import SearchEngine
    from wherecnn.search.api import create_app

    env = demo_env(demo_dir)
    settings = get_settings(store=env["WHERECNN_STORE"], checkpoint=env["WHERECNN_CHECKPOINT"], api_key="k3y")
    engine = SearchEngine.from_settings(settings)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, engine=engine), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "search API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()


def test_dashboard_through_the_api(api_url: str, demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest
    from wherecnn.config import reset_settings_cache

    monkeypatch.setenv("WHERECNN_API_URL", api_url)
    monkeypatch.setenv("WHERECNN_API_KEY", "k3y")
    monkeypatch.setenv("WHERECNN_DATA_DIR", str(demo_dir / "data"))
    monkeypatch.setenv("WHERECNN_STORE", "edge:///nonexistent")  # proves nothing is opened in-process
    reset_settings_cache()
    try:
        at = AppTest.from_file(APP, default_timeout=180)
        at.run()
        at.file_uploader(key="upload").upload("street.jpg", _photo(), "image/jpeg").run()
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
        table = at.dataframe[0].value
        assert set(table["city"]) == {"alpha", "beta"} and len(table) == 10
        spec = _deck(at)
        assert _layer(spec, "candidates") is not None and _layer(spec, "heatmap") is not None
        assert any("search API" in c.value for c in at.sidebar.caption)
    finally:
        reset_settings_cache()
