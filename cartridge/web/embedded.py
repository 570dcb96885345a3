"""The web page inside `cartridge up`: the same page as `cartridge web`, on the embedded
back ends (the SQLite replay file, the model directory) and fed directly from the
services that run in this process instead of heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator, Callable

from cartridge.web.app import build_app, start, url
from cartridge.web.overview import Overview
from cartridge.web.play import ModelPlayer
from shared.bus import MemoryBus
from shared.config import Config
from shared.evaluations import open_evaluations
from shared.liveness import LiveView
from shared.model_store import open_model_store
from shared.retry import DependencyError
from shared.status import AnyStatus

log = logging.getLogger("cartridge.up")


@contextlib.asynccontextmanager
async def web_page(config: Config, statuses: Callable[[], list[AnyStatus]], bus: MemoryBus) -> AsyncIterator[str | None]:
    """Serve the page while the body runs (unless `web.enabled` is false); yields its URL,
    or None. A port that is taken is a warning naming it, and the pipeline runs without
    the page, as without the metrics endpoint: both are windows onto `cartridge up`, not
    its work (`cartridge web`, whose work the page is, stops instead)."""
    if not config.web.enabled:
        yield None
        return
    async with open_model_store(config.storage) as store, open_evaluations(config.storage) as results:
        live = LiveView(missed_beats=config.status.missed_beats)

        async def pending() -> list[dict]:
            return [{"name": "transitions (in-process bus)", "ready": await bus.pending_transitions(),
                     "unacked": None, "consumers": 1}]

        overview = Overview(config, store, results, live, pending, live_source="this process")
        try:
            runner = await start(build_app(overview, ModelPlayer(config, store)), config.web.host, config.web.port)
        except DependencyError as exc:
            log.warning("no web page: %s", exc)
            yield None
            return

        async def sample() -> None:
            while True:
                for status in statuses():
                    live.observe(status, interval_s=config.status.heartbeat_s)
                await asyncio.sleep(config.status.heartbeat_s)

        sampler = asyncio.create_task(sample())
        address = url(config.web.host, config.web.port)
        print(f"cartridge up: web page at {address}", flush=True)
        try:
            yield address
        finally:
            sampler.cancel()
            await runner.cleanup()
