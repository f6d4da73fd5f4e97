"""One suite, both backends (qdrant-client congruence style): every case runs on Qdrant Edge and on
qdrant-client's in-process mode, and the filtered answers are also checked against a numpy brute force."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from wherecnn.config import get_settings
from wherecnn.geo import distance_m
from wherecnn.index.store import GeoBBox, GeoRadius, StoreError, TilePoint, VectorStore, open_store, point_id
from wherecnn.index.store.edge import EdgeStore
from wherecnn.index.store.server import ServerStore

BACKENDS = ["edge", "server"]
DIM = 16
CITIES = {"alpha": (40.70, -74.00), "beta": (48.85, 2.35)}


def make_points(n: int = 40, seed: int = 0, dim: int = DIM) -> list[TilePoint]:
    rng = np.random.default_rng(seed)
    points = []
    for i in range(n):
        city = "alpha" if i % 2 == 0 else "beta"
        lat0, lon0 = CITIES[city]
        lat, lon = lat0 + (i // 2 % 5) * 0.002, lon0 + (i // 10) * 0.002  # a 5x4 grid, ~200 m spacing
        vec = rng.normal(size=dim).astype(np.float32)
        payload = {
            "location": {"lat": lat, "lon": lon},
            "city": city,
            "uri": f"/tiles/{city}/{i}.jpg",
            "gsd_m": 0.78,
            "bounds": {
                "min_lat": lat - 0.0005,
                "min_lon": lon - 0.0005,
                "max_lat": lat + 0.0005,
                "max_lon": lon + 0.0005,
            },
            "model": "test-model",
        }
        points.append(TilePoint(f"{city}-{i:03d}", vec / np.linalg.norm(vec), payload))
    return points


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def factory(backend: str, tmp_path: Path) -> Iterator[Callable[..., VectorStore]]:
    """Opens stores on ONE underlying index (same directory / same in-process client)."""
    opened: list[VectorStore] = []
    shared: dict[str, ServerStore] = {}

    def make(read_only: bool = False, **overrides: object) -> VectorStore:
        settings = get_settings(**overrides)
        if backend == "edge":
            store: VectorStore = EdgeStore(tmp_path / "index", settings=settings, read_only=read_only)
        elif "first" not in shared:
            store = shared.setdefault(
                "first", ServerStore(":memory:", settings=settings, read_only=read_only)
            )
        else:
            store = ServerStore(client=shared["first"].client, settings=settings, read_only=read_only)
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        store.close()


@pytest.fixture
def filled(factory: Callable[..., VectorStore]) -> tuple[VectorStore, list[TilePoint]]:
    store = factory()
    points = make_points()
    assert store.upsert(points, batch_size=7) == len(points)
    return store, points


def brute(
    points: list[TilePoint], vector: np.ndarray, keep: Callable[[TilePoint], bool], k: int
) -> list[str]:
    chosen = [p for p in points if keep(p)]
    scores = np.array([float(np.dot(np.asarray(p.vector), vector)) for p in chosen])
    return [chosen[i].tile_id for i in np.argsort(-scores)[:k]]


def test_upsert_query_count_and_idempotent_ids(filled: tuple[VectorStore, list[TilePoint]]) -> None:
    store, points = filled
    assert store.count() == 40
    assert store.count("alpha") == 20 and store.count(["alpha", "beta"]) == 40
    hits = store.query(points[3].vector, k=3)
    assert hits[0].tile_id == points[3].tile_id and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].payload["location"] == pytest.approx(points[3].payload["location"])
    assert hits[0].payload["bounds"]["max_lat"] == pytest.approx(points[3].payload["bounds"]["max_lat"])
    store.upsert(points[:10])  # same tile IDs -> same point IDs -> overwritten, not duplicated
    assert store.count() == 40
    assert point_id("x") == point_id("x") != point_id("y")


def test_filters_agree_with_brute_force(filled: tuple[VectorStore, list[TilePoint]]) -> None:
    store, points = filled
    q = np.asarray(points[5].vector) + 0.3 * np.asarray(points[8].vector)
    q = q / np.linalg.norm(q)
    lat0, lon0 = CITIES["alpha"]

    def loc(p: TilePoint) -> tuple[float, float]:
        return p.payload["location"]["lat"], p.payload["location"]["lon"]

    radius = GeoRadius(lat=lat0 + 0.004, lon=lon0 + 0.002, radius_m=350.0)
    bbox = GeoBBox(min_lat=lat0 - 0.001, min_lon=lon0 - 0.001, max_lat=lat0 + 0.0045, max_lon=lon0 + 0.0025)
    tri = [(lat0 - 0.001, lon0 - 0.001), (lat0 + 0.009, lon0 - 0.001), (lat0 - 0.001, lon0 + 0.007)]

    def in_radius(p: TilePoint) -> bool:
        lat, lon = loc(p)
        return float(distance_m(lat1=lat, lon1=lon, lat2=radius.lat, lon2=radius.lon)) <= radius.radius_m

    def in_bbox(p: TilePoint) -> bool:
        lat, lon = loc(p)
        return bbox.min_lat <= lat <= bbox.max_lat and bbox.min_lon <= lon <= bbox.max_lon

    def in_tri(p: TilePoint) -> bool:  # right triangle: (lat-a)/9 + (lon-b)/8 <= 1 (units of 0.001 deg)
        lat, lon = loc(p)
        return (lat - tri[0][0]) / 0.010 + (lon - tri[0][1]) / 0.008 <= 1.0

    cases = {
        "city": ({"cities": "beta"}, lambda p: p.payload["city"] == "beta"),
        "radius": ({"radius": radius}, in_radius),
        "bbox": ({"bbox": bbox}, in_bbox),
        "polygon": ({"polygon": tri}, in_tri),
        "city+radius": (
            {"cities": ["alpha"], "radius": radius},
            lambda p: p.payload["city"] == "alpha" and in_radius(p),
        ),
    }
    for name, (kwargs, keep) in cases.items():
        expected = brute(points, q, keep, k=50)
        assert 0 < len(expected) < 40, name  # each filter must actually filter
        got = [h.tile_id for h in store.query(q, k=50, exact=True, **kwargs)]
        assert got == expected, name


def test_delete_cities_vectors_retrieve(filled: tuple[VectorStore, list[TilePoint]]) -> None:
    store, points = filled
    assert store.cities() == ["alpha", "beta"]
    ids, vectors, payloads = store.all_vectors("beta")
    assert ids == sorted(p.tile_id for p in points if p.payload["city"] == "beta")
    assert vectors.shape == (20, DIM) and payloads[0]["tile_id"] == ids[0]
    by_id = {p.tile_id: p for p in points}
    assert np.allclose(vectors[0], by_id[ids[0]].vector, atol=1e-5)
    assert store.tile_ids("alpha") == {p.tile_id for p in points if p.payload["city"] == "alpha"}
    got = store.retrieve([points[0].tile_id, "missing"])
    assert [p.tile_id for p in got] == [points[0].tile_id]
    store.delete(tile_ids=[points[0].tile_id, points[1].tile_id])
    assert store.count() == 38
    store.delete(cities="beta")
    assert store.count() == 19 and store.cities() == ["alpha"]
    with pytest.raises(ValueError, match="refusing"):
        store.delete()


def test_versions_switch_rollback_prune_with_reader(factory: Callable[..., VectorStore]) -> None:
    writer = factory()
    old = make_points(seed=1)
    first = writer.begin_version("first")
    writer.upsert(old)
    assert writer.live_version() is None and writer.switch() == first
    reader = factory(read_only=True)
    assert reader.query(old[0].vector, k=1)[0].tile_id == old[0].tile_id

    new = [TilePoint(f"new-{p.tile_id}", p.vector, p.payload) for p in make_points(n=10, seed=2)]
    v2 = writer.begin_version("rebuild")
    writer.upsert(new)
    assert writer.count() == 10
    # the reader still answers from the live (old) version while the new one is built
    assert reader.count() == 40 and reader.query(old[0].vector, k=1)[0].tile_id == old[0].tile_id
    assert writer.switch() == v2 and writer.live_version() == v2
    assert reader.query(new[0].vector, k=1)[0].tile_id == new[0].tile_id and reader.count() == 10

    infos = {i.version: i for i in writer.versions()}
    assert infos[v2].live and infos[v2].previous == first and infos[first].points == 40

    assert writer.rollback() == first
    assert reader.count() == 40
    with pytest.raises(StoreError, match="no previous"):
        writer.rollback()
    writer.switch(v2)
    v3 = writer.begin_version("third")
    writer.upsert(old[:5])
    writer.switch()
    assert writer.prune(retention=2) == [first]
    assert [i.version for i in writer.versions()] == [v2, v3]
    with pytest.raises(StoreError, match="live"):
        writer.drop_version(v3)
    with pytest.raises(StoreError, match="read-only"):
        reader.upsert(old[:1])


def test_begin_version_resumes_same_tag(factory: Callable[..., VectorStore]) -> None:
    store = factory()
    points = make_points(n=12)
    v = store.begin_version("job-a")
    store.upsert(points[:5])
    if isinstance(store, EdgeStore):
        store.close()  # Edge: one handle per version dir (the server store shares its in-process client)
    again = factory()
    assert again.begin_version("job-a") == v  # a rerun continues the unfinished build
    assert again.tile_ids() == {p.tile_id for p in points[:5]}
    assert again.begin_version("job-a", resume=False) != v
    with pytest.raises(StoreError, match="building"):
        again.switch(v)


def test_int8_quantization_and_hnsw_settings(
    factory: Callable[..., VectorStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = factory(
        quantization="int8", hnsw_m=8, hnsw_ef_construct=32, hnsw_payload_m=0, hnsw_full_scan_threshold=1234
    )
    created: list[dict] = []
    indexes: dict[str, object] = {}
    if isinstance(store, ServerStore):  # in-process Qdrant reports default HNSW configs: record the requests
        create, create_index = store.client.create_collection, store.client.create_payload_index

        def record(*args: object, **kwargs: object) -> object:
            created.append(kwargs)
            return create(*args, **kwargs)

        def record_index(name: str, field: str, schema: object) -> object:
            indexes[field] = schema
            return create_index(name, field, schema)

        monkeypatch.setattr(store.client, "create_collection", record)
        monkeypatch.setattr(store.client, "create_payload_index", record_index)
    points = make_points(n=30)
    store.upsert(points)
    for p in points[:5]:
        assert store.query(p.vector, k=1)[0].tile_id == p.tile_id
    if isinstance(store, EdgeStore):  # the settings reach the shard's persisted config
        (config,) = store.root.rglob("edge_config.json")
        hnsw = json.loads(config.read_text())["hnsw_config"]
        fields = json.loads(next(store.root.rglob("payload_index/config.json")).read_text())["indexed_fields"]
        city, geo = fields["city"], fields["location"]
    else:
        (request,) = created
        hnsw = request["hnsw_config"].model_dump()
        assert request["quantization_config"] is not None
        city, geo = (indexes[f].model_dump() for f in ("city", "location"))  # type: ignore[attr-defined]
    assert (hnsw["m"], hnsw["ef_construct"], hnsw["payload_m"]) == (8, 32, 0)
    assert hnsw["full_scan_threshold"] == 1234
    # subgraphs per city (the tenant), none per geohash: geo filters go exact below the threshold
    assert city["is_tenant"] is True and geo["enable_hnsw"] is False


def test_the_default_full_scan_threshold_is_200k_points_at_the_index_dimension(tmp_path: Path) -> None:
    settings = get_settings()
    assert settings.hnsw_full_scan_threshold is None
    assert settings.full_scan_threshold_kb(128) == 100_000 and settings.full_scan_threshold_kb(512) == 400_000
    assert get_settings(hnsw_full_scan_threshold=1234).full_scan_threshold_kb(512) == 1234
    store = EdgeStore(tmp_path / "index", settings=settings)
    store.upsert(make_points(n=4))
    (config,) = store.root.rglob("edge_config.json")
    assert json.loads(config.read_text())["hnsw_config"]["full_scan_threshold"] == 200_000 * DIM * 4 // 1024


def test_open_store_uris(tmp_path: Path) -> None:
    edge = open_store(f"edge://{tmp_path}/a")
    assert isinstance(edge, EdgeStore) and edge.root == tmp_path / "a"
    plain = open_store(str(tmp_path / "b"))
    assert isinstance(plain, EdgeStore)
    mem = open_store(":memory:")
    assert isinstance(mem, ServerStore)
    for s in (edge, plain, mem):
        s.close()
    with pytest.raises(ValueError, match="expected edge"):
        open_store("ftp://x")


def test_edge_one_handle_per_version_dir(tmp_path: Path) -> None:
    """Edge locks a version dir to one handle: a second writer gets a clear error, not a hang."""
    a = EdgeStore(tmp_path / "idx")
    a.upsert(make_points(n=4))
    b = EdgeStore(tmp_path / "idx", read_only=True)
    with pytest.raises(StoreError, match="open in another process"):
        b.count()
    a.close()
    assert b.count() == 4
    b.close()


def test_multivector_points_score_their_best_view_and_record_what_they_hold(
    factory: Callable[..., VectorStore],
) -> None:
    rng = np.random.default_rng(3)
    views = rng.normal(size=(6, 4, DIM)).astype(np.float32)
    views /= np.linalg.norm(views, axis=-1, keepdims=True)
    points = [TilePoint(p.tile_id, v, p.payload) for p, v in zip(make_points(6), views, strict=True)]
    store = factory()
    store.begin_version("mv", dim=DIM, views=4)
    store.describe({"model_id": "test-model", "dim": DIM, "retrieval": {"index_views": 2}})
    store.upsert(points)
    store.switch()
    for p, v in zip(points, views, strict=True):
        query = v[2] + 0.05 * rng.normal(size=DIM).astype(np.float32)
        cities = p.payload["city"]
        brute = max(
            (q for q in points if q.payload["city"] == cities),
            key=lambda q: float((np.asarray(q.vector) @ query).max() / np.linalg.norm(query)),
        )
        hit = store.query(query, k=1, cities=cities)[0]
        assert hit.tile_id == brute.tile_id == p.tile_id  # MaxSim: the best view of each point
        assert hit.score == pytest.approx(float((v @ query).max() / np.linalg.norm(query)), abs=1e-4)
    ids, vectors, _ = store.all_vectors("alpha")
    assert vectors.shape == (3, 4, DIM) and store.retrieve([ids[0]])[0].vector.shape == (4, DIM)
    assert store.count() == 6
    assert store.live_about() == {"model_id": "test-model", "dim": DIM, "retrieval": {"index_views": 2}}
