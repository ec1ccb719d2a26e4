"""The HTTP side of ``bsmamba2 serve``: a Starlette app over a :class:`JobQueue`.

One plain page (``static/``, no CDN, no build step) talks to a small JSON API. The page
creates a job with its options, sends each file as the raw body of its own request
(streamed into the job's folder, within the size limit), starts the job and polls it.
Requests that change anything must carry the ``X-BSMamba2`` header: a browser sends a
custom header across origins only after a CORS preflight this app never grants, so another
web site cannot drive the server (CSRF); the Host header is checked against the names the
server listens on (DNS rebinding). URLs name jobs by random id and stems by name; no part
of a URL or an upload's name is ever used as a path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator
from importlib import resources

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bsmamba2.audio.io import AUDIO_SUFFIXES, BIT_DEPTHS, DEFAULT_BITRATES, FORMATS, LOSSY
from bsmamba2.errors import EXTRAS
from bsmamba2.web.errors import JobError
from bsmamba2.web.jobs import JobQueue

log = logging.getLogger("bsmamba2.serve")
CSRF_HEADER = "x-bsmamba2"
LOCAL_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg"}
MEDIA_TYPES["opus"] = MEDIA_TYPES["ogg"]  # Opus in an Ogg container


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(jobs: JobQueue, allowed_hosts: list[str] | None = None) -> Starlette:
    """The app serving ``jobs``; ``allowed_hosts`` the Host names accepted (None: any)."""
    models = jobs.models
    static = resources.files("bsmamba2.web") / "static"

    def job_of(request: Request):
        return jobs.get(request.path_params["job"])

    async def page(request: Request) -> Response:
        return FileResponse(static / "index.html", media_type="text/html")

    async def info(request: Request) -> Response:
        limits = jobs.limits
        return JSONResponse(
            {
                "model": models.default,
                "models": models.describe(),
                "device": str(models.device),
                "stems": list(models.choice(models.default).outputs),
                "formats": list(FORMATS),
                "bit_depths": list(BIT_DEPTHS),
                "bit_depth_formats": [f for f in FORMATS if f not in LOSSY],
                "bitrate_formats": list(DEFAULT_BITRATES),
                "tta": models.tta,
                "picture": all(importlib.util.find_spec(m) is not None for m in EXTRAS["plot"]),
                "tta_choice": models.tta_choice,
                "suffixes": sorted(AUDIO_SUFFIXES),
                "limits": {
                    "max_bytes": limits.max_bytes,
                    "max_seconds": limits.max_seconds,
                    "max_files": limits.max_files,
                    "keep_seconds": limits.keep_seconds,
                },
            }
        )

    async def create(request: Request) -> Response:
        try:
            options = await request.json()
        except ValueError:
            options = None
        if not isinstance(options, dict):
            raise JobError("expected a JSON object of options")
        job = jobs.create(options)
        return JSONResponse(jobs.state(job), status_code=201)

    async def upload(request: Request) -> Response:
        job = job_of(request)
        receiving = jobs.upload(job, request.query_params.get("name", ""))
        try:
            async for chunk in request.stream():
                receiving.write(chunk)
        except ClientDisconnect:
            receiving.discard()
            return Response(status_code=400)
        entry = await run_in_threadpool(receiving.finish)
        return JSONResponse(entry.state(), status_code=201)

    async def start(request: Request) -> Response:
        job = job_of(request)
        jobs.start(job)
        return JSONResponse(jobs.state(job))

    async def status(request: Request) -> Response:
        return JSONResponse(jobs.state(job_of(request)))

    async def delete(request: Request) -> Response:
        jobs.remove(job_of(request), "deleted from the page")
        return Response(status_code=204)

    async def stem(request: Request) -> Response:
        job = job_of(request)
        path, name = jobs.output(job, int(request.path_params["index"]), request.path_params["stem"])
        attachment = request.query_params.get("download") == "1"
        return FileResponse(
            path,
            filename=name,
            content_disposition_type="attachment" if attachment else "inline",
            media_type=MEDIA_TYPES[job.options.fmt],
        )

    async def peaks(request: Request) -> Response:
        return JSONResponse(job_of(request).file(int(request.path_params["index"])).peaks)

    async def picture(request: Request) -> Response:
        entry = job_of(request).file(int(request.path_params["index"]))
        if entry.picture is None:
            raise JobError("no picture for this file", 404)
        return FileResponse(entry.picture, media_type="image/png")

    async def archive(request: Request) -> Response:
        job = job_of(request)
        path, name = await run_in_threadpool(jobs.archive, job)
        # Downloaded means done with: the job's folder goes once the zip has been sent.
        return FileResponse(
            path,
            filename=name,
            media_type="application/zip",
            background=BackgroundTask(jobs.remove, job, "zip downloaded"),
        )

    async def refuse(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, JobError)
        log.warning("refused %s %s: %s", request.method, request.url.path, exc)
        return _error(str(exc), exc.status)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(jobs.close)

    job_url = "/api/jobs/{job:str}"
    file_url = job_url + "/files/{index:int}"
    routes = [
        Route("/", page),
        Route("/api/info", info),
        Route("/api/jobs", create, methods=["POST"]),
        Route(job_url, status, methods=["GET"]),
        Route(job_url, delete, methods=["DELETE"]),
        Route(job_url + "/files", upload, methods=["PUT"]),
        Route(job_url + "/start", start, methods=["POST"]),
        Route(job_url + "/zip", archive),
        Route(file_url + "/stems/{stem:str}", stem),
        Route(file_url + "/peaks", peaks),
        Route(file_url + "/picture", picture),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]
    middleware = [
        Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["*"]),
        Middleware(_SameOrigin),
    ]
    return Starlette(
        routes=routes, middleware=middleware, exception_handlers={JobError: refuse}, lifespan=lifespan
    )


class _SameOrigin:
    """ASGI middleware: a request that changes something needs :data:`CSRF_HEADER`, and a
    browser's ``Origin`` (when sent) must be this server."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            origin, host = headers.get("origin"), headers.get("host", "")
            reason = None
            if CSRF_HEADER not in headers:
                reason = f"missing the {CSRF_HEADER} header"
            elif origin and origin.split("://", 1)[-1] != host:
                reason = f"origin {origin} is not this server"
            if reason:
                log.warning("refused %s %s: %s", scope["method"], scope["path"], reason)
                await _error(f"forbidden: {reason}", 403)(scope, receive, send)
                return
        await self.app(scope, receive, send)
