"""Query-side input handling: turning bytes / a path / an array into the RGB array the model saw in training,
and the geo prior a search may carry.

Decoding goes through `wherecnn.storage.decode_image` (EXIF transpose, RGB, pixel limit) so a query is
preprocessed exactly as the training images were; the header is checked first so a decompression bomb is
refused before any pixel is decoded.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from wherecnn.search.errors import BadParameterError, ImageTooLargeError, NotAnImageError, SearchInputError

ImageInput = bytes | bytearray | memoryview | str | Path | np.ndarray

# A ground image at least twice as wide as tall is a panorama, as the Embedder and training decide.
PANORAMA_MIN_ASPECT = 2.0
DEFAULT_PHOTO_FOV_DEG = 90.0
MAX_K = 1000
MAX_RADIUS_M = 1_000_000.0
# A query is decoded to at most this many pixels a side (the models see 256 or fewer): a 6000 x 6000 upload
# costs what a 2048 x 2048 one does.
QUERY_MAX_SIDE = 2048


def image_size_from_header(data: bytes, *, name: str = "image") -> tuple[int, int]:
    """(width, height) from the header only; raises NotAnImageError when the bytes are not an image."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise NotAnImageError(name, "empty upload; expected JPEG/PNG/WebP image bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(name, f"image is a decompression bomb ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise NotAnImageError(
            name, "not a decodable image; expected JPEG, PNG, WebP, TIFF or BMP bytes"
        ) from None


def decode_query(data: bytes, *, max_pixels: int | None, name: str = "image") -> np.ndarray:
    """Bytes → H×W×3 uint8 RGB (EXIF-transposed), refusing non-images and images over `max_pixels`."""
    from wherecnn.storage import ImageDecodeError, decode_image

    width, height = image_size_from_header(bytes(data), name=name)
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            name, f"{width}×{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} pixels"
        )
    try:
        return decode_image(bytes(data), max_pixels=max_pixels, name=name, max_side=QUERY_MAX_SIDE)
    except ImageDecodeError as exc:
        raise NotAnImageError(name, str(exc)) from None


def load_query(image: Any, *, max_pixels: int | None, name: str = "image") -> np.ndarray:
    """Any accepted input (bytes, a path/URI, an array, a PIL image) → H×W×3 uint8 RGB."""
    if isinstance(image, bytes | bytearray | memoryview):
        return decode_query(bytes(image), max_pixels=max_pixels, name=name)
    if isinstance(image, str | Path):
        from wherecnn import storage

        uri = str(image)
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            raise SearchInputError(name, f"no such file: {uri}") from None
        except (IsADirectoryError, storage.StorageError) as exc:
            raise SearchInputError(name, f"cannot read {uri}: {exc}") from None
        return decode_query(data, max_pixels=max_pixels, name=uri)
    if isinstance(image, np.ndarray):
        return _check_array(image, max_pixels=max_pixels, name=name)
    try:  # a PIL image, without importing PIL for everyone else
        from PIL import Image, ImageOps

        if isinstance(image, Image.Image):
            return _check_array(np.asarray(ImageOps.exif_transpose(image).convert("RGB")), max_pixels, name)
    except ImportError:  # pragma: no cover - pillow is a dependency
        pass
    raise NotAnImageError(
        name, f"unsupported input type {type(image).__name__}; expected bytes, a path or an array"
    )


def _check_array(arr: np.ndarray, max_pixels: int | None, name: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise NotAnImageError(name, f"array of shape {arr.shape}; expected H×W×3 (RGB) or H×W×4 (RGBA)")
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise NotAnImageError(name, f"array of shape {arr.shape} is too small to be an image")
    pixels = int(arr.shape[0]) * int(arr.shape[1])
    if max_pixels is not None and pixels > max_pixels:
        raise ImageTooLargeError(name, f"{pixels:,} pixels exceeds the limit of {max_pixels:,} pixels")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and float(np.nanmax(arr)) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def infer_fov(image: np.ndarray, fov_deg: float | None) -> float:
    """A panorama (360°) or a limited-FOV photo: explicit `fov_deg` wins, else the aspect ratio decides."""
    if fov_deg is not None:
        if not (math.isfinite(fov_deg) and 0 < fov_deg <= 360):
            raise BadParameterError("fov_deg", f"{fov_deg} is not in (0, 360]")
        return float(fov_deg)
    h, w = image.shape[:2]
    return 360.0 if w / max(h, 1) >= PANORAMA_MIN_ASPECT else DEFAULT_PHOTO_FOV_DEG


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise BadParameterError("k", f"{k!r} is not an integer; expected 1..{MAX_K}")
    if not 1 <= int(k) <= MAX_K:
        raise BadParameterError("k", f"{k} is out of range; expected 1..{MAX_K}")
    return int(k)


def _check_lat_lon(lat: float, lon: float, field_prefix: str = "") -> None:
    if not (isinstance(lat, int | float) and math.isfinite(lat) and -90 <= lat <= 90):
        raise BadParameterError(f"{field_prefix}lat", f"{lat!r} is not a latitude in [-90, 90]")
    if not (isinstance(lon, int | float) and math.isfinite(lon) and -180 <= lon <= 180):
        raise BadParameterError(f"{field_prefix}lon", f"{lon!r} is not a longitude in [-180, 180]")


@dataclass(frozen=True)
class GeoPrior:
    """Where the photo is believed to be; pushed down to the store as a filter, not applied after the fact.

    Build with `GeoPrior.circle(lat=, lon=, radius_m=)`,
    `GeoPrior.box(min_lat=, min_lon=, max_lat=, max_lon=)`
    or `GeoPrior.polygon([(lat, lon), ...])`.
    """

    kind: Literal["radius", "bbox", "polygon"]
    lat: float | None = None
    lon: float | None = None
    radius_m: float | None = None
    min_lat: float | None = None
    min_lon: float | None = None
    max_lat: float | None = None
    max_lon: float | None = None
    points: tuple[tuple[float, float], ...] = field(default_factory=tuple)

    @classmethod
    def circle(cls, *, lat: float, lon: float, radius_m: float) -> GeoPrior:
        _check_lat_lon(lat, lon)
        if not (
            isinstance(radius_m, int | float) and math.isfinite(radius_m) and 0 < radius_m <= MAX_RADIUS_M
        ):
            raise BadParameterError(
                "radius_m", f"{radius_m!r} is not a radius in metres in (0, {MAX_RADIUS_M:,.0f}]"
            )
        return cls("radius", lat=float(lat), lon=float(lon), radius_m=float(radius_m))

    @classmethod
    def box(cls, *, min_lat: float, min_lon: float, max_lat: float, max_lon: float) -> GeoPrior:
        _check_lat_lon(min_lat, min_lon, "bbox.min_")
        _check_lat_lon(max_lat, max_lon, "bbox.max_")
        if not (min_lat < max_lat and min_lon < max_lon):
            raise BadParameterError("bbox", "expected min_lon,min_lat,max_lon,max_lat with min < max")
        return cls(
            "bbox",
            min_lat=float(min_lat),
            min_lon=float(min_lon),
            max_lat=float(max_lat),
            max_lon=float(max_lon),
        )

    @classmethod
    def polygon(cls, points: Sequence[tuple[float, float]]) -> GeoPrior:
        pts = tuple((float(lat), float(lon)) for lat, lon in points)
        if len(pts) < 3:
            raise BadParameterError("polygon", f"{len(pts)} vertices; expected at least 3 (lat, lon) pairs")
        for lat, lon in pts:
            _check_lat_lon(lat, lon, "polygon.")
        return cls("polygon", points=pts)

    @classmethod
    def parse_bbox(cls, text: str) -> GeoPrior:
        """`min_lon,min_lat,max_lon,max_lat` (the GeoJSON / OGC order)."""
        parts = [p.strip() for p in str(text).split(",")]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 4:
            raise BadParameterError(
                "bbox", f"{text!r}; expected four numbers min_lon,min_lat,max_lon,max_lat"
            )
        min_lon, min_lat, max_lon, max_lat = values
        return cls.box(min_lat=min_lat, min_lon=min_lon, max_lat=max_lat, max_lon=max_lon)

    def store_filters(self) -> dict[str, Any]:
        """Keyword arguments for `VectorStore.query` (its own GeoRadius / GeoBBox types)."""
        from wherecnn.index.store import GeoBBox, GeoRadius

        if self.kind == "radius":
            return {"radius": GeoRadius(lat=self.lat, lon=self.lon, radius_m=self.radius_m)}
        if self.kind == "bbox":
            return {
                "bbox": GeoBBox(
                    min_lat=self.min_lat, min_lon=self.min_lon, max_lat=self.max_lat, max_lon=self.max_lon
                )
            }
        return {"polygon": list(self.points)}

    def contains(self, *, lat: float, lon: float) -> bool:
        """For checks and tests: does the prior admit this point? (The store does the real filtering.)"""
        if self.kind == "radius":
            from wherecnn.search.geoutil import distance_m

            return float(distance_m(lat1=self.lat, lon1=self.lon, lat2=lat, lon2=lon)) <= float(self.radius_m)
        if self.kind == "bbox":
            return self.min_lat <= lat <= self.max_lat and self.min_lon <= lon <= self.max_lon
        from shapely.geometry import Point, Polygon

        return Polygon([(lo, la) for la, lo in self.points]).covers(Point(lon, lat))

    def as_dict(self) -> dict[str, Any]:
        if self.kind == "radius":
            return {"kind": "radius", "lat": self.lat, "lon": self.lon, "radius_m": self.radius_m}
        if self.kind == "bbox":
            return {
                "kind": "bbox",
                "min_lat": self.min_lat,
                "min_lon": self.min_lon,
                "max_lat": self.max_lat,
                "max_lon": self.max_lon,
            }
        return {"kind": "polygon", "points": [list(p) for p in self.points]}
