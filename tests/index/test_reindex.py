"""Bulk reindex from a moto S3 server, end to end, on both backends, with a reader searching throughout."""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
from wherecnn.config import get_settings, reset_settings_cache
from wherecnn.index.pipeline import run_index
from wherecnn.index.reindex import ValidationError, run_reindex
from wherecnn.index.store import VectorStore
from wherecnn.index.store.edge import EdgeStore
from wherecnn.index.store.server import ServerStore

from tests.index.conftest import _tile_image, make_tile_set

CKPT = "untrained:dual-cpu"


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    # the tile sets hold 4 bad tiles on purpose (a sixth of them): these tests are about other checks
    monkeypatch.setenv("WHERECNN_REINDEX_MIN_EMBEDDED", "0.5")
    reset_settings_cache()
    yield s3_server
    reset_settings_cache()


def upload(local: Path, endpoint: str, bucket: str, prefix: str) -> str:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(local)}", Body=path.read_bytes())
    return f"s3://{bucket}/{prefix}"


def open_pair(backend: str, tmp_path: Path) -> tuple[VectorStore, VectorStore]:
    """(writer, reader) on one index: the reader is read-only and follows switches."""
    settings = get_settings()
    if backend == "edge":
        return EdgeStore(tmp_path / "idx", settings=settings), EdgeStore(
            tmp_path / "idx", settings=settings, read_only=True
        )
    writer = ServerStore(":memory:", settings=settings)
    return writer, ServerStore(client=writer.client, settings=settings, read_only=True)


@pytest.mark.parametrize("backend", ["edge", "server"])
def test_reindex_from_s3_with_concurrent_reader(backend: str, s3_env: str, tmp_path: Path) -> None:
    old_manifest, _ = make_tile_set(tmp_path / "old", n_good=8, seed=1, prefix="old")
    new_manifest, bad = make_tile_set(tmp_path / "new", n_good=20, seed=2, prefix="new")
    source = upload(new_manifest.parent, s3_env, f"tiles-{backend}", "city-v2")
    s3 = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")
    gone = "new-beta-0003"  # listed in the manifest, deleted from the bucket before the freeze
    s3.delete_object(Bucket=f"tiles-{backend}", Key=f"city-v2/tiles/{gone}.jpg")

    writer, reader = open_pair(backend, tmp_path)
    run_index(str(old_manifest), CKPT, writer, use_ray=False, run_dir=tmp_path / "r0", show_progress=False)
    old_live = writer.live_version()
    if backend == "edge":
        writer.close()
    probe = reader.all_vectors("alpha")[1][0]

    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def search() -> None:
        while not stop.is_set():
            try:
                hits = reader.query(probe, k=1)
                seen.append(hits[0].tile_id.split("-")[0] if hits else "empty")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return

    thread = threading.Thread(target=search, daemon=True)
    thread.start()
    try:
        result = run_reindex(
            source, CKPT, writer, use_ray=False, batch_size=4, run_dir=tmp_path / "rx", show_progress=False
        )
        while len(seen) < 3 or seen[-1] != "new":
            if not thread.is_alive():
                break
            stop.wait(0.01)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors
    assert seen[0] == "old" and seen[-1] == "new" and "empty" not in seen
    flip = seen.index("new")
    assert set(seen[:flip]) == {"old"} and set(seen[flip:]) == {"new"}  # old, then new, never back

    expected_skips = {**{r: n for r, n in _count(bad).items()}}
    expected_skips["missing"] = expected_skips.get("missing", 0) + 1
    assert result.summary.skipped == dict(sorted(expected_skips.items()))
    assert result.previous == old_live and result.summary.switched
    assert reader.count() == 20 - 1 and gone not in reader.tile_ids()
    assert result.checks["sampled"] == 8 and result.checks["sample_failures"] == []
    frozen = pd.read_parquet(result.manifest)
    assert len(frozen) == 24 and not frozen.set_index("tile_id").loc[gone, "present"]

    # rollback returns the old index to the reader
    writer.rollback()
    assert reader.count() == 8
    writer.close()
    reader.close()


def _count(bad: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for reason in bad.values():
        out[reason] = out.get(reason, 0) + 1
    return out


def test_failed_validation_leaves_live_untouched(s3_env: str, tmp_path: Path) -> None:
    """Tiles overwritten after they were embedded: sample queries miss, the switch does not happen."""
    manifest, _ = make_tile_set(tmp_path / "world", n_good=12, seed=3, prefix="v")
    source = upload(manifest.parent, s3_env, "tiles-fail", "c")
    store = EdgeStore(tmp_path / "idx")
    old = make_tile_set(tmp_path / "old", n_good=4, seed=4, prefix="old")[0]
    run_index(str(old), CKPT, store, use_ray=False, run_dir=tmp_path / "r0", show_progress=False)
    live = store.live_version()
    kwargs = {"use_ray": False, "run_dir": tmp_path / "rx", "show_progress": False, "samples": 4}
    result = run_reindex(source, CKPT, store, switch=False, **kwargs)
    assert store.live_version() == live and result.summary.version != live

    s3 = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")
    rng = np.random.default_rng(99)
    for key in pd.read_parquet(
        io.BytesIO(s3.get_object(Bucket="tiles-fail", Key="c/tiles.parquet")["Body"].read())
    )["uri"]:
        s3.put_object(Bucket="tiles-fail", Key=f"c/{key}", Body=_tile_image(rng))
    with pytest.raises(ValidationError, match="do not find themselves"):
        run_reindex(source, CKPT, store, **kwargs)
    assert store.live_version() == live and store.count() == 4
    store.close()


# ------------------------------------------------------------------------------------------ fault matrix

FAULTS = ("all_missing", "all_corrupt", "half_corrupt", "shrunk", "empty_manifest")


def _apply(fault: str, root: Path, endpoint: str, bucket: str, prefix: str) -> str:
    """A source with ``fault`` on S3: a new tile set (12 good, 4 bad) made worse, a shrunk one (2 good), or an
    empty manifest."""
    manifest, bad = make_tile_set(root, n_good=2 if fault == "shrunk" else 12, seed=7, prefix="new")
    frame = pd.read_parquet(manifest)
    if fault == "shrunk":  # two good tiles and nothing else: a healthy source, just smaller
        frame[~frame["tile_id"].isin(list(bad))].to_parquet(manifest, index=False)
    if fault == "empty_manifest":
        frame.iloc[:0].to_parquet(manifest, index=False)
    source = upload(manifest.parent, endpoint, bucket, prefix)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/tiles/")["Contents"])
    if fault == "all_missing":
        for key in keys:
            s3.delete_object(Bucket=bucket, Key=key)
    elif fault in ("all_corrupt", "half_corrupt"):
        for key in keys if fault == "all_corrupt" else keys[::2]:
            s3.put_object(Bucket=bucket, Key=key, Body=b"junk, not an image")
    return source


@pytest.mark.parametrize("backend", ["edge", "server"])
@pytest.mark.parametrize("fault", FAULTS)
def test_a_reindex_never_leaves_the_live_index_worse(
    fault: str, backend: str, s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each fault is refused with the live version and its points intact, the new version (where it holds
    anything) marked failed with the reason, and a rerun starting over instead of failing the same way."""
    monkeypatch.setenv("WHERECNN_REINDEX_MIN_EMBEDDED", "0.99")  # the default
    reset_settings_cache()
    writer, reader = open_pair(backend, tmp_path)
    old, _ = make_tile_set(tmp_path / "old", n_good=8, seed=1, prefix="old")
    run_index(str(old), CKPT, writer, use_ray=False, run_dir=tmp_path / "r0", show_progress=False)
    live, before = writer.live_version(), reader.count()
    source = _apply(fault, tmp_path / "new", s3_env, f"fault-{fault.replace('_', '-')}-{backend}", "src")
    kwargs = {"use_ray": False, "run_dir": tmp_path / "rx", "show_progress": False, "samples": 2}
    with pytest.raises(ValidationError) as failure:
        run_reindex(source, CKPT, writer, **kwargs)
    assert writer.live_version() == live and reader.count() == before == 8
    (failed,) = [i for i in writer.versions() if i.status == "failed"]
    assert failed.reason == str(failure.value) and not failed.live
    assert sorted(p.name for p in tmp_path.glob("rx*")) == ["rx"]
    # the rerun archives the failed run and lists the source afresh (it fails again: nothing was fixed)
    with pytest.raises(ValidationError):
        run_reindex(source, CKPT, writer, **kwargs)
    assert [p.name.split("-")[1] for p in tmp_path.glob("rx-*")] == ["failed"]
    assert writer.live_version() == live and reader.count() == 8
    if fault == "shrunk":  # the source really shrank: say so, and it switches
        result = run_reindex(source, CKPT, writer, allow_shrink=True, **kwargs)
        assert result.summary.switched and reader.count() == 2 and result.checks["live_points"] == 8
    writer.close()
    reader.close()


# ------------------------------------------------------------- faults before building, and during the switch


@contextlib.contextmanager
def failing_listings(times: int | None) -> Iterator[dict[str, int]]:
    """S3 listings in pages of 5 keys whose second and later pages fail with a connection error ``times``
    times (None: always), injected into the client `wherecnn.storage` lists with."""
    from botocore.exceptions import EndpointConnectionError
    from wherecnn import storage

    client = storage.s3_client()
    counts = {"left": -1 if times is None else times, "failed": 0}

    def small_pages(params: dict[str, object], **_: object) -> None:
        params["MaxKeys"] = 5

    def fail(request: object, **_: object) -> None:
        url = str(getattr(request, "url", ""))
        if "continuation-token" in url and counts["left"] != 0:
            counts["left"] -= 1
            counts["failed"] += 1
            raise EndpointConnectionError(endpoint_url=url)

    events = client.meta.events
    events.register("before-parameter-build.s3.ListObjectsV2", small_pages)
    events.register("before-send.s3.ListObjectsV2", fail)
    try:
        yield counts
    finally:
        events.unregister("before-parameter-build.s3.ListObjectsV2", small_pages)
        events.unregister("before-send.s3.ListObjectsV2", fail)


UNREADABLE_SOURCES = ("duplicate_ids", "listing_fails", "listing_flaky")


@pytest.mark.parametrize("backend", ["edge", "server"])
@pytest.mark.parametrize("fault", UNREADABLE_SOURCES)
def test_a_source_that_cannot_be_read_whole_builds_nothing(
    fault: str, backend: str, s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Duplicate tile ids or a listing that keeps failing stop the reindex before it builds a version (the
    live one and its points untouched, no version left behind); a listing that fails once is retried and
    the reindex goes through with every number right; a rerun once the source is fixed goes through."""
    from wherecnn.storage import StorageError

    monkeypatch.setenv("WHERECNN_S3_MAX_ATTEMPTS", "2")  # one retry: a failure that persists fails fast
    reset_settings_cache()
    writer, reader = open_pair(backend, tmp_path)
    old, _ = make_tile_set(tmp_path / "old", n_good=8, seed=1, prefix="old")
    run_index(str(old), CKPT, writer, use_ray=False, run_dir=tmp_path / "r0", show_progress=False)
    live, versions = writer.live_version(), [i.version for i in writer.versions()]
    manifest, bad = make_tile_set(tmp_path / "new", n_good=12, seed=7, prefix="new")
    bucket = f"unreadable-{fault.replace('_', '-')}-{backend}"
    source = upload(manifest.parent, s3_env, bucket, "src")
    kwargs = {"use_ray": False, "run_dir": tmp_path / "rx", "show_progress": False, "samples": 2}
    s3 = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")
    if fault == "duplicate_ids":
        frame = pd.read_parquet(manifest)
        twin = frame.iloc[[0]].assign(uri=frame["uri"].iloc[1])  # one id, two images
        body = io.BytesIO()
        pd.concat([frame, twin]).to_parquet(body, index=False)
        s3.put_object(Bucket=bucket, Key="src/tiles.parquet", Body=body.getvalue())
        with pytest.raises(ValueError, match="duplicate tile_id"):
            run_reindex(source, CKPT, writer, **kwargs)
        s3.put_object(Bucket=bucket, Key="src/tiles.parquet", Body=manifest.read_bytes())  # fixed
    elif fault == "listing_fails":
        with failing_listings(None) as counts, pytest.raises(StorageError, match="cannot list"):
            run_reindex(source, CKPT, writer, **kwargs)
        assert counts["failed"] >= 2  # retried, and every try failed
    if fault != "listing_flaky":
        assert writer.live_version() == live and reader.count() == 8
        assert [i.version for i in writer.versions()] == versions  # nothing built, nothing left building
    with failing_listings(1 if fault == "listing_flaky" else 0) as counts:
        result = run_reindex(source, CKPT, writer, **kwargs)
    assert counts["failed"] == (1 if fault == "listing_flaky" else 0)
    assert result.summary.switched and result.previous == live and result.absent == 1  # the missing tile
    assert reader.count() == 12 and reader.tile_ids() == set(pd.read_parquet(manifest)["tile_id"]) - set(bad)
    writer.close()
    reader.close()


class Killed(BaseException):
    """Stands for the process dying where a kill cannot reach (an in-process server store)."""


_KILL_EDGE = """
import os, signal, sys
from wherecnn.index.reindex import run_reindex
from wherecnn.index.store import edge

source, checkpoint, store, run_dir, when = sys.argv[1:]
write = edge._atomic_write_json

def dying(path, data):
    if path.name == edge.POINTER and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    write(path, data)
    if path.name == edge.POINTER and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)

edge._atomic_write_json = dying
run_reindex(source, checkpoint, store, use_ray=False, run_dir=run_dir, show_progress=False, samples=2)
"""


@pytest.mark.parametrize("backend", ["edge", "server"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_during_the_switch_leaves_one_whole_live_version(
    when: str, backend: str, s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed just before or just after the live pointer moves (Edge: the writer process SIGKILLed around
    its pointer file; server: the call dying around the alias move), readers see the old index or the new
    one, whole; the rerun finishes the same version without embedding again."""
    writer, reader = open_pair(backend, tmp_path)
    old, _ = make_tile_set(tmp_path / "old", n_good=8, seed=1, prefix="old")
    run_index(str(old), CKPT, writer, use_ray=False, run_dir=tmp_path / "r0", show_progress=False)
    live = writer.live_version()
    manifest, bad = make_tile_set(tmp_path / "new", n_good=12, seed=7, prefix="new")
    source = upload(manifest.parent, s3_env, f"kill-{when}-{backend}", "src")
    run_dir = tmp_path / "rx"
    if backend == "edge":
        writer.close()
        argv = [
            sys.executable,
            "-c",
            _KILL_EDGE,
            source,
            CKPT,
            f"edge://{tmp_path / 'idx'}",
            str(run_dir),
            when,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        writer = EdgeStore(tmp_path / "idx", settings=get_settings())
    else:
        move = ServerStore._move_alias

        def dying(self: ServerStore, version: str) -> None:
            if when == "before":
                raise Killed
            move(self, version)
            raise Killed

        monkeypatch.setattr(ServerStore, "_move_alias", dying)
        with pytest.raises(Killed):
            run_reindex(source, CKPT, writer, use_ray=False, run_dir=run_dir, show_progress=False, samples=2)
        monkeypatch.setattr(ServerStore, "_move_alias", move)
    reader.refresh()
    built = next(i.version for i in writer.versions() if i.version != live)
    assert writer.live_version() == (live if when == "before" else built)
    assert reader.count() == (8 if when == "before" else 12)
    result = run_reindex(source, CKPT, writer, use_ray=False, run_dir=run_dir, show_progress=False, samples=2)
    assert result.summary.version == built and len(writer.versions()) == 2  # finished, not rebuilt
    assert result.previous == live and result.summary.switched
    assert writer.live_version() == built and reader.count() == 12
    assert reader.tile_ids() == set(pd.read_parquet(manifest)["tile_id"]) - set(bad)
    infos = writer.versions()
    assert [i.live for i in infos].count(True) == 1 and {i.status for i in infos} == {"ready"}
    writer.close()
    reader.close()
