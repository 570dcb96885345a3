"""`cartridge up`'s one metrics endpoint for its whole process tree.

Actors and the evaluator run in worker processes, ingest and the trainer in the parent;
Prometheus should see one target with all of them. prometheus_client's multiprocess mode
does that: every process writes its values to memory-mapped files in one directory
(`PROMETHEUS_MULTIPROC_DIR`, which a process must have before it imports
prometheus_client, so the parent sets it before creating any metric and the workers
inherit it), and the parent's endpoint merges the files at each scrape (counters and
histograms summed per label set: each actor's series carry its `actor` label). A worker
that exits is marked dead, which drops its live gauges (its model version) but keeps
its counters. The directory is fresh for every run and removed at the end: files left
from another run would be counted again.

Metrics are on by default here (`DEFAULT_PORT`); a port already taken is a warning, and
`cartridge up` runs on without an endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from typing import AsyncIterator

from shared.config import Config
from shared.metrics.endpoint import Endpoint, PortInUse, beating
from shared.metrics.families import MULTIPROC_ENV, enable

log = logging.getLogger("cartridge.up")

DEFAULT_PORT = 9464


class TreeMetrics:
    def __init__(self, endpoint: Endpoint | None = None, directory: str | None = None):
        self.endpoint, self.directory = endpoint, directory

    @classmethod
    def start(cls, config: Config) -> "TreeMetrics":
        """Listen and start recording, before any worker starts; a do-nothing instance
        with `metrics.port` 0 or a port already taken."""
        cfg = config.metrics
        if cfg.port == 0:
            return cls()
        registry = None
        try:
            endpoint = Endpoint(cfg.host, cfg.port, lambda: registry)
        except PortInUse as exc:
            log.warning("no metrics endpoint: %s (e.g. --set metrics.port=%d)", exc, cfg.port + 1)
            return cls()
        if "prometheus_client" in sys.modules:
            raise RuntimeError(f"prometheus_client was imported before {MULTIPROC_ENV} was set: "
                               "its values would not reach the multiprocess files")
        directory = tempfile.mkdtemp(prefix="cartridge-metrics-")
        os.environ[MULTIPROC_ENV] = directory
        from prometheus_client import CollectorRegistry, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        enable()
        endpoint.start()
        log.info("metrics: %s (and /healthz, /readyz)", endpoint.url)
        return cls(endpoint, directory)

    @contextlib.asynccontextmanager
    async def watching(self, processes: list[asyncio.subprocess.Process]) -> AsyncIterator[None]:
        """While inside: the heartbeat, and each of `processes` marked dead when it
        exits. On the way out the endpoint closes and the files go."""
        if self.endpoint is None:
            yield
            return
        from prometheus_client import multiprocess

        async def mark_dead(process: asyncio.subprocess.Process) -> None:
            await process.wait()
            multiprocess.mark_process_dead(process.pid, self.directory)

        watchers = [asyncio.create_task(mark_dead(p)) for p in processes]
        try:
            async with beating():
                yield
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.wait(watchers) if watchers else None
            self.endpoint.close()
            del os.environ[MULTIPROC_ENV]
            shutil.rmtree(self.directory, ignore_errors=True)
