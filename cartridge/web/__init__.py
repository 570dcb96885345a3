"""`cartridge web`: the web page of a deployment: training curves, ratings, per-actor
models and queue depths, and Connect4 against any stored model version.

It reads the replay's database (the evaluator's tables) and the model store that the
config names, follows the heartbeats stream on RabbitMQ for what is running now, and asks
RabbitMQ's management API for queue depths. `cartridge up` serves the same page from its
own process (see `cartridge.web.embedded`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from cartridge.web.app import build_app, start, url
from cartridge.web.overview import Overview, follow_heartbeats
from cartridge.web.play import ModelPlayer
from shared.bus.management import queue_depths
from shared.config import Config
from shared.evaluations import open_evaluations
from shared.liveness import LiveView
from shared.metrics.endpoint import serve_metrics
from shared.model_store import open_model_store
from shared.metrics.health import HEALTH
from shared.service import base_parser, run_service
from shared.status import Lifecycle, WebStatus, instance_name

log = logging.getLogger("cartridge.web")

CLOSE_S = 5.0


class WebReadiness:
    """What `/readyz` checks for the page: running, and the database and model store it
    reads answering (their `Link`s). `store` (the model store) and `results` (the
    evaluator's tables) are also what the page reads."""

    def __init__(self, store, results):
        self.store, self.results = store, results
        self.lifecycle = Lifecycle()
        self.name = instance_name()

    def status(self) -> WebStatus:
        return WebStatus(name=self.name, state=self.lifecycle.state)


async def serve(config: Config, args: argparse.Namespace, stop: asyncio.Event) -> None:
    # /healthz and /readyz beside the other services' (compose's health check); /metrics has little here.
    async with serve_metrics(config.metrics), open_model_store(config.storage) as store, \
            open_evaluations(config.storage) as results:
        readiness = WebReadiness(store, results)
        async with readiness.lifecycle:
            with HEALTH.tracking(readiness):
                await _serve_page(config, readiness, stop)


async def _serve_page(config: Config, readiness: WebReadiness, stop: asyncio.Event) -> None:
    store, results = readiness.store, readiness.results
    live = LiveView(missed_beats=config.status.missed_beats)
    overview = Overview(config, store, results, live, lambda: queue_depths(config.broker))
    runner = await start(build_app(overview, ModelPlayer(config, store)), config.web.host, config.web.port)
    follower = asyncio.create_task(follow_heartbeats(config, live, overview))
    log.info("web page at %s", url(config.web.host, config.web.port))
    readiness.lifecycle.started(stop)
    try:
        await stop.wait()
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(follower, CLOSE_S)  # its RabbitMQ connection closes
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("cartridge web", "Serve the web page: training curves, ratings, play a stored model.")
    parser.add_argument("--port", type=int, help="port to listen on (web.port)")
    parser.add_argument("--host", help="address to listen on (web.host; 0.0.0.0: every interface)")
    flags = lambda a: {"web": {k: v for k, v in (("port", a.port), ("host", a.host)) if v is not None}}
    return run_service(serve, parser, argv, flags)
