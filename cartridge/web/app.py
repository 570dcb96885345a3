"""The web page's HTTP side (aiohttp): the page and its files, and three JSON routes.

    GET  /                 the page (HTML, JS and CSS served from `static/`: no CDN)
    GET  /api/overview     everything the overview and ratings table show (`Overview.gather`)
    GET  /api/ratings      the ratings table alone (`cartridge ratings --json`'s rows)
    POST /api/play         {"version", "sims", "moves"} -> the model's move (`ModelPlayer.move`)
A bad request is a 400 with `{"error": "<what is wrong>"}`; a store or database that is
away is a 503 saying which.
"""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

from aiohttp import web

from cartridge.ratings import rows_of
from cartridge.web.overview import Overview
from cartridge.web.play import BadRequest, ModelPlayer
from shared.model_store import StoreUnavailable
from shared.replay import ReplayUnavailable
from shared.retry import DependencyError

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 4096  # a move string and two numbers


def build_app(overview: Overview, player: ModelPlayer) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def get_overview(request: web.Request) -> web.Response:
        return web.json_response(await overview.gather())

    async def get_ratings(request: web.Request) -> web.Response:
        try:
            return web.json_response(await rows_of(overview.results, overview.config))
        except ReplayUnavailable as exc:
            return error(503, f"the replay database is unavailable: {exc}")

    async def play(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "the body must be JSON: {\"version\": N, \"sims\": N, \"moves\": \"4453\"}")
        except web.HTTPRequestEntityTooLarge:
            return error(400, f"the body is over {MAX_BODY_BYTES} bytes")
        try:
            return web.json_response(await player.move(body))
        except BadRequest as exc:
            return error(400, str(exc))
        except StoreUnavailable as exc:
            return error(503, f"the model store is unavailable: {exc}")

    app.router.add_get("/", index)
    app.router.add_get("/api/overview", get_overview)
    app.router.add_get("/api/ratings", get_ratings)
    app.router.add_post("/api/play", play)
    app.router.add_static("/static/", STATIC)
    return app


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Listening on `host:port` when it returns; `DependencyError` naming the port (and
    the config key) if it is taken."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise DependencyError(f"port {port} on {host} is taken (another program listens there): "
                                  f"choose another with --set web.port=N, or web.enabled=false") from None
        raise DependencyError(f"cannot listen on {host}:{port} (web.host, web.port): {exc}") from None
    return runner


def url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"http://{shown}:{port}/"
