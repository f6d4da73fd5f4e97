"""The search API through FastAPI's TestClient: happy paths, every refusal, auth, and a parameter fuzz."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wherecnn.config import get_settings
from wherecnn.search.api import create_app

if TYPE_CHECKING:
    from wherecnn.search import SearchEngine

    from .conftest import TinyIndex


def client_for(engine: Any, **overrides: Any) -> TestClient:
    return TestClient(create_app(get_settings(**overrides), engine=engine), raise_server_exceptions=False)


@pytest.fixture()
def client(engine: SearchEngine) -> TestClient:
    return client_for(engine, api_key=None)


def post(client: TestClient, data: bytes, **form: Any) -> Any:
    return client.post("/v1/search", files={"image": ("q.png", data, "image/png")}, data=form)


def assert_error(resp: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code and err["message"]
    if field is not None:
        assert err["field"] == field
    assert "Traceback" not in resp.text and "<class" not in resp.text
    return err


def test_search_happy_path(client: TestClient, tiny_index: TinyIndex) -> None:
    t = tiny_index.tile("alpha-g0102")
    resp = post(client, tiny_index.png(t["image"]), city="alpha", k="3", heatmap="best")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [r["rank"] for r in body["results"]] == [1, 2, 3]
    top = body["results"][0]
    assert top["tile_id"] == "alpha-g0102" and top["city"] == "alpha"
    assert top["image_url"] == "/v1/tiles/alpha-g0102/image" and "uri" not in top
    assert body["best"]["tile_id"] == "alpha-g0102" and 0 <= body["best"]["confidence"] <= 1
    assert {"decode_ms", "embed_ms", "query_ms"} <= set(body["timings"])
    assert body["heatmap"]["city"] == "alpha"
    assert base64.b64decode(body["heatmap"]["png_base64"]).startswith(b"\x89PNG")
    image = client.get(top["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    with open(t["uri"], "rb") as fh:
        assert image.content == fh.read()


def test_cities_as_list_or_comma_list_and_prior(client: TestClient, tiny_index: TinyIndex) -> None:
    img = tiny_index.png(tiny_index.tile("beta-g0303")["image"])
    both = client.post(
        "/v1/search", files={"image": ("q.png", img)}, data={"city": ["alpha", "beta"], "k": "2"}
    )
    assert {r["city"] for r in both.json()["results"]} == {"alpha", "beta"}
    comma = post(client, img, city="alpha,beta", k="2")
    assert comma.json()["results"] == both.json()["results"]
    t = tiny_index.tile("beta-g0303")
    near = post(client, img, lat=str(t["lat"]), lon=str(t["lon"]), radius_m="30", k="10")
    assert [r["tile_id"] for r in near.json()["results"]] == ["beta-g0303"]
    box = f"{t['lon'] - 1e-5},{t['lat'] - 1e-5},{t['lon'] + 1e-5},{t['lat'] + 1e-5}"
    assert [r["tile_id"] for r in post(client, img, bbox=box).json()["results"]] == ["beta-g0303"]


def test_cities_health_ready_docs(client: TestClient) -> None:
    cities = client.get("/v1/cities").json()["cities"]
    assert {c["name"] for c in cities} == {"alpha", "beta"}
    assert all(c["tiles"] == 36 and c["bounds"]["min_lat"] < c["bounds"]["max_lat"] for c in cities)
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["cities"] == 2
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/search", "/v1/cities", "/v1/tiles/{tile_id}/image", "/healthz", "/readyz"} <= set(paths)


def test_not_an_image(client: TestClient) -> None:
    assert_error(post(client, b"GIF89a? no, just text"), 400, "not_an_image", "image")
    assert_error(post(client, b""), 400, "not_an_image", "image")


def test_too_large_by_bytes_and_by_pixels(engine: SearchEngine, tiny_index: TinyIndex) -> None:
    small_limit = client_for(engine, max_upload_bytes=20_000)
    noise = np.random.default_rng(0).integers(0, 256, size=(120, 120, 3), dtype=np.uint8)
    err = assert_error(post(small_limit, tiny_index.png(noise)), 413, "upload_too_large", "image")
    assert "20,000" in err["message"]
    huge = tiny_index.png(np.zeros((1100, 1000, 3), dtype=np.uint8))  # small file, 1.1 MP > engine's 1 MP
    err = assert_error(post(client_for(engine), huge), 413, "image_too_large", "image")
    assert "pixels" in err["message"]


def test_unknown_city_bad_k_bad_prior(client: TestClient, tiny_index: TinyIndex) -> None:
    img = tiny_index.png(tiny_index.pattern(3))
    err = assert_error(post(client, img, city="atlantis"), 422, "unknown_city", "city")
    assert "atlantis" in err["message"] and "alpha" in err["message"]
    for k in ("0", "-3", "1001", "ten", "2.5"):
        assert_error(post(client, img, k=k), 422, "bad_parameter", "k")
    for radius in ("0", "-1", "nan", "inf", "far", "5e7"):
        assert_error(
            post(client, img, lat="40", lon="-75", radius_m=radius), 422, "bad_parameter", "radius_m"
        )
    assert_error(post(client, img, lat="40", radius_m="100"), 422, "bad_parameter", "lon")
    assert_error(post(client, img, lat="95", lon="0", radius_m="100"), 422, "bad_parameter", "lat")
    assert_error(post(client, img, bbox="1,2,3"), 422, "bad_parameter", "bbox")
    assert_error(post(client, img, bbox="3,2,1,0"), 422, "bad_parameter", "bbox")
    assert_error(client.post("/v1/search", data={"k": "3"}), 422, "invalid_request", "image")


def test_error_messages_quote_only_a_short_prefix_of_the_input(
    client: TestClient, tiny_index: TinyIndex
) -> None:
    img = tiny_index.png(tiny_index.pattern(3))
    resp = post(client, img, city="z" * 100_000)
    err = assert_error(resp, 422, "unknown_city", "city")
    assert len(resp.content) < 1_000 and "z" * 40 in err["message"] and "z" * 41 not in err["message"]
    for name, value in (("k", "9" * 5_000 + "x"), ("lat", "n" * 5_000), ("bbox", "1," * 3_000)):
        resp = post(
            client, img, **({name: value, "lon": "0", "radius_m": "10"} if name == "lat" else {name: value})
        )
        assert_error(resp, 422, "bad_parameter", name)
        assert len(resp.content) < 1_000, name


def test_a_tile_whose_image_is_gone_or_unreadable_says_so(client: TestClient, tiny_index: TinyIndex) -> None:
    from pathlib import Path

    tile = tiny_index.tiles[0]
    path = Path(str(tile["uri"]).removeprefix("file://"))
    original = path.read_bytes()
    try:
        path.write_bytes(b"GIF89a, then junk that no decoder reads" * 4)
        err = assert_error(
            client.get(f"/v1/tiles/{tile['tile_id']}/image"), 410, "tile_image_unreadable", "tile_id"
        )
        assert "GIF89a" not in err["message"] and "junk" not in err["message"]
        path.unlink()
        assert_error(client.get(f"/v1/tiles/{tile['tile_id']}/image"), 404, "tile_image_missing", "tile_id")
    finally:
        path.write_bytes(original)
    assert client.get(f"/v1/tiles/{tile['tile_id']}/image").status_code == 200


def test_tile_lookup_never_takes_a_path(client: TestClient) -> None:
    assert_error(client.get("/v1/tiles/nope/image"), 404, "unknown_tile", "tile_id")
    for evil in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "a b"):
        resp = client.get(f"/v1/tiles/{evil}/image")
        assert 400 <= resp.status_code < 500 and "root:" not in resp.text


def test_api_key(engine: SearchEngine, tiny_index: TinyIndex) -> None:
    locked = client_for(engine, api_key="s3cret")
    assert_error(locked.get("/v1/cities"), 401, "unauthorized")
    assert_error(locked.get("/v1/cities", headers={"X-API-Key": "wrong"}), 401, "unauthorized")
    assert locked.get("/v1/cities", headers={"X-API-Key": "s3cret"}).status_code == 200
    img = tiny_index.png(tiny_index.pattern(5))
    assert_error(post(locked, img), 401, "unauthorized")
    assert locked.get("/healthz").status_code == 200


def test_internal_errors_hide_details(tiny_index: TinyIndex) -> None:
    class Exploding:
        embedder = None

        def cities(self) -> list[str]:
            return ["alpha"]

        def search(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("secret at /srv/private/db.key")

    client = client_for(Exploding())
    err = assert_error(post(client, tiny_index.png(tiny_index.pattern(1))), 500, "internal")
    assert "secret" not in err["message"] and "/srv" not in client.get("/healthz").text


def test_not_ready_without_index_or_checkpoint(tmp_path: Any, tiny_index: TinyIndex) -> None:
    client = client_for(None, store=f"edge://{tmp_path}/no-index", checkpoint=str(tmp_path / "no-ckpt"))
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "not_ready" and ready.json()["reason"]
    assert_error(post(client, tiny_index.png(tiny_index.pattern(1))), 503, "not_ready")
    assert client.get("/healthz").status_code == 200


text = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.integers(-5, 2000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    k=text,
    city=st.one_of(
        st.none(), st.sampled_from(["alpha", "beta", "alpha,beta", "x", ",", ""]), st.text(max_size=8)
    ),
    lat=text,
    lon=text,
    radius_m=text,
    bbox=st.one_of(st.none(), st.text(max_size=30)),
)
def test_fuzz_parameters_never_500(
    client: TestClient, tiny_index: TinyIndex, k: Any, city: Any, lat: Any, lon: Any, radius_m: Any, bbox: Any
) -> None:
    form = {
        n: v
        for n, v in dict(k=k, city=city, lat=lat, lon=lon, radius_m=radius_m, bbox=bbox).items()
        if v is not None
    }
    resp = post(client, tiny_index.png(tiny_index.pattern(2)), **form)
    assert resp.status_code == 200 or 400 <= resp.status_code < 500, resp.text
    if resp.status_code != 200:
        assert resp.json()["error"]["code"] in {"bad_parameter", "unknown_city", "invalid_request"}
    else:
        results = resp.json()["results"]
        assert all(1 <= r["rank"] <= 1000 for r in results)


def test_ray_serve_app_builds_and_pickles() -> None:
    """Ray ships the ingress class (with the FastAPI app inside) to replicas with cloudpickle."""
    import ray.cloudpickle as cloudpickle
    from wherecnn.search.serving import DEPLOYMENT_NAME, build_serve_app

    bound = build_serve_app(num_replicas=2)
    deployment = bound._bound_deployment
    assert deployment.name == DEPLOYMENT_NAME and deployment.num_replicas == 2
    cls = cloudpickle.loads(cloudpickle.dumps(deployment.func_or_class))
    assert cls.__name__ == "SearchAPI"
