"""`wherecnn search` (table and --json) and `wherecnn serve` (a real uvicorn process) on a miniature demo."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner
from wherecnn.cli import app

from .demo_fixture import demo_env


def _capture(demo_dir: Path) -> Path:
    return next((demo_dir / "data" / "alpha" / "captures").glob("*.jpg"))


def _args(demo_dir: Path) -> list[str]:
    env = demo_env(demo_dir)
    return ["search", "--store", env["WHERECNN_STORE"], "--checkpoint", env["WHERECNN_CHECKPOINT"]]


def test_search_json(demo_dir: Path) -> None:
    result = CliRunner().invoke(
        app, [*_args(demo_dir), "--image", str(_capture(demo_dir)), "--k", "3", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 6 and {r["city"] for r in rows} == {"alpha", "beta"}
    keys = {
        "city",
        "rank",
        "lat",
        "lon",
        "score",
        "tile_id",
        "position_source",
        "heading_deg",
        "heading_source",
    }
    assert all(set(r) == keys for r in rows)
    assert {r["heading_source"] for r in rows} == {"estimated"}  # no --heading: estimated with the answer
    alpha = [r for r in rows if r["city"] == "alpha"]
    assert [r["rank"] for r in alpha] == [1, 2, 3]
    # refined answers (placed in metres) first, each kind by score
    sources = [r["position_source"] for r in alpha]
    assert sources == sorted(sources, key=lambda p: p != "refined")
    for kind in set(sources):
        scores = [r["score"] for r in alpha if r["position_source"] == kind]
        assert scores == sorted(scores, reverse=True)


def test_search_table_city_and_errors(demo_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(
        app,
        [
            *_args(demo_dir),
            "--image",
            str(_capture(demo_dir)),
            "--city",
            "beta",
            "--k",
            "2",
            "--true-lat",
            "48.85",
            "--true-lon",
            "2.35",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "Best guess" in out.output and "beta" in out.output and "alpha-g" not in out.output
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    out = runner.invoke(app, [*_args(demo_dir), "--image", str(bad)])
    assert out.exit_code == 2 and "not" in out.output.lower() and "Traceback" not in out.output
    out = runner.invoke(app, [*_args(demo_dir), "--image", str(_capture(demo_dir)), "--city", "gotham"])
    assert out.exit_code == 2 and "gotham" in out.output
    out = runner.invoke(app, ["search", "--checkpoint", str(tmp_path / "none"), "--image", str(bad)])
    assert out.exit_code == 2 and "no checkpoint" in out.output


def test_serve_with_uvicorn(demo_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHERECNN_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wherecnn", "serve", "--demo-dir", str(demo_dir), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-2000:]
            time.sleep(0.5)
        ready = httpx.get(f"{url}/readyz", timeout=60)
        assert ready.status_code == 200 and ready.json()["cities"] == 2
        resp = httpx.post(
            f"{url}/v1/search",
            files={"image": ("q.jpg", _capture(demo_dir).read_bytes())},
            data={"k": "2", "city": "alpha"},
            timeout=60,
        )
        assert resp.status_code == 200 and len(resp.json()["results"]) == 2
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
