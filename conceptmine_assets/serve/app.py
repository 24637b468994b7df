"""The Starlette application of ``conceptmine serve``: JSON endpoints, crop images, the page.

| endpoint | what |
|---|---|
| ``GET /`` | the explorer page (``static/``) |
| ``GET /api/health`` | store, search mode, index build |
| ``GET /api/facets`` | the values of every grid filter, with counts |
| ``GET /api/crops?group=&class=&concept=&scene=&reason=&detector=&limit=&cursor=`` | a page of crops |
| ``GET /api/crops/{scene}/{id}`` | a crop's detail: caption, concept scores, outliers, LiDAR, why mined or not |
| ``GET /api/crops/{scene}/{id}/image`` | the stored crop JPEG |
| ``GET /api/crops/{scene}/{id}/frame`` | the camera frame, every box drawn, this one highlighted |
| ``GET /api/crops/{scene}/{id}/similar?k=`` | "more like this" through the search index |
| ``GET /api/search?q=&k=`` | free-text search (as ``conceptmine search``) |
| ``GET /api/sql?q=`` or ``POST /api/sql`` ``{"sql": ...}`` | read-only SQL over the store's views |
| ``GET /api/split?reason=&limit=&offset=`` | the mined split with reasons |
| ``GET /api/reviews``, ``POST /api/reviews`` | the effective reviews; add a batch of reviews |

Bad input is a 4xx JSON ``{"error": "..."}`` naming the parameter or id; nothing is changed.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.serve import browse, similar
from conceptmine_assets.serve import reviews as review_api
from conceptmine_assets.serve.frame import frame_jpeg
from conceptmine_assets.serve.sql import run_sql
from conceptmine_assets.serve.store import ApiError, StoreReader, bad_request, not_found

log = logging.getLogger("conceptmine.serve")
STATIC = resources.files("conceptmine_assets.serve") / "static"


class Explorer:
    """What the endpoints share: the store reader, the held index, the query encoder, settings."""

    def __init__(self, store: str, encoder, dataroot: str | None = None):
        self.reader = StoreReader(store)
        self.held = similar.HeldIndex(self.reader)
        self.encoder = encoder
        self.dataroot = dataroot

    def facets(self) -> dict[str, Any]:
        return browse.facets(self.reader)  # each facet cached until its asset's files change


def _params(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        raise bad_request(f"unknown parameter {unknown[0]!r}; this endpoint takes {', '.join(allowed) or 'none'}")
    return dict(request.query_params)


def _explorer(request: Request) -> Explorer:
    return request.app.state.explorer


async def _json(request: Request, fn, *args) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(fn, *args))


async def page(request: Request) -> Response:
    return FileResponse(str(STATIC / "index.html"), media_type="text/html")


async def health(request: Request) -> JSONResponse:
    ex = _explorer(request)

    def body() -> dict[str, Any]:
        try:
            manifest = ex.held.load().manifest
            index = {"modes": sorted(manifest["modes"]), "reloads": ex.held.reloads}
        except ConceptmineError as exc:
            index = {"error": str(exc)}
        return {"store": ex.reader.base_path, "encoder": getattr(ex.encoder, "backend", type(ex.encoder).__name__),
                "index": index}

    return await _json(request, body)


async def facets(request: Request) -> JSONResponse:
    _params(request, ())
    return await _json(request, _explorer(request).facets)


async def crops(request: Request) -> JSONResponse:
    ex = _explorer(request)
    params = _params(request, (*browse.FILTERS, "limit", "cursor"))

    def body() -> dict[str, Any]:
        where = browse.parse_filter(ex.reader, params)
        limit, cursor = browse.parse_limit(params.get("limit")), browse.parse_cursor(params.get("cursor"))
        return browse.crop_page(ex.reader, where, limit, cursor)

    return await _json(request, body)


def _key(request: Request) -> tuple[str, str]:
    return request.path_params["scene"], request.path_params["detection_id"]


async def crop_detail(request: Request) -> JSONResponse:
    ex = _explorer(request)
    _params(request, ())

    def body() -> dict[str, Any]:
        detail = browse.crop_detail(ex.reader, *_key(request))
        detail["review"] = review_api.review_of(ex.reader, detail["crop"])
        return detail

    return await _json(request, body)


async def crop_image(request: Request) -> Response:
    ex = _explorer(request)
    _params(request, ())
    scene, detection_id = _key(request)

    def body() -> bytes:
        ex.reader.require_scene(scene)
        src = ex.reader.source("crops", [scene])
        df = ex.reader.query(f"SELECT image_jpeg FROM {src} WHERE detection_id = ?", [detection_id])
        if df.empty:
            raise not_found(f"unknown crop id {detection_id!r} in scene {scene!r}")
        return bytes(df["image_jpeg"].iloc[0])

    data = await run_in_threadpool(body)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=60"})


async def crop_frame(request: Request) -> Response:
    ex = _explorer(request)
    _params(request, ())

    def body() -> bytes:
        crop = browse.require_crop(ex.reader, *_key(request))
        return frame_jpeg(ex.reader, ex.dataroot, crop)

    return Response(await run_in_threadpool(body), media_type="image/jpeg")


async def crop_similar(request: Request) -> JSONResponse:
    ex = _explorer(request)
    params = _params(request, ("k",))

    def body() -> dict[str, Any]:
        k = similar.parse_k(params.get("k"))
        crop = browse.require_crop(ex.reader, *_key(request))
        return similar.more_like_this(ex.held, ex.reader, crop, k)

    return await _json(request, body)


async def search(request: Request) -> JSONResponse:
    ex = _explorer(request)
    params = _params(request, ("q", "k"))

    def body() -> dict[str, Any]:
        return similar.search(ex.held, ex.encoder, params.get("q", ""), similar.parse_k(params.get("k")))

    return await _json(request, body)


async def sql(request: Request) -> JSONResponse:
    ex = _explorer(request)
    if request.method == "POST":
        payload = await _body(request)
        text = payload.get("sql") if isinstance(payload, dict) else None
    else:
        text = _params(request, ("q",)).get("q")
    if not isinstance(text, str) or not text.strip():
        raise bad_request('no SQL given: GET /api/sql?q=SELECT... or POST {"sql": "SELECT ..."}')

    return await _json(request, run_sql, ex.reader, text)


async def split(request: Request) -> JSONResponse:
    ex = _explorer(request)
    params = _params(request, ("reason", "limit", "offset"))

    def body() -> dict[str, Any]:
        reason = params.get("reason") or None
        known = browse.facet(ex.reader, "reason")
        if reason is not None and reason not in known:
            raise bad_request(f"bad filter reason={reason!r}: not one of the stored reasons ({', '.join(known)})")
        offset = params.get("offset", "0")
        if not offset.isdigit():
            raise bad_request(f"offset={offset!r} is not a whole number >= 0")
        return browse.split_page(ex.reader, reason, browse.parse_limit(params.get("limit"), 100), int(offset))

    return await _json(request, body)


async def reviews(request: Request) -> JSONResponse:
    """GET: the effective review of every reviewed crop or sample; POST: add a batch."""
    ex = _explorer(request)
    if request.method == "GET":
        _params(request, ())
        return await _json(request, review_api.effective, ex.reader)
    payload = await _body(request)
    written = await run_in_threadpool(review_api.add, ex.reader, payload)
    return JSONResponse(written, status_code=201)


async def _body(request: Request) -> Any:
    import json

    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        raise bad_request(f"the request body is not JSON: {exc}") from None


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def known_error(request: Request, exc: ConceptmineError) -> JSONResponse:
    return JSONResponse({"error": str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__},
                        status_code=400)


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    return JSONResponse({"error": f"unexpected {type(exc).__name__}: {str(exc).strip()[:300]}"}, status_code=500)


async def missing(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": f"no such endpoint: {request.method} {request.url.path} (see /api/health)"},
                        status_code=getattr(exc, "status_code", 404))


def create_app(store: str, encoder, dataroot: str | None = None) -> Starlette:
    """The application over the store at ``store``; ``encoder`` encodes search queries
    (``resources/text_query.query_encoder``)."""
    routes = [
        Route("/", page),
        Route("/api/health", health),
        Route("/api/facets", facets),
        Route("/api/crops", crops),
        Route("/api/crops/{scene}/{detection_id}", crop_detail),
        Route("/api/crops/{scene}/{detection_id}/image", crop_image),
        Route("/api/crops/{scene}/{detection_id}/frame", crop_frame),
        Route("/api/crops/{scene}/{detection_id}/similar", crop_similar),
        Route("/api/search", search),
        Route("/api/sql", sql, methods=["GET", "POST"]),
        Route("/api/split", split),
        Route("/api/reviews", reviews, methods=["GET", "POST"]),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    handlers = {ApiError: api_error, ConceptmineError: known_error, 404: missing, 405: missing, Exception: unexpected}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.explorer = Explorer(store, encoder, dataroot)
    return app
