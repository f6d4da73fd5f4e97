"""Shared fixtures: a tiny synthetic world (generated once per session) and a loopback S3 server."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`wherecnn synth --size tiny --seed 0`: 2 cities, ~100 captures. Treat as read-only."""
    from wherecnn.data.synthetic import generate

    out = tmp_path_factory.mktemp("tiny_world")
    generate(out, size="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 endpoint on loopback; yields its URL. Credentials are dummies set in the environment."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
