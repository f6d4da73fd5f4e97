"""`wherecnn train` refuses a misspelt --set before it loads any data."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner
from wherecnn.cli import app

runner = CliRunner(env={"COLUMNS": "200"})


def test_train_refuses_an_unknown_config_key(tmp_path: Path) -> None:
    (tmp_path / "pairs.parquet").touch()  # only its presence is checked before the overrides
    result = runner.invoke(
        app,
        ["train", "--data", str(tmp_path), "--out", str(tmp_path / "ckpt"), "--epochs", "1"]
        + ["--set", "train.augment_scal=[0.8, 1.2]", "--set", "embed_dim=64"],
    )
    assert result.exit_code == 2, result.output
    assert "train.augment_scal" in result.output and "embed_dim" not in result.output.split("known:")[0]
    assert not (tmp_path / "ckpt").exists()
