"""One settings object for the whole platform.

Precedence, highest first: explicit overrides (CLI flags) > ``WHERECNN_*`` environment variables >
``wherecnn.toml`` (path from ``WHERECNN_CONFIG``, else ``./wherecnn.toml`` when present) > defaults.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _toml_path() -> Path | None:
    explicit = os.environ.get("WHERECNN_CONFIG")
    if explicit:
        return Path(explicit)
    local = Path("wherecnn.toml")
    return local if local.exists() else None


# exact search below this many points matching a filter (benchmarks/store.py: 1M points, a 143k-point city)
FULL_SCAN_POINTS = 200_000


DEMO_DIR = "var/demo-small"  # where `make demo` (`wherecnn demo`) writes: the local defaults point into it


class Settings(BaseSettings):
    """Every knob of the platform; see docs/deploy.md for the table of env vars."""

    model_config = SettingsConfigDict(env_prefix="WHERECNN_", extra="ignore")

    # where things live
    data_dir: str = Field(f"{DEMO_DIR}/data", description="Synthetic world / ingested manifests folder.")
    work_dir: str = Field("var", description="Runs, checkpoints, reports, frozen manifests.")
    store: str = Field(
        f"edge://{DEMO_DIR}/index", description="Vector store URI: edge:///path or http(s)://host:6333."
    )
    collection: str = Field("tiles", description="Collection (server) / store name (edge).")
    checkpoint: str = Field(f"{DEMO_DIR}/checkpoint", description="Default checkpoint for index/search.")

    # S3 (credentials come from the usual AWS_* env vars or a service account)
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto); None = AWS.")
    s3_region: str = Field("us-east-1", description="S3 region.")
    s3_max_attempts: int = Field(5, description="botocore 'standard' retry mode attempts.")

    # Qdrant server
    qdrant_api_key: str | None = Field(None, description="API key for a Qdrant server.")
    qdrant_timeout_s: int = Field(60, description="Qdrant client timeout.")
    shard_number: int = Field(1, description="Shards per collection (a multiple of the node count).")
    replication_factor: int = Field(1, description="Replicas per shard (2 in prod).")
    hnsw_m: int = Field(32, description="HNSW graph degree (benchmarks/store.py: 16 misses recall 0.98).")
    hnsw_ef_construct: int = Field(256, description="HNSW build beam width.")
    hnsw_ef: int = Field(768, description="HNSW search beam width (see benchmarks/store.py).")
    hnsw_payload_m: int | None = Field(
        None,
        description="Degree of the per-city HNSW subgraphs (None = hnsw_m). 0 skips them: faster builds, "
        "but city-filtered recall collapses at 1M points (benchmarks/results/store-1m.json).",
    )
    hnsw_full_scan_threshold: int | None = Field(
        None,
        description="KB of vectors: a filter matching fewer points is searched exactly through the payload "
        "index, not the graph (Qdrant's full_scan_threshold). None: 200k points' worth at the index's "
        "dimension (100,000 KB at 128-d; 400,000 KB for dual-cpu's 512-d test-time-view vectors). "
        "Geo filters "
        "rely on it (the geo index builds no subgraphs, which made 1M-point builds take hours), and so do "
        "large cities: Qdrant builds no subgraph for a block over points/hnsw_m*4, so a 143k-point city in "
        "1M fell back to the filtered global graph (recall 0.41-0.80) under 50,000 KB.",
    )
    quantization: Literal["none", "int8"] = Field("none", description="Scalar quantization of vectors.")
    retention: int = Field(3, description="Index versions kept (live one included).")
    reindex_min_embedded: float = Field(
        0.99,
        ge=0.0,
        le=1.0,
        description="Reindex: the share of the frozen manifest's tiles that must be in the new version for "
        "it to be switched to (missing and unreadable tiles count against it).",
    )
    reindex_min_points: int = Field(1, ge=1, description="Reindex: the fewest points a new version may hold.")
    reindex_max_shrink: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Reindex: refuse a version with more than this share fewer points than the live one "
        "(`wherecnn reindex --allow-shrink` lets it through).",
    )

    # compute
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
    num_cpus: int | None = Field(None, description="CPUs for a local Ray (None = all).")
    ray_address: str | None = Field(None, description="Ray cluster address; None = local.")

    # input limits
    max_image_pixels: int = Field(40_000_000, description="Images larger than this are rejected.")
    max_upload_bytes: int = Field(20_000_000, description="Search API upload limit.")

    # search API / dashboard
    api_url: str | None = Field(None, description="Dashboard talks to this search API instead of in-process.")
    api_key: str | None = Field(None, description="If set, the search API requires header X-API-Key.")
    basemap_url: str | None = Field(None, description="Dashboard web basemap tile URL (unset: offline).")

    def full_scan_threshold_kb(self, dim: int) -> int:
        """``hnsw_full_scan_threshold``, or 200k points of ``dim`` float32 values when it is None (the
        threshold is in KB, so a fixed value would mean fewer points as vectors grow)."""
        if self.hnsw_full_scan_threshold is not None:
            return self.hnsw_full_scan_threshold
        return FULL_SCAN_POINTS * dim * 4 // 1024

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_path()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


@lru_cache(maxsize=1)
def _cached() -> Settings:
    return Settings()


def get_settings(**overrides: Any) -> Settings:
    """The process-wide settings, with CLI-flag overrides applied on top (None values ignored)."""
    base = _cached()
    clean = {k: v for k, v in overrides.items() if v is not None}
    return base.model_copy(update=clean) if clean else base


SECRETS = frozenset({"qdrant_api_key", "api_key"})  # shown as set or not, never their values


def settings_sources(settings: Settings | None = None) -> dict[str, tuple[Any, str]]:
    """Each platform setting's value and where it came from: ``env WHERECNN_<NAME>``, the TOML file, or
    ``default`` (secrets as ``<set>``)."""
    import tomllib

    settings = settings or get_settings()
    path = _toml_path()
    in_toml = tomllib.loads(path.read_text()) if path is not None and path.exists() else {}
    env = {k.upper() for k in os.environ}
    out: dict[str, tuple[Any, str]] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name in SECRETS and value is not None:
            value = "<set>"
        var = f"WHERECNN_{name.upper()}"
        source = f"env {var}" if var in env else (str(path) if name in in_toml else "default")
        out[name] = (value, source)
    return out


def reset_settings_cache() -> None:
    """For tests that change the environment."""
    _cached.cache_clear()
