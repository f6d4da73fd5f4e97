"""Qdrant server backend via qdrant-client (also its in-process ``:memory:`` mode, which speaks the same API).

Each version is a collection ``<name>__<version>``; the alias ``<name>`` names the live one and moves in ONE
``update_collection_aliases`` call, so searches through the alias flip from old to new atomically. Version
state (status, tag, previous) lives in the collection's metadata, so any client sees the same history.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterable, Sequence
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
    new_version_id,
    point_id,
    rollback_target,
    stacked,
)
from wherecnn.index.store.edge import _batches, _closed_ring

SEP = "__"


class ServerStore(VectorStore):
    def __init__(
        self,
        url: str = ":memory:",
        *,
        settings: Settings | None = None,
        read_only: bool = False,
        client: Any = None,
        collection: str | None = None,
    ) -> None:
        from qdrant_client import QdrantClient

        self.settings = settings or get_settings()
        self.read_only = read_only
        self.name = collection or self.settings.collection
        self.url = url
        if client is not None:
            self.client = client
            self._owns_client = False
        elif url == ":memory:":
            self.client = QdrantClient(":memory:")
            self._owns_client = True
        else:
            self.client = QdrantClient(
                url=url, api_key=self.settings.qdrant_api_key, timeout=self.settings.qdrant_timeout_s
            )
            self._owns_client = True
        self._building: str | None = None
        self._pending_meta: dict[str, Any] = {}
        self._lock = threading.RLock()
        if self.client._client.__class__.__name__ == "QdrantLocal":
            # in-process mode warns payload indexes / search params are no-ops there; they matter on a server
            warnings.filterwarnings("ignore", message="Payload indexes have no effect", category=UserWarning)
            warnings.filterwarnings("ignore", message="Local mode performs exact", category=UserWarning)

    # --- names ------------------------------------------------------------------------------------------
    def _coll(self, version: str) -> str:
        return f"{self.name}{SEP}{version}"

    def _collections(self) -> list[str]:
        prefix = f"{self.name}{SEP}"
        return [c.name for c in self.client.get_collections().collections if c.name.startswith(prefix)]

    def live_version(self) -> str | None:
        for alias in self.client.get_aliases().aliases:
            if alias.alias_name == self.name:
                return alias.collection_name.split(SEP, 1)[1]
        return None

    @property
    def building(self) -> str | None:
        return self._building

    def _target(self) -> str | None:
        """Reads and writes go to the version being built, else through the alias (follows switches)."""
        if self._building is not None:
            return self._coll(self._building) if self._exists(self._building) else None
        return self.name if self.live_version() is not None else None

    def _exists(self, version: str) -> bool:
        return bool(self.client.collection_exists(self._coll(version)))

    def _meta(self, version: str) -> dict[str, Any]:
        info = self.client.get_collection(self._coll(version))
        return dict(info.config.metadata or {})

    def _set_meta(self, version: str, **changes: Any) -> None:
        self.client.update_collection(self._coll(version), metadata=changes)

    # --- collections ------------------------------------------------------------------------------------
    def _create(self, version: str, dim: int, meta: dict[str, Any], views: int = 1) -> None:
        from qdrant_client import models as m

        s = self.settings
        quant = None
        if s.quantization == "int8":
            quant = m.ScalarQuantization(
                scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8, quantile=0.99, always_ram=True)
            )
        name = self._coll(version)
        self.client.create_collection(
            name,
            vectors_config=m.VectorParams(
                size=dim,
                distance=m.Distance.COSINE,
                multivector_config=(
                    m.MultiVectorConfig(comparator=m.MultiVectorComparator.MAX_SIM) if views > 1 else None
                ),
            ),
            hnsw_config=m.HnswConfigDiff(
                m=s.hnsw_m,
                ef_construct=s.hnsw_ef_construct,
                payload_m=s.hnsw_payload_m,
                full_scan_threshold=s.full_scan_threshold_kb(dim * views),
            ),
            quantization_config=quant,
            shard_number=s.shard_number,
            replication_factor=s.replication_factor,
            metadata={**meta, "dim": dim, "views": views},
        )
        self.client.create_payload_index(
            name, "city", m.KeywordIndexParams(type=m.KeywordIndexType.KEYWORD, is_tenant=True)
        )
        # as the Edge store: subgraphs per city (the tenant), geo filters searched exactly (see settings)
        self.client.create_payload_index(
            name, "location", m.GeoIndexParams(type=m.GeoIndexType.GEO, enable_hnsw=False)
        )
        self.client.create_payload_index(name, "tile_id", m.PayloadSchemaType.KEYWORD)

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"qdrant store {self.url} / {self.name} was opened read-only")

    def _write_target(self, dim: int, views: int = 1) -> str:
        """The collection to write into, creating it (or, for an empty store, the first live version)."""
        if self._building is not None:
            if not self._exists(self._building):
                self._create(self._building, dim, self._pending_meta, views)
            return self._coll(self._building)
        if self.live_version() is None:
            version = new_version_id("initial")
            now = time.time()
            meta = VersionInfo(version, "ready", "initial", now, None, now).to_meta()
            self._create(version, dim, meta, views)
            self._move_alias(version)
        return self.name

    def _move_alias(self, version: str) -> None:
        from qdrant_client import models as m

        ops: list[Any] = []
        if self.live_version() is not None:
            ops.append(m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=self.name)))
        ops.append(
            m.CreateAliasOperation(
                create_alias=m.CreateAlias(collection_name=self._coll(version), alias_name=self.name)
            )
        )
        self.client.update_collection_aliases(change_aliases_operations=ops)

    # --- data -------------------------------------------------------------------------------------------
    def upsert(self, points: Iterable[TilePoint], *, batch_size: int = DEFAULT_BATCH) -> int:
        from qdrant_client import models as m

        self._writable()
        written = 0
        with self._lock:
            for batch in _batches(points, batch_size):
                vectors = [p.vector_list() for p in batch]
                views, dim = batch[0].shape
                target = self._write_target(dim, views)
                structs = [
                    m.PointStruct(id=point_id(p.tile_id), vector=v, payload=p.full_payload())
                    for p, v in zip(batch, vectors, strict=True)
                ]
                self.client.upsert(target, points=structs, wait=True)
                written += len(structs)
        return written

    def _filter(
        self,
        cities: Sequence[str] | str | None = None,
        radius: GeoRadius | None = None,
        bbox: GeoBBox | None = None,
        polygon: Sequence[tuple[float, float]] | None = None,
        tile_ids: Sequence[str] | None = None,
    ) -> Any:
        from qdrant_client import models as m

        must: list[Any] = []
        city_list = as_list(cities)
        if city_list is not None:
            must.append(m.FieldCondition(key="city", match=m.MatchAny(any=city_list)))
        if radius is not None:
            must.append(
                m.FieldCondition(
                    key="location",
                    geo_radius=m.GeoRadius(
                        center=m.GeoPoint(lat=radius.lat, lon=radius.lon), radius=radius.radius_m
                    ),
                )
            )
        if bbox is not None:
            must.append(
                m.FieldCondition(
                    key="location",
                    geo_bounding_box=m.GeoBoundingBox(
                        top_left=m.GeoPoint(lat=bbox.max_lat, lon=bbox.min_lon),
                        bottom_right=m.GeoPoint(lat=bbox.min_lat, lon=bbox.max_lon),
                    ),
                )
            )
        if polygon is not None:
            ring = _closed_ring(polygon)
            must.append(
                m.FieldCondition(
                    key="location",
                    geo_polygon=m.GeoPolygon(
                        exterior=m.GeoLineString(points=[m.GeoPoint(lat=a, lon=o) for a, o in ring])
                    ),
                )
            )
        if tile_ids is not None:
            must.append(m.HasIdCondition(has_id=[point_id(t) for t in tile_ids]))
        return m.Filter(must=must) if must else None

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
        from qdrant_client import models as m

        target = self._target()
        if target is None:
            return []
        vec: Any = [float(v) for v in np.asarray(vector, dtype=np.float32).reshape(-1)]
        if int((self.client.get_collection(target).config.metadata or {}).get("views", 1) or 1) > 1:
            vec = [vec]  # a one-row multivector: MaxSim is then the best view's cosine
        result = self.client.query_points(
            target,
            query=vec,
            limit=int(k),
            query_filter=self._filter(cities, radius, bbox, polygon),
            with_payload=True,
            search_params=m.SearchParams(hnsw_ef=self.settings.hnsw_ef, exact=exact),
        )
        return [Hit(str(p.payload["tile_id"]), float(p.score), dict(p.payload)) for p in result.points]

    def count(self, cities: Sequence[str] | str | None = None) -> int:
        target = self._target()
        if target is None:
            return 0
        return int(self.client.count(target, count_filter=self._filter(cities), exact=True).count)

    def delete(
        self, cities: Sequence[str] | str | None = None, tile_ids: Sequence[str] | None = None
    ) -> None:
        from qdrant_client import models as m

        self._writable()
        if cities is None and tile_ids is None:
            raise ValueError("delete needs cities and/or tile_ids (refusing to delete everything)")
        target = self._target()
        if target is None:
            return
        self.client.delete(
            target,
            points_selector=m.FilterSelector(filter=self._filter(cities, tile_ids=tile_ids)),
            wait=True,
        )

    def _scroll(self, flt: Any, *, with_vector: bool, fields: list[str] | None = None) -> list[Any]:
        target = self._target()
        if target is None:
            return []
        out: list[Any] = []
        offset = None
        while True:
            records, offset = self.client.scroll(
                target,
                scroll_filter=flt,
                limit=2048,
                offset=offset,
                with_payload=fields if fields else True,
                with_vectors=with_vector,
            )
            out.extend(records)
            if offset is None:
                return out

    def cities(self) -> list[str]:
        return sorted(
            {str(r.payload["city"]) for r in self._scroll(None, with_vector=False, fields=["city"])}
        )

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
        target = self._target()
        if target is None:
            return []
        records = self.client.retrieve(
            target, ids=[point_id(t) for t in tile_ids], with_payload=True, with_vectors=True
        )
        by_id = {str(r.payload["tile_id"]): r for r in records}
        return [
            TilePoint(t, np.asarray(by_id[t].vector, dtype=np.float32), dict(by_id[t].payload))
            for t in tile_ids
            if t in by_id
        ]

    # --- versions ---------------------------------------------------------------------------------------
    def _infos(self) -> list[VersionInfo]:
        infos = []
        for name in self._collections():
            version = name.split(SEP, 1)[1]
            meta = self._meta(version)
            meta.setdefault("version", version)
            infos.append(VersionInfo.from_meta(meta))
        return sorted(infos, key=lambda i: (i.created, i.version))

    def versions(self) -> list[VersionInfo]:
        live = self.live_version()
        infos = self._infos()
        for info in infos:
            info.live = info.version == live
            info.points = int(self.client.count(self._coll(info.version), exact=True).count)
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
                        self._building = info.version
                        return info.version
            version = new_version_id(tag)
            self._pending_meta = VersionInfo(
                version=version, status="building", tag=tag, created=time.time()
            ).to_meta()
            self._building = version
            if dim is not None:
                self._create(version, dim, self._pending_meta, views)
            return version

    def describe(self, about: dict[str, Any], version: str | None = None) -> None:
        with self._lock:
            target = self._describe_target(version)
            if self._exists(target):
                self._set_meta(target, about=dict(about))
            elif target == self._building:  # created at its first write
                self._pending_meta = {**self._pending_meta, "about": dict(about)}
            else:
                raise StoreError(f"describe: unknown version {target!r}")

    def mark_failed(self, reason: str, version: str | None = None) -> bool:
        with self._lock:
            target = self._describe_target(version)
            if target == self.live_version():
                raise StoreError(f"mark_failed: {target} is the live version")
            if not self._exists(target):
                return False
            self._set_meta(target, status="failed", reason=reason)
            return True

    def detach(self) -> None:
        """Stop targeting the version being built (it stays, to be resumed or pruned); target the live one."""
        with self._lock:
            self._building = None

    def finish_version(self) -> None:
        with self._lock:
            if self._building is None:
                return
            if not self._exists(self._building):
                raise StoreError(f"version {self._building} has no points; nothing to finish")
            self._set_meta(self._building, status="ready")

    def switch(self, version: str | None = None) -> str:
        self._writable()
        with self._lock:
            target = version or self._building
            if target is None:
                raise StoreError("switch: no version given and none being built")
            if target == self._building:
                self.finish_version()
            if not self._exists(target):
                raise StoreError(f"unknown version {target!r} in {self.name}")
            if self._meta(target).get("status") != "ready":
                raise StoreError(f"version {target} is still building; finish it before switching")
            live = self.live_version()
            if target != live:
                changes: dict[str, Any] = {"switched_at": time.time()}
                if live is not None:
                    changes["previous"] = live
                self._set_meta(target, **changes)
                self._move_alias(target)
            self._building = None
            return target

    def rollback(self) -> str:
        self._writable()
        with self._lock:
            target = rollback_target(self._infos(), self.live_version())
            self._set_meta(target, switched_at=time.time())
            self._move_alias(target)
            self._building = None
            return target

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
        if version == self.live_version():
            raise StoreError(f"refusing to drop the live version {version}")
        if self._building == version:
            self._building = None
        self.client.delete_collection(self._coll(version))

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
