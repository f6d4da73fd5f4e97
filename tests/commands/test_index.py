"""`wherecnn index` and `index versions|rollback|prune` through the CLI (typer runner, plain path)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from typer.testing import CliRunner
from wherecnn.cli import app
from wherecnn.models.embedder import Embedder

from tests.index.conftest import make_tile_set

runner = CliRunner(env={"COLUMNS": "200"})


def _checkpoint(path: Path) -> Path:
    """A real checkpoint dir (model.pt: state dict + config), so `Embedder.from_checkpoint` is exercised."""
    model = Embedder.untrained("dual-cpu", seed=1).model
    path.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "config": model.config}, path / "model.pt")
    return path


def test_index_versions_rollback_prune(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "ckpt")
    store = f"edge://{tmp_path}/idx"
    a, _ = make_tile_set(tmp_path / "a", n_good=6, seed=1, prefix="a")
    b, _ = make_tile_set(tmp_path / "b", n_good=5, seed=2, prefix="b")
    for manifest in (a, b):
        result = runner.invoke(
            app, ["index", "--tiles", str(manifest), "--checkpoint", str(ckpt), "--store", store, "--no-ray",
                  "--run-dir", str(tmp_path / f"run-{manifest.parent.name}")],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "4 tile(s) skipped" in result.output and "wrong_size 1" in result.output
    listed = runner.invoke(app, ["index", "versions", "--store", store])
    assert listed.exit_code == 0, listed.output
    versions = list(dict.fromkeys(re.findall(r"v\d{8}T\d{12}-ix-[0-9a-f]+", listed.output)))
    assert len(versions) == 2
    back = runner.invoke(app, ["index", "rollback", "--store", store])
    assert back.exit_code == 0 and f"-> {versions[0]}" in back.output, back.output
    pruned = runner.invoke(app, ["index", "prune", "--store", store, "--retention", "1"])
    assert pruned.exit_code == 0 and "pruned 1 version(s)" in pruned.output, pruned.output
    missing = runner.invoke(app, ["index", "--store", store])
    assert missing.exit_code != 0 and "--tiles is required" in missing.output


def test_a_reindex_of_an_all_corrupt_source_exits_non_zero_and_leaves_the_live_version(
    tmp_path: Path,
) -> None:
    ckpt = _checkpoint(tmp_path / "ckpt")
    store = f"edge://{tmp_path}/idx"
    old, _ = make_tile_set(tmp_path / "old", n_good=6, seed=1, prefix="old")
    built = runner.invoke(
        app, ["index", "--tiles", str(old), "--checkpoint", str(ckpt), "--store", store, "--no-ray",
              "--run-dir", str(tmp_path / "run-old")],
    )  # fmt: skip
    assert built.exit_code == 0, built.output
    new, _ = make_tile_set(tmp_path / "new", n_good=6, seed=2, prefix="new")
    for image in (tmp_path / "new" / "tiles").iterdir():
        image.write_bytes(b"junk, not an image")
    failed = runner.invoke(
        app, ["reindex", "--source", str(new), "--checkpoint", str(ckpt), "--store", store, "--no-ray",
              "--run-dir", str(tmp_path / "run-new"), "--samples", "2"],
    )  # fmt: skip
    assert failed.exit_code == 1 and "validation failed" in failed.output, failed.output
    assert "switched" not in failed.output
    listed = runner.invoke(app, ["index", "versions", "--store", store])
    assert listed.exit_code == 0, listed.output
    rows = [line for line in listed.output.splitlines() if re.search(r"v\d{8}T\d{12}-", line)]
    (live,) = [r for r in rows if "-ix-" in r]
    (refused,) = [r for r in rows if "-rx-" in r]
    cells = [[c.strip() for c in row.split("│")[1:4]] for row in (live, refused)]
    assert cells[0][1:] == ["*", "ready"] and cells[1][1:] == ["", "failed"], listed.output
    assert "reindex_min_points" in listed.output
