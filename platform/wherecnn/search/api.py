"""The HTTP search API (FastAPI): thin over `SearchEngine`, served by uvicorn or Ray Serve.

Every refusal is a 4xx JSON body `{"error": {"code", "message", "field"}}` naming the problem; unexpected
failures are logged server-side and answered with a generic 500 body, never a stack trace. Tile images are
resolved through the store's payload, so a request can never name a file path.

(No `from __future__ import annotations` here: FastAPI must see the closures' `Depends(...)` objects.)
"""

import base64
import io
import logging
import math
import re
import secrets
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException

from wherecnn.search.errors import BadParameterError, SearchInputError
from wherecnn.search.query import GeoPrior, check_k

log = logging.getLogger("wherecnn.search.api")

API_KEY_HEADER = "X-API-Key"
_TILE_ID_RE = re.compile(r"^[A-Za-z0-9_.:@+-]{1,200}$")
# Multipart framing on top of the file itself; the file's own size is checked exactly while reading.
_MULTIPART_SLACK = 64 * 1024


class ApiError(Exception):
    """A refusal with an HTTP status, a stable code and a message for the client."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


# An error message quotes at most this much of any input it echoes, and is at most MAX_MESSAGE long.
MAX_QUOTE = 40
MAX_MESSAGE = 500
_QUOTED = re.compile(f"'([^']{{{MAX_QUOTE}}})[^']+'|\"([^\"]{{{MAX_QUOTE}}})[^\"]+\"")
_TYPE_NAME = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")


def public_message(message: str) -> str:
    """A message fit to send back: quoted inputs cut to their first `MAX_QUOTE` characters, Python type reprs
    (``<class 'str'>``) reduced to their name, the whole capped at `MAX_MESSAGE`."""
    text = _TYPE_NAME.sub(r"\1", str(message))
    text = _QUOTED.sub(lambda m: f"'{m.group(1) or m.group(2)}…'", text)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _error(status: int, code: str, message: str, field: str | None = None, **headers: str) -> JSONResponse:
    short_field = None if field is None else public_message(field)[:MAX_QUOTE]
    body = {"error": {"code": code, "message": public_message(message), "field": short_field}}
    return JSONResponse(body, status_code=status, headers=headers or None)


class _EngineHolder:
    """Builds the engine on first use (model + store load lazily), so the app starts instantly and
    `/readyz` can say why it is not ready instead of the process dying."""

    def __init__(self, settings: Any, engine: Any) -> None:
        self.settings = settings
        self.engine = engine
        self.error: str | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Ray Serve ships the app to replicas: each replica loads its own engine, and locks don't pickle."""
        return {"settings": self.settings, "engine": None, "error": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def get(self) -> Any:
        if self.engine is not None:
            return self.engine
        with self._lock:
            if self.engine is None:
                from wherecnn.search.engine import SearchEngine

                try:
                    engine = SearchEngine.from_settings(self.settings)
                    engine.warm()  # the per-city state the first searches would build
                    self.engine = engine
                    self.error = None
                except Exception as exc:  # reported through /readyz and 503s; retried on the next request
                    self.error = f"{type(exc).__name__}: {exc}"
                    log.exception("search engine failed to load")
                    raise ApiError(503, "not_ready", f"search engine not ready: {self.error}") from None
        return self.engine


def _parse_float(name: str, value: str | None) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        out = float(value)
    except ValueError:
        raise BadParameterError(name, f"{value!r} is not a number") from None
    if not math.isfinite(out):
        raise BadParameterError(name, f"{value!r} is not a finite number")
    return out


def _parse_k(value: str | None) -> int:
    if value is None or str(value).strip() == "":
        return 10
    try:
        k = int(str(value).strip())
    except ValueError:
        raise BadParameterError("k", f"{value!r} is not an integer; expected 1..1000") from None
    return check_k(k)


def _parse_cities(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [c.strip() for v in values for c in str(v).split(",") if c.strip()]
    return out or None


def _parse_prior(lat: str | None, lon: str | None, radius_m: str | None, bbox: str | None) -> GeoPrior | None:
    flat, flon, frad = _parse_float("lat", lat), _parse_float("lon", lon), _parse_float("radius_m", radius_m)
    given = [v is not None for v in (flat, flon, frad)]
    if bbox is not None and bbox.strip():
        if any(given):
            raise BadParameterError("bbox", "give either bbox or lat+lon+radius_m, not both")
        return GeoPrior.parse_bbox(bbox)
    if not any(given):
        return None
    if not all(given):
        missing = [n for n, g in zip(("lat", "lon", "radius_m"), given, strict=True) if not g]
        raise BadParameterError(missing[0], f"a radius prior needs lat, lon and radius_m; missing {missing}")
    return GeoPrior.circle(lat=flat, lon=flon, radius_m=frad)  # type: ignore[arg-type]


def create_app(settings: Any = None, engine: Any = None) -> FastAPI:
    """The search API. `engine` given (tests, benchmarks) → used as is; else built lazily from settings."""
    from wherecnn.config import get_settings

    settings = settings or get_settings()
    holder = _EngineHolder(settings, engine)
    app = FastAPI(
        title="wherecnn search API",
        version="1",
        description="Where was this ground photo taken? Ranked aerial-tile locations per city.",
    )
    app.state.holder = holder
    app.state.settings = settings

    api_key_header = APIKeyHeader(
        name=API_KEY_HEADER, auto_error=False, description="Required when configured."
    )

    def require_key(key: Annotated[str | None, Depends(api_key_header)]) -> None:
        expected = settings.api_key
        if expected and not (key and secrets.compare_digest(key.encode(), str(expected).encode())):
            raise ApiError(401, "unauthorized", f"missing or wrong {API_KEY_HEADER} header")

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "ApiKey"} if exc.status == 401 else {}
        return _error(exc.status, exc.code, exc.message, exc.field, **headers)

    @app.exception_handler(SearchInputError)
    async def _input_error(_: Request, exc: SearchInputError) -> JSONResponse:
        return _error(exc.status, exc.code, str(exc), exc.field)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        field = None
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "form")]
            field = field or (".".join(loc) or None)
            problems.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
        return _error(422, "invalid_request", "; ".join(problems) or "invalid request", field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal", "internal error; the server log has the details")

    @app.middleware("http")
    async def _upload_limit(request: Request, call_next: Any) -> Any:
        """Refuse an oversized body from its Content-Length before reading it."""
        length = request.headers.get("content-length")
        limit = int(settings.max_upload_bytes)
        if (
            request.method == "POST"
            and length
            and length.isdigit()
            and int(length) > limit + _MULTIPART_SLACK
        ):
            return _error(
                413,
                "upload_too_large",
                f"upload of {int(length):,} bytes exceeds the limit of {limit:,} bytes",
                "image",
            )
        return await call_next(request)

    @app.get("/healthz", tags=["ops"], summary="Liveness: the process answers.")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Readiness: model loaded and the index holds tiles.")
    def readyz() -> JSONResponse:
        try:
            eng = holder.get()
            cities = eng.cities()
        except ApiError as exc:
            return JSONResponse({"status": "not_ready", "reason": exc.message}, status_code=503)
        except Exception as exc:
            log.exception("readiness check failed")
            return JSONResponse({"status": "not_ready", "reason": type(exc).__name__}, status_code=503)
        if not cities:
            return JSONResponse(
                {"status": "not_ready", "reason": "the index holds no tiles; run `wherecnn index`"},
                status_code=503,
            )
        return JSONResponse(
            {"status": "ready", "cities": len(cities), "model": getattr(eng.embedder, "model_id", None)}
        )

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], tags=["search"])

    @v1.post("/search", summary="Rank locations for a ground photo.")
    def search(
        image: Annotated[
            UploadFile, File(description="The ground photo (JPEG/PNG/WebP); a panorama if ≥2:1.")
        ],
        city: Annotated[
            list[str] | None, Form(description="City to search; repeat or comma-separate.")
        ] = None,
        k: Annotated[str | None, Form(description="Results per city, 1..1000 (default 10).")] = None,
        lat: Annotated[str | None, Form(description="Prior centre latitude (with lon, radius_m).")] = None,
        lon: Annotated[str | None, Form(description="Prior centre longitude.")] = None,
        radius_m: Annotated[str | None, Form(description="Prior radius in metres.")] = None,
        bbox: Annotated[str | None, Form(description="Prior box: min_lon,min_lat,max_lon,max_lat.")] = None,
        heading_deg: Annotated[str | None, Form(description="Camera heading, degrees from north.")] = None,
        fov_deg: Annotated[str | None, Form(description="Field of view; 360 = panorama.")] = None,
        heatmap: Annotated[
            str | None, Form(description="City name (or 'best') to add a heat map for.")
        ] = None,
    ) -> dict[str, Any]:
        limit = int(settings.max_upload_bytes)
        data = image.file.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, "upload_too_large", f"upload exceeds the limit of {limit:,} bytes", "image")
        kk = _parse_k(k)
        prior = _parse_prior(lat, lon, radius_m, bbox)
        heading = _parse_float("heading_deg", heading_deg)
        fov = _parse_float("fov_deg", fov_deg)
        eng = holder.get()
        result = eng.search(
            data, cities=_parse_cities(city), k=kk, prior=prior, heading_deg=heading, fov_deg=fov
        )
        rows = []
        for row in result.records():
            row.pop("uri", None)  # server-side location; clients fetch through image_url
            row["image_url"] = f"/v1/tiles/{row['tile_id']}/image"
            rows.append(row)
        body: dict[str, Any] = {
            "results": rows,
            "best": result.best.as_dict() if result.best else None,
            "timings": result.timings,
            "query": result.query,
        }
        if heatmap:
            target = result.best.city if heatmap == "best" and result.best else heatmap
            if target != "best":
                vector = eng.embed_for_heatmap(data, heading_deg=heading, fov_deg=fov)
                hm = eng.heatmap(vector, target)
                body["heatmap"] = {
                    "city": hm.city,
                    "bounds": hm.bounds._asdict(),
                    "step_m": hm.step_m,
                    "png_base64": base64.b64encode(hm.to_png()).decode("ascii"),
                }
        return body

    @v1.get("/cities", summary="Cities in the index with tile counts and bounds.")
    def cities() -> dict[str, Any]:
        return {"cities": [c.as_dict() for c in holder.get().city_info()]}

    @v1.get(
        "/tiles/{tile_id}/image",
        summary="A tile's aerial image, looked up through the index.",
        responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}},
    )
    def tile_image(tile_id: str) -> Response:
        if not _TILE_ID_RE.match(tile_id):
            raise ApiError(
                422, "bad_parameter", "tile_id may hold letters, digits and _.:@+- only", "tile_id"
            )
        payload = holder.get().tile_payload(tile_id)
        if not payload or not payload.get("uri"):
            raise ApiError(404, "unknown_tile", f"no tile {tile_id!r} in the index", "tile_id")
        return _image_response(str(payload["uri"]), tile_id)

    app.include_router(v1)
    return app


def _image_response(uri: str, tile_id: str) -> Response:
    from PIL import Image

    from wherecnn import storage

    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise ApiError(
            404, "tile_image_missing", f"the image of tile {tile_id!r} is missing from storage", "tile_id"
        ) from None
    media = {b"\xff\xd8\xff": "image/jpeg", b"\x89PN": "image/png"}.get(data[:3])
    if media is None:
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            media = "image/webp"
        else:  # a GeoTIFF or other format browsers cannot show: re-encode as PNG
            try:
                arr = storage.decode_image(data, name=tile_id)
            except storage.ImageDecodeError:
                raise ApiError(
                    410,
                    "tile_image_unreadable",
                    f"the image of tile {tile_id!r} is no longer a readable image (changed after indexing); "
                    "reindex to refresh the tile",
                    "tile_id",
                ) from None
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            data, media = buf.getvalue(), "image/png"
    return Response(content=data, media_type=media, headers={"Cache-Control": "public, max-age=3600"})


__all__ = ["API_KEY_HEADER", "ApiError", "create_app"]
