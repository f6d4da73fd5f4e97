"""`wherecnn config show`: every setting resolved as a run would, with where it came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner
from wherecnn.cli import app
from wherecnn.config import reset_settings_cache

runner = CliRunner(env={"COLUMNS": "200"})


def _show(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["config", "show", "--json", *args])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_the_track_section_and_its_model_settings_say_where_they_come_from() -> None:
    photo = _show("--track", "photo")
    assert photo["model"]["embed_dim"] == {"value": 256, "source": "configs/dual-cpu.json photo.model"}
    assert photo["model"]["channels"]["source"] == "configs/dual-cpu.json"
    offset = _show("--track", "offset")
    assert offset["recipe"]["lr"] == {"value": 0.002, "source": "configs/dual-cpu.json offset"}
    assert offset["recipe"]["weight_decay"] == {"value": 0.0001, "source": "configs/dual-cpu.json train"}
    assert offset["recipe"]["batch_size"] == {"value": 64, "source": "default (models.schema)"}
    assert _show()["recipe"]["lr"] == {"value": 0.001, "source": "default (models.schema)"}  # aligned
    # an override shows as one, and a track's own key still wins over train's, as in training
    over = _show(
        "--track", "offset", "--set", "embed_dim=64", "--set", "train.lr=0.01", "--set", "offset.lr=0.003"
    )
    assert over["model"]["embed_dim"] == {"value": 64, "source": "override"}
    assert over["recipe"]["lr"] == {"value": 0.003, "source": "override"}


def test_a_key_no_model_reads_is_refused_with_its_path() -> None:
    result = runner.invoke(app, ["config", "show", "--set", "train.augment_scal=[1,2]"])
    assert result.exit_code != 0 and "train.augment_scal" in result.output


def test_platform_settings_name_their_environment_variable_and_hide_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WHERECNN_RETENTION", "5")
    monkeypatch.setenv("WHERECNN_API_KEY", "not-for-your-eyes")
    reset_settings_cache()
    try:
        shown = _show()
    finally:
        reset_settings_cache()
    assert shown["settings"]["retention"] == {"value": 5, "source": "env WHERECNN_RETENTION"}
    assert shown["settings"]["hnsw_m"]["source"] == "default"
    assert shown["settings"]["api_key"]["value"] == "<set>"
    assert "not-for-your-eyes" not in json.dumps(shown)


def test_retrieval_settings_pinned_by_an_index_version(tmp_path: Path) -> None:
    from wherecnn.index.store import TilePoint
    from wherecnn.index.store.edge import EdgeStore

    store = EdgeStore(tmp_path / "idx")
    version = store.begin_version("t", dim=4)
    store.upsert(
        [TilePoint("a", np.ones(4, dtype=np.float32), {"city": "x", "location": {"lat": 0, "lon": 0}})]
    )
    store.describe({"retrieval": {"candidates": 4}})
    store.switch()
    store.close()
    shown = _show("--store", f"edge://{tmp_path / 'idx'}")["retrieval"]
    assert shown["candidates"] == {"value": 4, "source": f"index {version}"}
    assert shown["view_pool"]["source"] == "default"
    # the table names each source too
    table = runner.invoke(app, ["config", "show", "--store", f"edge://{tmp_path / 'idx'}"]).stdout
    assert f"index {version}" in table and "[24, 48, 96, 192, 256, 256]" in table
