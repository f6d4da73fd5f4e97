"""The vector store interface shared by the Qdrant Edge and Qdrant server backends.

Both backends keep *versions*: an index build writes into a new version and a single atomic operation makes
it live, so searches never see a half-built index. Point IDs are ``uuid5(NAMESPACE, tile_id)``, so writing the
same tile twice overwrites instead of duplicating (what makes killed jobs resumable).
"""

from __future__ import annotations

import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Fixed forever: changing it would orphan every point ever written.
NAMESPACE = uuid.UUID("6f1c1e0a-3b7e-5d2a-9c4e-7a1f0b2c3d4e")
DEFAULT_BATCH = 256
_VERSION_RE = re.compile(r"^v\d{8}T\d{6}\d{6}(-[a-z0-9_.-]+)?$")


def point_id(tile_id: str) -> str:
    """The deterministic point ID of a tile."""
    return str(uuid.uuid5(NAMESPACE, tile_id))


def new_version_id(tag: str | None = None) -> str:
    """Sortable by creation time (microseconds), optionally suffixed with a short tag for humans."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{int(time.time() * 1e6) % 1_000_000:06d}"
    suffix = ""
    if tag:
        clean = re.sub(r"[^a-z0-9_.-]+", "-", tag.lower()).strip("-")[:24]
        suffix = f"-{clean}" if clean else ""
    return f"v{stamp}{suffix}"


def is_version_id(name: str) -> bool:
    return bool(_VERSION_RE.match(name))


@dataclass(frozen=True)
class GeoRadius:
    """A circle on the ground; radius in metres."""

    lat: float
    lon: float
    radius_m: float


@dataclass(frozen=True)
class GeoBBox:
    """A lat/lon box (WGS84), the same shape as the ``bounds`` payload."""

    min_lat: float
    min_lon: float
    max_lat: float
    max_lon: float

    def __post_init__(self) -> None:
        if self.min_lat > self.max_lat or self.min_lon > self.max_lon:
            raise ValueError(f"GeoBBox: min must not exceed max, got {self}")


@dataclass
class TilePoint:
    """One aerial tile's embedding and payload (keys: location, city, tile_id, uri, gsd_m, bounds, model)."""

    tile_id: str
    vector: Sequence[float] | np.ndarray
    payload: dict[str, Any] = field(default_factory=dict)

    def full_payload(self) -> dict[str, Any]:
        """Payload with `tile_id` always present and `location` validated (the geo index needs lat/lon)."""
        payload = dict(self.payload)
        payload["tile_id"] = self.tile_id
        loc = payload.get("location")
        if loc is not None and not (isinstance(loc, dict) and {"lat", "lon"} <= set(loc)):
            raise ValueError(f"tile {self.tile_id!r}: payload 'location' must be {{lat, lon}}, got {loc!r}")
        if "city" in payload and not isinstance(payload["city"], str):
            raise ValueError(
                f"tile {self.tile_id!r}: payload 'city' must be a string, got {payload['city']!r}"
            )
        return payload

    def vector_list(self) -> list[float] | list[list[float]]:
        """The vector as lists: [d] floats, or [views][d] for a tile stored as several views (multivector)."""
        arr = np.asarray(self.vector, dtype=np.float32)
        return (arr if arr.ndim == 2 else arr.reshape(-1)).tolist()  # type: ignore[no-any-return]

    @property
    def shape(self) -> tuple[int, int]:
        """(views, dim): how many vectors the point holds (a multivector's rows; 1 for a plain vector) and
        their length."""
        arr = np.asarray(self.vector)
        return (int(arr.shape[0]), int(arr.shape[1])) if arr.ndim == 2 else (1, int(arr.size))


@dataclass(frozen=True)
class Hit:
    tile_id: str
    score: float
    payload: dict[str, Any]


@dataclass
class VersionInfo:
    """One version of the index. `status` is ``building`` until the build is finished, then ``ready``;
    ``failed`` (with its ``reason``) when a reindex refused it: it is never switched to, and pruned."""

    version: str
    status: str = "building"
    tag: str | None = None
    created: float = 0.0
    previous: str | None = None  # the version that was live when this one was switched to
    switched_at: float | None = None
    points: int | None = None
    live: bool = False
    # what the version holds, written by `wherecnn index`: model_id, dim, retrieval (its settings)
    about: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why a failed version failed

    def to_meta(self) -> dict[str, Any]:
        meta = {
            "version": self.version,
            "status": self.status,
            "tag": self.tag,
            "created": self.created,
            "previous": self.previous,
            "switched_at": self.switched_at,
        }
        if self.reason:
            meta["reason"] = self.reason
        return {**meta, "about": self.about} if self.about else meta

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> VersionInfo:
        return cls(
            version=str(meta["version"]),
            status=str(meta.get("status", "building")),
            tag=meta.get("tag"),
            created=float(meta.get("created") or 0.0),
            previous=meta.get("previous"),
            switched_at=meta.get("switched_at"),
            about=dict(meta.get("about") or {}),
            reason=meta.get("reason"),
        )


class StoreError(RuntimeError):
    """A vector store operation that cannot proceed, with the reason a person can act on."""


class VectorStore(ABC):
    """Upsert/query/count/delete over the *target* version plus version management.

    The target is the version being built after `begin_version()`, else the live version. A store opened
    read-only always targets the live version and follows switches made by other processes.
    """

    read_only: bool = False

    # --- data -------------------------------------------------------------------------------------------
    @abstractmethod
    def upsert(self, points: Iterable[TilePoint], *, batch_size: int = DEFAULT_BATCH) -> int:
        """Write points in batches; returns how many were written."""

    @abstractmethod
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
        """Nearest tiles by cosine similarity, all given filters combined with AND; polygon is (lat, lon)s."""

    @abstractmethod
    def count(self, cities: Sequence[str] | str | None = None) -> int: ...

    @abstractmethod
    def delete(
        self, cities: Sequence[str] | str | None = None, tile_ids: Sequence[str] | None = None
    ) -> None:
        """Delete by city and/or tile IDs (both: those tiles of those cities); nothing given is an error."""

    @abstractmethod
    def cities(self) -> list[str]: ...

    @abstractmethod
    def all_vectors(self, city: str) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
        """Every tile of a city (IDs, vectors [N, d] or [N, views, d], payloads), sorted by tile_id."""

    @abstractmethod
    def tile_ids(self, cities: Sequence[str] | str | None = None) -> set[str]:
        """The tile IDs present (a resumed job skips them)."""

    @abstractmethod
    def retrieve(self, tile_ids: Sequence[str]) -> list[TilePoint]:
        """Stored points by tile ID (missing ones are left out)."""

    # --- versions ---------------------------------------------------------------------------------------
    @abstractmethod
    def begin_version(
        self, tag: str | None = None, *, resume: bool = True, dim: int | None = None, views: int = 1
    ) -> str:
        """Start (or, same tag and `resume`: continue) building a new version; it becomes the target.

        With `dim` the empty version is created at once, so other processes can attach to it by tag. With
        ``views`` > 1 each point holds that many vectors and scores its best one (Qdrant multivectors with
        MaxSim: a tile seen from several centres ranks by the view that matches best).
        """

    @abstractmethod
    def switch(self, version: str | None = None) -> str:
        """Make a version live in one atomic step (default: the one being built); returns it."""

    @abstractmethod
    def live_version(self) -> str | None: ...

    @abstractmethod
    def versions(self) -> list[VersionInfo]:
        """All versions, oldest first, with `live` and point counts filled in."""

    @abstractmethod
    def rollback(self) -> str:
        """Switch back to the version that was live before the current one; returns it."""

    @abstractmethod
    def prune(self, retention: int | None = None) -> list[str]:
        """Delete versions beyond the retention count (live and its predecessors first); returns removed."""

    @abstractmethod
    def drop_version(self, version: str) -> None:
        """Delete one version that is not live."""

    @abstractmethod
    def describe(self, about: dict[str, Any], version: str | None = None) -> None:
        """Record what a version holds (`VersionInfo.about`); default: the version being built."""

    def _describe_target(self, version: str | None) -> str:
        """The version `describe` writes to: the one given, else the one being built."""
        self._writable()
        target = version or self.building
        if target is None:
            raise StoreError("describe: no version given and none being built")
        return target

    @abstractmethod
    def _writable(self) -> None:
        """Raise `StoreError` (naming the store) when it was opened read-only."""

    def live_about(self) -> dict[str, Any]:
        """What the live version holds (empty for an index built before versions recorded it)."""
        live = self.live_version()
        return next((dict(i.about) for i in self.versions() if i.version == live), {})

    @abstractmethod
    def mark_failed(self, reason: str, version: str | None = None) -> bool:
        """Mark a version that is not live ``failed`` with the reason (default: the one being built); False
        when it holds nothing to mark (a server creates a version at its first point)."""

    @abstractmethod
    def detach(self) -> None:
        """Stop targeting the version being built (kept for resume or prune); reads go to the live one."""

    @abstractmethod
    def close(self) -> None: ...

    @property
    @abstractmethod
    def building(self) -> str | None:
        """The version `begin_version` made the target, if any."""

    def refresh(self) -> bool:
        """Follow a switch made elsewhere; True when the target changed. Backends that need it override."""
        return False

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stacked(vectors: Sequence[Any], n: int) -> np.ndarray:
    """Stored vectors as one float32 array: [N, d], or [N, views, d] for multivector points."""
    arr = np.asarray(vectors, dtype=np.float32)
    return arr if arr.ndim >= 2 else arr.reshape(n, -1)


def as_list(cities: Sequence[str] | str | None) -> list[str] | None:
    if cities is None:
        return None
    return [cities] if isinstance(cities, str) else list(cities)


def choose_keep(infos: list[VersionInfo], live: str | None, retention: int) -> set[str]:
    """Which versions survive a prune: live, then its rollback chain, then the newest ready ones.

    Versions still building and newer than the live one are kept too: a job may be resuming into them.
    """
    if retention < 1:
        raise ValueError(f"retention must be >= 1, got {retention}")
    by_name = {i.version: i for i in infos}
    keep: list[str] = []
    cursor = live
    while cursor and cursor in by_name and len(keep) < retention and cursor not in keep:
        keep.append(cursor)
        cursor = by_name[cursor].previous
    for info in sorted(infos, key=lambda i: i.created, reverse=True):
        if len(keep) >= retention:
            break
        if info.status == "ready" and info.version not in keep:
            keep.append(info.version)
    live_created = by_name[live].created if live in by_name else 0.0
    keep_set = set(keep)
    keep_set |= {i.version for i in infos if i.status == "building" and i.created >= live_created}
    return keep_set


def rollback_target(infos: list[VersionInfo], live: str | None) -> str:
    by_name = {i.version: i for i in infos}
    if live is None or live not in by_name:
        raise StoreError("no live version to roll back from")
    prev = by_name[live].previous
    if not prev:
        raise StoreError(f"live version {live} has no previous version to roll back to")
    if prev not in by_name:
        raise StoreError(f"previous version {prev} of {live} was pruned; nothing to roll back to")
    return prev
