"""Bytes by URI (plain paths, ``file://``, ``s3://bucket/key``) and safe image decoding.

Everything that reads an image or a manifest goes through here, so S3 settings (endpoint, region, the
``standard`` retry mode) and the image-safety rules (pixel limit checked before decoding, clear reasons for
broken files) live in one place.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np

if TYPE_CHECKING:
    from wherecnn.config import Settings

__all__ = [
    "ImageDecodeError",
    "StorageError",
    "S3Location",
    "parse_s3",
    "is_s3",
    "local_path",
    "read_bytes",
    "write_bytes",
    "exists",
    "list_uris",
    "join",
    "download_to",
    "decode_image",
    "load_image",
    "s3_client",
    "s3_endpoint",
    "arrow_fs",
]


class StorageError(OSError):
    """A URI could not be read, written or listed; the message names the URI."""


class ImageDecodeError(ValueError):
    """An image could not be decoded safely. ``name`` is the file/URI, ``reason`` says what is wrong."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"{name or '<image>'}: {reason}")


# --------------------------------------------------------------------------------------------- URIs


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_s3(uri: str | os.PathLike[str]) -> bool:
    return isinstance(uri, str) and uri.startswith("s3://")


def parse_s3(uri: str) -> S3Location:
    """``s3://bucket/key`` -> S3Location; the key may be empty (a bucket root prefix)."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return S3Location(bucket, key)


def local_path(uri: str | os.PathLike[str]) -> Path:
    """The filesystem path of a plain path or ``file://`` URI; raises for other schemes."""
    if isinstance(uri, os.PathLike):
        return Path(uri)
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URI with a remote host is not supported: {uri!r}")
        return Path(unquote(parsed.path))
    if "://" in uri:
        raise ValueError(f"unsupported URI scheme in {uri!r}: expected a path, file:// or s3://")
    return Path(uri)


def join(uri: str | os.PathLike[str], *parts: str) -> str:
    """Join path segments onto a URI, keeping its scheme (``s3://b/a`` + ``x`` -> ``s3://b/a/x``)."""
    base = os.fspath(uri)
    if is_s3(base) or base.startswith("file://"):
        out = base
        for part in parts:
            part = part.strip("/")
            if not part:
                continue
            out = out if out.endswith("/") else out + "/"
            out += part
        return out
    return str(Path(base).joinpath(*parts))


# --------------------------------------------------------------------------------------------- S3

_clients: dict[tuple[str | None, str, int], Any] = {}
_clients_lock = threading.Lock()


def s3_endpoint(settings: Settings | None = None) -> str | None:
    """The S3 endpoint (MinIO, moto) from the settings, else ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``;
    None = AWS."""
    from wherecnn.config import get_settings

    s = settings or get_settings()
    env = os.environ
    return s.s3_endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")


def _s3_settings() -> tuple[str | None, str, int]:
    from wherecnn.config import get_settings

    s = get_settings()
    region = s.s3_region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return s3_endpoint(s), region, int(s.s3_max_attempts)


def arrow_fs(uri: str, settings: Settings | None = None) -> tuple[Any, str]:
    """pyarrow filesystem + path for a URI (what pyarrow, Ray Data and Ray Train's ``storage_filesystem``
    take); S3 with the explicit endpoint where one is set."""
    import pyarrow.fs as pafs

    from wherecnn.config import get_settings

    if uri.startswith("s3://"):
        s = settings or get_settings()
        endpoint = s3_endpoint(s)
        kwargs: dict[str, Any] = {"region": s.s3_region}
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs["endpoint_override"] = parsed.netloc or parsed.path
            kwargs["scheme"] = parsed.scheme or "http"
        return pafs.S3FileSystem(**kwargs), uri[len("s3://") :]
    if uri.startswith("file://"):
        return pafs.LocalFileSystem(), urlparse(uri).path
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def s3_client(endpoint_url: str | None = None) -> Any:
    """A cached boto3 S3 client per (endpoint, region, attempts); credentials from the usual AWS chain.

    boto3 clients are thread-safe, so the validator's and the loaders' thread pools share one.
    """
    endpoint, region, attempts = _s3_settings()
    if endpoint_url is not None:
        endpoint = endpoint_url
    key = (endpoint, region, attempts)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"mode": "standard", "max_attempts": attempts},
                max_pool_connections=32,
                s3={"addressing_style": "path"} if endpoint else {},
            )
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint, region_name=region, config=config
            )
            _clients[key] = client
        return client


def _is_missing(exc: Exception) -> bool:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    return str(code) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


# --------------------------------------------------------------------------------------------- bytes


def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    """The whole object. FileNotFoundError when it does not exist (any scheme)."""
    if is_s3(uri):
        loc = parse_s3(str(uri))
        try:
            resp = s3_client().get_object(Bucket=loc.bucket, Key=loc.key)
            return bytes(resp["Body"].read())
        except Exception as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"no such object: {uri}") from exc
            raise StorageError(f"cannot read {uri}: {exc}") from exc
    path = local_path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {uri}") from None
    except IsADirectoryError:
        raise StorageError(f"cannot read {uri}: it is a directory") from None


def write_bytes(uri: str | os.PathLike[str], data: bytes) -> None:
    """Write atomically for local files (temp file + rename), one PUT for S3."""
    if is_s3(uri):
        loc = parse_s3(str(uri))
        if not loc.key:
            raise ValueError(f"cannot write to a bucket root: {uri}")
        try:
            s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
        except Exception as exc:
            raise StorageError(f"cannot write {uri}: {exc}") from exc
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def exists(uri: str | os.PathLike[str]) -> bool:
    """True for an existing file/object (a local directory counts; an S3 prefix does not)."""
    if is_s3(uri):
        loc = parse_s3(str(uri))
        if not loc.key:
            return False
        try:
            s3_client().head_object(Bucket=loc.bucket, Key=loc.key)
            return True
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise StorageError(f"cannot check {uri}: {exc}") from exc
    return local_path(uri).exists()


def list_uris(prefix: str | os.PathLike[str], *, suffixes: tuple[str, ...] | None = None) -> Iterator[str]:
    """Every object/file under a prefix or folder, recursively, sorted per page (S3) or fully (local).

    S3 listing uses the ``list_objects_v2`` paginator (1,000 keys a page), so it scales to any bucket.
    ``suffixes`` filters by case-insensitive file ending (e.g. ``(".png", ".jpg")``).
    """
    wanted = tuple(s.lower() for s in suffixes) if suffixes else None

    def keep(name: str) -> bool:
        return wanted is None or name.lower().endswith(wanted)

    if is_s3(prefix):
        loc = parse_s3(str(prefix))
        paginator = s3_client().get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.key):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if not key.endswith("/") and keep(key):
                        yield f"s3://{loc.bucket}/{key}"
        except Exception as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"no such bucket: {prefix}") from exc
            raise StorageError(f"cannot list {prefix}: {exc}") from exc
        return
    root = local_path(prefix)
    as_file_uri = isinstance(prefix, str) and prefix.startswith("file://")
    if root.is_file():
        if keep(root.name):
            yield prefix if isinstance(prefix, str) else str(root)
        return
    if not root.exists():
        raise FileNotFoundError(f"no such folder: {prefix}")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith(".") or not keep(name):
                continue
            path = Path(dirpath) / name
            yield path.as_uri() if as_file_uri else str(path)


def download_to(uri: str | os.PathLike[str], local: str | os.PathLike[str]) -> Path:
    """Copy an object to a local file (for libraries that need a path, e.g. parquet readers, rasterio)."""
    dest = Path(local)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if is_s3(uri):
        loc = parse_s3(str(uri))
        try:
            s3_client().download_file(loc.bucket, loc.key, str(dest))
        except Exception as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"no such object: {uri}") from exc
            raise StorageError(f"cannot download {uri}: {exc}") from exc
        return dest
    src = local_path(uri)
    if not src.exists():
        raise FileNotFoundError(f"no such file: {uri}")
    shutil.copyfile(src, dest)
    return dest


# --------------------------------------------------------------------------------------------- images


_pil_open_lock = threading.Lock()


def _max_pixels_default() -> int:
    from wherecnn.config import get_settings

    return int(get_settings().max_image_pixels)


def decode_image(
    data: bytes, *, max_pixels: int | None = None, name: str = "", max_side: int | None = None
) -> np.ndarray:
    """Bytes -> H x W x 3 uint8 RGB, EXIF-transposed; with ``max_side``, no side longer than that (a JPEG
    is decoded at a reduced scale to begin with, so a large photo never occupies its full size in memory).

    Safety first: the size is read from the header and checked against ``max_pixels`` (default
    ``settings.max_image_pixels``) before any pixel is decoded, so a decompression bomb costs nothing.
    Conversions: grayscale, palette, CMYK, 16-bit and float images become 8-bit RGB; alpha is composited on
    white (transparent areas of aerial tiles read as blank, not black).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if data is None or len(data) == 0:
        raise ImageDecodeError(name, "zero-byte file (empty image data)")
    limit = _max_pixels_default() if max_pixels is None else int(max_pixels)
    try:
        # Header only: PIL's own bomb check is switched off for this call because ours (below) replaces it
        # with a configurable limit and a clearer message.
        with _pil_open_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                img = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        head = data[:16]
        raise ImageDecodeError(
            name, f"not an image (unrecognised format; first bytes {head!r}, {len(data)} bytes)"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(name, f"image too large: {exc}") from None
    except Exception as exc:  # corrupt headers
        raise ImageDecodeError(name, f"unreadable image header: {exc}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(name, f"invalid image size {width}x{height}")
    if width * height > limit:
        raise ImageDecodeError(
            name,
            f"image too large: {width}x{height} = {width * height:,} pixels exceeds the limit of {limit:,} "
            "(settings.max_image_pixels / WHERECNN_MAX_IMAGE_PIXELS)",
        )
    fmt = img.format or "unknown"
    try:
        if max_side is not None and max(width, height) > max_side:
            img.draft("RGB", (max_side, max_side))  # JPEG: DCT scaling to the smallest size >= the request
        img.load()
        img = ImageOps.exif_transpose(img) or img
        if max_side is not None and max(img.size) > max_side:
            img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc)
        if "truncated" in msg.lower() or "end of file" in msg.lower() or isinstance(exc, EOFError):
            raise ImageDecodeError(name, f"truncated {fmt} file ({len(data)} bytes): {msg}") from None
        raise ImageDecodeError(name, f"corrupt {fmt} data: {msg}") from None
    return _to_rgb_array(img, name)


def _to_rgb_array(img: Any, name: str) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        arr = np.asarray(rgba, dtype=np.float32)
        alpha = arr[..., 3:4] / 255.0
        rgb = arr[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    if mode == "CMYK":
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        arr = arr.astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        scale = (hi - lo) or 1.0
        gray = np.clip(np.rint((np.nan_to_num(arr, nan=lo) - lo) / scale * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("L", "1", "YCbCr", "LAB", "HSV"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(name, f"unsupported image mode {mode!r}: {exc}") from None


def load_image(uri: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """Read and decode; errors name the URI (FileNotFoundError, ImageDecodeError)."""
    name = os.fspath(uri)
    return decode_image(read_bytes(uri), max_pixels=max_pixels, name=name)
