"""Qdrant Edge backend: the Qdrant engine in-process, one shard directory per index version.

Edge locks a shard directory to one open handle, so readers and writers never share one: a build always
writes a NEW version directory, and a pointer file (``CURRENT``, replaced with ``os.replace``) names the live
one. Readers hold the live version open and reopen when the pointer changes (checked on every call, a tiny
file read), so a dashboard keeps answering while an index job builds the next version in another process.

Layout::

    ROOT/CURRENT                      {"version": "v..."}   (atomic pointer)
    ROOT/versions/<version>/meta.json  VersionInfo (status, tag, previous, points, dim)
    ROOT/versions/<version>/shard/     the Edge shard
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wherecnn.config import Settings, get_settings
from wherecnn.index.store.base import (
    DEFAULT_BATCH,
    GeoBBox,
    GeoRadius,
    Hit,
    StoreError,
    TilePoint,
    VectorStore,
    VersionInfo,
    as_list,
    choose_keep,
    is_version_id,
    new_version_id,
    point_id,
    rollback_target,
    stacked,
)

POINTER = "CURRENT"
_LOCKED_HINT = "WouldBlock"


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class EdgeStore(VectorStore):
    def __init__(
        self, root: str | Path, *, settings: Settings | None = None, read_only: bool = False
    ) -> None:
        self.root = Path(root).expanduser().absolute()
        self.settings = settings or get_settings()
        self.read_only = read_only
        self._lock = threading.RLock()
        self._shard: Any = None
        self._shard_version: str | None = None
        self._building: str | None = None
        self._views_of: dict[str, int] = {}
        if not read_only:
            (self.root / "versions").mkdir(parents=True, exist_ok=True)
        elif not self.root.exists():
            raise StoreError(f"edge store {self.root} does not exist (build it with `wherecnn index`)")

    # --- paths and metadata -----------------------------------------------------------------------------
    def _vdir(self, version: str) -> Path:
        return self.root / "versions" / version

    def _meta(self, version: str) -> dict[str, Any]:
        path = self._vdir(version) / "meta.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreError(f"unknown version {version!r}: {path} is missing") from None

    def _write_meta(self, version: str, **changes: Any) -> None:
        meta = self._meta(version)
        meta.update(changes)
        _atomic_write_json(self._vdir(version) / "meta.json", meta)

    def live_version(self) -> str | None:
        try:
            return str(json.loads((self.root / POINTER).read_text())["version"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError) as exc:
            raise StoreError(f'{self.root / POINTER}: expected JSON {{"version": ...}} ({exc})') from exc

    @property
    def building(self) -> str | None:
        return self._building

    # --- shard handles ----------------------------------------------------------------------------------
    def _config(self, dim: int, views: int = 1) -> Any:
        import qdrant_edge as qe

        s = self.settings
        quant = None
        if s.quantization == "int8":
            quant = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
        multi = qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim) if views > 1 else None
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine, multivector_config=multi),
            hnsw_config=qe.HnswIndexConfig(
                m=s.hnsw_m,
                ef_construct=s.hnsw_ef_construct,
                full_scan_threshold=s.full_scan_threshold_kb(dim * views),
                payload_m=s.hnsw_payload_m,
            ),
            quantization_config=quant,
        )

    def _load(self, version: str) -> Any:
        import qdrant_edge as qe

        shard_dir = self._vdir(version) / "shard"
        if not (shard_dir / "edge_config.json").exists():
            return None
        try:
            return qe.EdgeShard.load(str(shard_dir))
        except Exception as exc:  # the binding raises a generic error; name the lock case clearly
            if _LOCKED_HINT in str(exc):
                raise StoreError(
                    f"version {version} ({shard_dir}) is open in another process or handle; Edge allows one. "
                    "Readers open the live version; index jobs write a new version (see `wherecnn index`)."
                ) from exc
            raise

    def _create(self, version: str, dim: int, views: int = 1) -> Any:
        import qdrant_edge as qe

        shard = qe.EdgeShard.create(str(self._vdir(version) / "shard"), self._config(dim, views))
        # city is the tenant: a subgraph per city keeps city-filtered search on the graph; geo filters are
        # searched exactly below hnsw_full_scan_threshold, so no geohash subgraphs (see settings)
        shard.update(qe.UpdateOperation.create_field_index("city", qe.KeywordIndexParams(is_tenant=True)))
        shard.update(qe.UpdateOperation.create_field_index("location", qe.GeoIndexParams(enable_hnsw=False)))
        shard.update(qe.UpdateOperation.create_field_index("tile_id", qe.PayloadSchemaType.Keyword))
        self._write_meta(version, dim=dim, views=views)
        return shard

    def _views(self, version: str | None) -> int:
        """Vectors per point of a version (1, or the views of a multivector index); cached."""
        if version is None:
            return 1
        if version not in self._views_of:
            self._views_of[version] = int(self._meta(version).get("views", 1))
        return self._views_of[version]

    def _close_shard(self) -> None:
        if self._shard is not None:
            if not self.read_only:
                self._shard.flush()
            self._shard.close()
        self._shard = None
        self._shard_version = None

    def _target(self) -> str | None:
        return self._building or self.live_version()

    def refresh(self) -> bool:
        """Reopen when the live pointer moved; serves the old version while the new one is locked."""
        with self._lock:
            if self._building is not None:
                return False
            live = self.live_version()
            if live == self._shard_version or live is None:
                return False
            try:
                new = self._load(live)
            except StoreError:
                return False  # the writer has not let go yet; try again on the next call
            old = self._shard
            self._shard, self._shard_version = new, live
            if old is not None:
                old.close()
            return True

    def _handle(self, *, create_dim: int | None = None, views: int = 1) -> Any:
        """The open shard of the target version (None when it has no data yet)."""
        if self._building is None:
            self.refresh()
        target = self._target()
        if target is None:
            if create_dim is None:
                return None
            target = self._first_version()
        if self._shard_version != target:
            self._close_shard()
            self._shard = self._load(target)
            self._shard_version = target if self._shard is not None else None
        if self._shard is None and create_dim is not None:
            self._shard = self._create(target, create_dim, views)
            self._shard_version = target
        return self._shard

    def _first_version(self) -> str:
        """Writing into an empty store: the first version is made live at once (nobody reads yet)."""
        version = new_version_id("initial")
        self._vdir(version).mkdir(parents=True)
        info = VersionInfo(
            version=version, status="ready", tag="initial", created=time.time(), switched_at=time.time()
        )
        _atomic_write_json(self._vdir(version) / "meta.json", info.to_meta())
        _atomic_write_json(self.root / POINTER, {"version": version})
        return version

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"edge store {self.root} was opened read-only")

    # --- data -------------------------------------------------------------------------------------------
    def upsert(self, points: Iterable[TilePoint], *, batch_size: int = DEFAULT_BATCH) -> int:
        import qdrant_edge as qe

        self._writable()
        written = 0
        with self._lock:
            for batch in _batches(points, batch_size):
                vectors = [p.vector_list() for p in batch]
                views, dim = batch[0].shape
                shard = self._handle(create_dim=dim, views=views)
                ops = [
                    qe.Point(point_id(p.tile_id), v, p.full_payload())
                    for p, v in zip(batch, vectors, strict=True)
                ]
                shard.update(qe.UpdateOperation.upsert_points(ops))
                written += len(ops)
        # no flush per call: the WAL makes each update durable once it returns (what resume relies on)
        return written

    def _filter(
        self,
        cities: Sequence[str] | str | None = None,
        radius: GeoRadius | None = None,
        bbox: GeoBBox | None = None,
        polygon: Sequence[tuple[float, float]] | None = None,
        tile_ids: Sequence[str] | None = None,
    ) -> Any:
        import qdrant_edge as qe

        must: list[Any] = []
        city_list = as_list(cities)
        if city_list is not None:
            must.append(qe.FieldCondition(key="city", match=qe.MatchAny(city_list)))
        if radius is not None:
            must.append(
                qe.FieldCondition(
                    key="location",
                    geo_radius=qe.GeoRadius(
                        qe.GeoPoint(lon=radius.lon, lat=radius.lat), float(radius.radius_m)
                    ),
                )
            )
        if bbox is not None:
            must.append(
                qe.FieldCondition(
                    key="location",
                    geo_bounding_box=qe.GeoBoundingBox(
                        top_left=qe.GeoPoint(lon=bbox.min_lon, lat=bbox.max_lat),
                        bottom_right=qe.GeoPoint(lon=bbox.max_lon, lat=bbox.min_lat),
                    ),
                )
            )
        if polygon is not None:
            ring = _closed_ring(polygon)
            must.append(
                qe.FieldCondition(
                    key="location",
                    geo_polygon=qe.GeoPolygon(exterior=[qe.GeoPoint(lon=lon, lat=lat) for lat, lon in ring]),
                )
            )
        if tile_ids is not None:
            must.append(qe.HasIdCondition({point_id(t) for t in tile_ids}))
        return qe.Filter(must=must) if must else None

    def query(
        self,
        vector: Sequence[float] | np.ndarray,
        k: int = 10,
        *,
        cities: Sequence[str] | str | None = None,
        radius: GeoRadius | None = None,
        bbox: GeoBBox | None = None,
        polygon: Sequence[tuple[float, float]] | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        import qdrant_edge as qe

        vec: Any = [float(v) for v in np.asarray(vector, dtype=np.float32).reshape(-1)]
        with self._lock:
            shard = self._handle()
            if shard is None:
                return []
            if self._views(self._shard_version) > 1:
                vec = [vec]  # a one-row multivector: MaxSim is then the best view's cosine
            request = qe.QueryRequest(
                limit=int(k),
                query=qe.Query.Nearest(vec),
                with_payload=True,
                filter=self._filter(cities, radius, bbox, polygon),
                params=qe.SearchParams(hnsw_ef=self.settings.hnsw_ef, exact=exact),
            )
            found = shard.query(request)
        return [
            Hit(tile_id=str(p.payload["tile_id"]), score=float(p.score), payload=dict(p.payload))
            for p in found
        ]

    def count(self, cities: Sequence[str] | str | None = None) -> int:
        import qdrant_edge as qe

        with self._lock:
            shard = self._handle()
            if shard is None:
                return 0
            return int(shard.count(qe.CountRequest(exact=True, filter=self._filter(cities))))

    def delete(
        self, cities: Sequence[str] | str | None = None, tile_ids: Sequence[str] | None = None
    ) -> None:
        import qdrant_edge as qe

        self._writable()
        if cities is None and tile_ids is None:
            raise ValueError("delete needs cities and/or tile_ids (refusing to delete everything)")
        with self._lock:
            shard = self._handle()
            if shard is None:
                return
            shard.update(qe.UpdateOperation.delete_points_by_filter(self._filter(cities, tile_ids=tile_ids)))
            shard.flush()

    def cities(self) -> list[str]:
        import qdrant_edge as qe

        with self._lock:
            shard = self._handle()
            if shard is None:
                return []
            response = shard.facet(qe.FacetRequest(key="city", limit=100_000, exact=True))
        return sorted(str(h.value) for h in response.hits if h.count > 0)  # deleted values linger at 0

    def _scroll(self, flt: Any, *, with_vector: bool, fields: list[str] | None = None) -> Iterator[Any]:
        import qdrant_edge as qe

        with self._lock:
            shard = self._handle()
            if shard is None:
                return
            offset = None
            payload: Any = qe.PayloadSelector.Include(fields) if fields else True
            while True:
                records, offset = shard.scroll(
                    qe.ScrollRequest(
                        offset=offset, limit=2048, filter=flt, with_payload=payload, with_vector=with_vector
                    )
                )
                yield from records
                if offset is None:
                    return

    def all_vectors(self, city: str) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
        records = sorted(
            self._scroll(self._filter(city), with_vector=True), key=lambda r: r.payload["tile_id"]
        )
        ids = [str(r.payload["tile_id"]) for r in records]
        return ids, stacked([r.vector for r in records], len(records)), [dict(r.payload) for r in records]

    def tile_ids(self, cities: Sequence[str] | str | None = None) -> set[str]:
        return {
            str(r.payload["tile_id"])
            for r in self._scroll(self._filter(cities), with_vector=False, fields=["tile_id"])
        }

    def retrieve(self, tile_ids: Sequence[str]) -> list[TilePoint]:
        with self._lock:
            shard = self._handle()
            if shard is None:
                return []
            records = shard.retrieve([point_id(t) for t in tile_ids], with_payload=True, with_vector=True)
        by_id = {str(r.payload["tile_id"]): r for r in records}
        return [
            TilePoint(t, np.asarray(by_id[t].vector, dtype=np.float32), dict(by_id[t].payload))
            for t in tile_ids
            if t in by_id
        ]

    # --- versions ---------------------------------------------------------------------------------------
    def _infos(self) -> list[VersionInfo]:
        infos = []
        base = self.root / "versions"
        if not base.exists():
            return []
        for d in base.iterdir():
            if d.is_dir() and is_version_id(d.name) and (d / "meta.json").exists():
                meta = self._meta(d.name)
                info = VersionInfo.from_meta(meta)
                info.points = meta.get("points")
                infos.append(info)
        return sorted(infos, key=lambda i: (i.created, i.version))

    def versions(self) -> list[VersionInfo]:
        live = self.live_version()
        infos = self._infos()
        for info in infos:
            info.live = info.version == live
            if info.version == self._shard_version and self._shard is not None:
                info.points = self.count()
        return infos

    def begin_version(
        self, tag: str | None = None, *, resume: bool = True, dim: int | None = None, views: int = 1
    ) -> str:
        self._writable()
        with self._lock:
            if resume and tag:
                live = self.live_version()
                for info in reversed(self._infos()):
                    if info.tag == tag and info.status == "building" and info.version != live:
                        self._close_shard()
                        self._building = info.version
                        if dim is not None:
                            self._handle(create_dim=dim, views=views)
                        return info.version
            version = new_version_id(tag)
            self._vdir(version).mkdir(parents=True)
            info = VersionInfo(version=version, status="building", tag=tag, created=time.time())
            _atomic_write_json(self._vdir(version) / "meta.json", info.to_meta())
            self._close_shard()
            self._building = version
            if dim is not None:
                self._handle(create_dim=dim, views=views)
            return version

    def describe(self, about: dict[str, Any], version: str | None = None) -> None:
        with self._lock:
            self._write_meta(self._describe_target(version), about=dict(about))

    def mark_failed(self, reason: str, version: str | None = None) -> bool:
        with self._lock:
            target = self._describe_target(version)
            if target == self.live_version():
                raise StoreError(f"mark_failed: {target} is the live version")
            self._write_meta(target, status="failed", reason=reason)
            return True

    def detach(self) -> None:
        """Stop targeting the version being built (it stays, to be resumed or pruned); target the live one."""
        with self._lock:
            if self._building is not None:
                self._close_shard()
            self._building = None

    def finish_version(self) -> None:
        """Flush, build the HNSW index (Edge runs optimizers only when asked) and mark the build ready."""
        with self._lock:
            if self._building is None:
                return
            shard = self._handle()
            points = 0
            if shard is not None:
                shard.flush()
                shard.optimize()
                points = int(shard.info().points_count)
            self._write_meta(self._building, status="ready", points=points)

    def switch(self, version: str | None = None) -> str:
        self._writable()
        with self._lock:
            target = version or self._building
            if target is None:
                raise StoreError("switch: no version given and none being built")
            if target == self._building:
                self.finish_version()
            meta = self._meta(target)
            if meta.get("status") != "ready":
                raise StoreError(f"version {target} is still building; finish it before switching")
            live = self.live_version()
            if target == live:
                self._building = None
                return target
            return self._point_to(target, previous=live)

    def _point_to(self, target: str, *, previous: str | None) -> str:
        """Let go of the target's shard (readers need it), then flip the pointer in one os.replace."""
        if self._shard_version == target:
            self._close_shard()
        changes: dict[str, Any] = {"switched_at": time.time()}
        if previous is not None:
            changes["previous"] = previous
        self._write_meta(target, **changes)
        _atomic_write_json(self.root / POINTER, {"version": target})
        self._building = None
        return target

    def rollback(self) -> str:
        self._writable()
        with self._lock:
            target = rollback_target(self._infos(), self.live_version())
            return self._point_to(target, previous=None)

    def prune(self, retention: int | None = None) -> list[str]:
        self._writable()
        with self._lock:
            keep = choose_keep(self._infos(), self.live_version(), retention or self.settings.retention)
            removed = [
                i.version for i in self._infos() if i.version not in keep and i.version != self._building
            ]
            for version in removed:
                self.drop_version(version)
            return removed

    def drop_version(self, version: str) -> None:
        self._writable()
        with self._lock:
            if version == self.live_version():
                raise StoreError(f"refusing to drop the live version {version}")
            if self._shard_version == version:
                self._close_shard()
            if self._building == version:
                self._building = None
            shutil.rmtree(self._vdir(version), ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            self._close_shard()


def _batches(points: Iterable[TilePoint], size: int) -> Iterator[list[TilePoint]]:
    batch: list[TilePoint] = []
    for p in points:
        batch.append(p)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _closed_ring(polygon: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    ring = [(float(lat), float(lon)) for lat, lon in polygon]
    if len(ring) < 3:
        raise ValueError(f"polygon needs at least 3 (lat, lon) vertices, got {len(ring)}")
    if ring[0] != ring[-1]:
        ring.append(ring[0])
    return ring
