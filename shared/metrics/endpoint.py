"""The HTTP endpoint of a process: `/metrics` (Prometheus), `/healthz`, `/readyz`.

It answers from threads of its own (a small WSGI server), so a scrape never waits for
the event loop and never takes its time; the loop only sets a heartbeat each second,
which is what `/healthz` checks (see `shared.metrics.health`). `/healthz` and `/readyz`
answer 200 or 503 with a JSON body saying why.

`serve_metrics(config.metrics)` is what a service's command runs around the service: with
`metrics.port` 0 it does nothing at all (no import of prometheus_client, nothing
recorded); a port already taken stops the service with a configuration error naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from socketserver import ThreadingMixIn
from typing import Any, AsyncIterator, Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from shared.config import ConfigError, MetricsConfig
from shared.metrics.health import HEALTH, Health

log = logging.getLogger(__name__)

BEAT_EVERY_S = 1.0


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # a scrape every few seconds is no news
        pass


class PortInUse(ConfigError):
    """The metrics port is taken by another process."""


class Endpoint:
    """`/metrics` from `registry()` (called at each scrape), `/healthz` and `/readyz` from
    `health`, on `host:port` (port 0: any free port; `port` then tells which)."""

    def __init__(self, host: str, port: int, registry: Callable[[], Any], health: Health = HEALTH):
        self._registry = registry
        self._health = health
        try:
            self._server = make_server(host, port, self._app, server_class=_Server, handler_class=_Quiet)
        except OSError as exc:
            raise PortInUse(f"metrics.port: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                            "choose another port, or 0 for no endpoint") from None
        self.host, self.port = host, self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics endpoint", daemon=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> "Endpoint":
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok, body = self._health.alive() if path == "/healthz" else self._health.ready()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [json.dumps(body).encode() + b"\n"]
        if path == "/metrics":
            from prometheus_client import make_wsgi_app

            return make_wsgi_app(self._registry())(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]


async def heartbeat(health: Health = HEALTH) -> None:
    """Proves this event loop turns (what `/healthz` checks)."""
    while True:
        health.beat()
        await asyncio.sleep(BEAT_EVERY_S)


@contextlib.asynccontextmanager
async def beating(health: Health = HEALTH) -> AsyncIterator[None]:
    health.beat()
    task = asyncio.create_task(heartbeat(health), name="metrics heartbeat")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait([task])


@contextlib.asynccontextmanager
async def serve_metrics(config: MetricsConfig) -> AsyncIterator[Endpoint | None]:
    """This process's endpoint for as long as inside (None with port 0); its services
    record their metrics in prometheus_client's default registry."""
    if config.port == 0:
        yield None
        return
    from prometheus_client import REGISTRY

    from shared.metrics.families import enable

    endpoint = Endpoint(config.host, config.port, lambda: REGISTRY).start()
    enable()
    log.info("metrics on %s (and /healthz, /readyz)", endpoint.url)
    try:
        async with beating():
            yield endpoint
    finally:
        endpoint.close()
