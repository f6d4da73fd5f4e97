"""wherecnn.storage against local files and a moto S3 server on loopback; every image decode case."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from wherecnn import storage
from wherecnn.storage import ImageDecodeError


@pytest.fixture()
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh bucket on the loopback server; yields its s3:// root."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    client = storage.s3_client()
    name = f"bucket-{np.random.default_rng().integers(1 << 30)}"
    client.create_bucket(Bucket=name)
    yield f"s3://{name}"


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


# ------------------------------------------------------------------ URIs and local files


def test_join_keeps_scheme() -> None:
    assert storage.join("s3://b/a", "x", "y.png") == "s3://b/a/x/y.png"
    assert storage.join("s3://b/a/", "/x/") == "s3://b/a/x"
    assert storage.join("file:///tmp/a", "b") == "file:///tmp/a/b"
    assert storage.join("/tmp/a", "b", "c") == "/tmp/a/b/c"


def test_parse_s3_and_bad_schemes() -> None:
    loc = storage.parse_s3("s3://bucket/some/key.png")
    assert (loc.bucket, loc.key) == ("bucket", "some/key.png")
    with pytest.raises(ValueError, match="bucket"):
        storage.parse_s3("s3:///key")
    with pytest.raises(ValueError, match="scheme"):
        storage.read_bytes("gs://bucket/key")


def test_local_round_trip_plain_and_file_uri(tmp_path: Path) -> None:
    plain = str(tmp_path / "a" / "b.bin")
    storage.write_bytes(plain, b"hello")
    assert storage.read_bytes(plain) == b"hello"
    uri = (tmp_path / "a" / "b.bin").as_uri()
    assert uri.startswith("file://")
    assert storage.read_bytes(uri) == b"hello"
    assert storage.exists(uri) and storage.exists(plain)
    assert not storage.exists(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="nope"):
        storage.read_bytes(str(tmp_path / "nope"))
    storage.write_bytes(tmp_path / "a" / "c.png", b"x")
    assert list(storage.list_uris(str(tmp_path))) == [plain, str(tmp_path / "a" / "c.png")]
    assert list(storage.list_uris(str(tmp_path), suffixes=(".PNG",))) == [str(tmp_path / "a" / "c.png")]
    assert list(storage.list_uris(tmp_path.as_uri()))[0] == uri
    with pytest.raises(FileNotFoundError):
        list(storage.list_uris(str(tmp_path / "missing")))
    dest = storage.download_to(plain, tmp_path / "copy.bin")
    assert dest.read_bytes() == b"hello"


# ------------------------------------------------------------------ S3


def test_s3_round_trip(s3: str) -> None:
    uri = storage.join(s3, "dir", "obj.bin")
    payload = bytes(range(256)) * 10
    storage.write_bytes(uri, payload)
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == payload
    assert not storage.exists(storage.join(s3, "dir", "other.bin"))
    assert not storage.exists(storage.join(s3, "dir"))  # a prefix is not an object


def test_s3_missing_key_and_bucket(s3: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        storage.read_bytes(storage.join(s3, "missing.bin"))
    with pytest.raises(FileNotFoundError):
        storage.download_to(storage.join(s3, "missing.bin"), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="bucket"):
        list(storage.list_uris("s3://no-such-bucket-here/"))


def test_s3_listing_paginates_past_1000(s3: str) -> None:
    client = storage.s3_client()
    bucket = storage.parse_s3(s3).bucket
    keys = [f"tiles/t{i:05d}.png" for i in range(1_100)]

    def put(key: str) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=b"x")

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(put, keys))
    client.put_object(Bucket=bucket, Key="other/skip.png", Body=b"x")
    listed = list(storage.list_uris(storage.join(s3, "tiles/")))
    assert len(listed) == 1_100
    assert listed == [f"{s3}/{k}" for k in keys]
    assert len(list(storage.list_uris(s3, suffixes=(".png",)))) == 1_101


def test_s3_load_image_and_download(s3: str, tmp_path: Path) -> None:
    arr = np.random.default_rng(1).integers(0, 255, (12, 20, 3), dtype=np.uint8)
    uri = storage.join(s3, "img.png")
    storage.write_bytes(uri, _png(arr))
    np.testing.assert_array_equal(storage.load_image(uri), arr)
    local = storage.download_to(uri, tmp_path / "img.png")
    np.testing.assert_array_equal(storage.load_image(local), arr)


def test_s3_client_is_cached_and_uses_standard_retries(s3: str) -> None:
    a, b = storage.s3_client(), storage.s3_client()
    assert a is b
    assert a.meta.config.retries["mode"] == "standard"


# ------------------------------------------------------------------ image decoding


def test_decode_rgb_exact() -> None:
    arr = np.random.default_rng(0).integers(0, 255, (7, 9, 3), dtype=np.uint8)
    out = storage.decode_image(_png(arr))
    assert out.dtype == np.uint8 and out.shape == (7, 9, 3)
    np.testing.assert_array_equal(out, arr)


def test_zero_byte() -> None:
    with pytest.raises(ImageDecodeError, match="zero-byte") as info:
        storage.decode_image(b"", name="empty.jpg")
    assert info.value.name == "empty.jpg"
    assert "empty.jpg" in str(info.value)


def test_not_an_image() -> None:
    with pytest.raises(ImageDecodeError, match="not an image"):
        storage.decode_image(b"<html>definitely not a picture</html>", name="page.jpg")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(fmt: str) -> None:
    rng = np.random.default_rng(2)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    data = buf.getvalue()
    with pytest.raises(ImageDecodeError, match="truncated|corrupt"):
        storage.decode_image(data[: len(data) // 2], name=f"cut.{fmt.lower()}")


def test_huge_rejected_before_decoding() -> None:
    # A PNG header claiming 50000 x 50000 RGB (7.5 GB decoded) with almost no data: if the size were not
    # checked first, decoding would either allocate gigabytes or fail as "truncated".
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageDecodeError, match="too large") as info:
        storage.decode_image(data, max_pixels=1_000_000, name="bomb.png")
    assert "2,500,000,000" in info.value.reason and "1,000,000" in info.value.reason
    # the default limit (settings.max_image_pixels = 40M) applies as well
    with pytest.raises(ImageDecodeError, match="too large"):
        storage.decode_image(data, name="bomb.png")


def test_pixel_limit_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from wherecnn.config import reset_settings_cache

    monkeypatch.setenv("WHERECNN_MAX_IMAGE_PIXELS", "100")
    reset_settings_cache()
    try:
        data = _png(np.zeros((20, 20, 3), dtype=np.uint8))
        with pytest.raises(ImageDecodeError, match="exceeds the limit of 100"):
            storage.decode_image(data)
        assert storage.decode_image(data, max_pixels=400).shape == (20, 20, 3)
    finally:
        monkeypatch.delenv("WHERECNN_MAX_IMAGE_PIXELS")
        reset_settings_cache()


def test_cmyk_to_rgb() -> None:
    img = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # pure red in CMYK
    out = storage.decode_image(_jpeg(img, quality=100))
    assert out.shape == (6, 8, 3)
    r, g, b = out[3, 4].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_16bit_gray_scaled_to_8bit() -> None:
    arr = np.array([[0, 65535], [32768, 4096]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = storage.decode_image(buf.getvalue())
    assert out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [255, 255, 255]
    assert 126 <= out[1, 0, 0] <= 129


def test_alpha_composited_on_white() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red-ish
    rgba[:2, :, 3] = 255  # top half opaque
    rgba[2:, :, 3] = 0  # bottom half transparent
    out = storage.decode_image(_png(rgba, mode="RGBA"))
    assert out[0, 0].tolist() == [200, 0, 0]
    assert out[3, 0].tolist() == [255, 255, 255]


def test_half_alpha_blends() -> None:
    la = np.zeros((2, 2, 2), dtype=np.uint8)
    la[..., 1] = 128  # black at ~50% opacity over white -> mid gray
    out = storage.decode_image(_png(la, mode="LA"))
    assert 125 <= out[0, 0, 0] <= 129


def test_palette_and_grayscale() -> None:
    pal = Image.new("P", (3, 2))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    pal.putpixel((1, 1), 1)
    out = storage.decode_image(_save(pal, "PNG"))
    assert out[1, 1].tolist() == [10, 200, 30] and out[0, 0].tolist() == [0, 0, 0]
    gray = storage.decode_image(_png(np.full((3, 3), 77, dtype=np.uint8), mode="L"))
    assert gray.shape == (3, 3, 3) and (gray == 77).all()


def test_exif_orientation_applied() -> None:
    arr = np.zeros((10, 20, 3), dtype=np.uint8)  # wide image
    arr[:, :10] = (255, 0, 0)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    data = _jpeg(img, exif=exif.tobytes(), quality=95)
    out = storage.decode_image(data)
    assert out.shape == (20, 10, 3)  # displayed upright: tall


def _save(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_load_image_names_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="gone.png"):
        storage.load_image(str(tmp_path / "gone.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(ImageDecodeError, match="bad.png"):
        storage.load_image(str(bad))
