"""The vector store: one interface (`VectorStore`), two backends (Qdrant Edge embedded, Qdrant server).

`open_store(uri)`: ``edge:///abs/path``, ``edge://rel/path`` or a plain path → Qdrant Edge;
``http(s)://host:6333`` → a Qdrant server; ``:memory:`` → qdrant-client's in-process mode.
"""

from __future__ import annotations

from wherecnn.config import Settings, get_settings
from wherecnn.index.store.base import (
    NAMESPACE,
    GeoBBox,
    GeoRadius,
    Hit,
    StoreError,
    TilePoint,
    VectorStore,
    VersionInfo,
    point_id,
)

__all__ = [
    "NAMESPACE",
    "GeoBBox",
    "GeoRadius",
    "Hit",
    "StoreError",
    "TilePoint",
    "VectorStore",
    "VersionInfo",
    "open_store",
    "point_id",
    "store_kind",
]


def store_kind(uri: str) -> str:
    """``edge`` or ``server`` for a store URI."""
    if uri == ":memory:" or uri.startswith(("http://", "https://")):
        return "server"
    return "edge"


def edge_path(uri: str) -> str:
    if uri.startswith("edge://"):
        return uri[len("edge://") :]  # edge:///abs -> /abs ; edge://rel -> rel
    if "://" in uri:
        raise ValueError(
            f"store URI {uri!r}: expected edge:///path, a plain path, http(s)://host:6333 or :memory:"
        )
    return uri


def open_store(
    uri: str | None = None, *, settings: Settings | None = None, read_only: bool = False
) -> VectorStore:
    """Open the store a URI names (default: settings.store)."""
    settings = settings or get_settings()
    uri = uri or settings.store
    if store_kind(uri) == "server":
        from wherecnn.index.store.server import ServerStore

        return ServerStore(uri, settings=settings, read_only=read_only)
    from wherecnn.index.store.edge import EdgeStore

    return EdgeStore(edge_path(uri), settings=settings, read_only=read_only)
