"""What `/healthz` and `/readyz` answer, for the services running in this process.

- alive (`/healthz`): this process's event loop turned within `STALL_S` seconds (the
  endpoint's heartbeat task runs on it). A loop stuck in CPU work or a deadlock answers
  nothing else either, so a probe should restart the process.
- ready (`/readyz`): at least one service runs here, every one of them is `running`
  (not starting, stopping or stopped), and every dependency it talks to answers: each
  back end that holds a `Link` (RabbitMQ, PostgreSQL, SQLite, S3) reports it up. A
  service waiting for RabbitMQ at start-up, or that lost PostgreSQL, is alive but not
  ready.

The endpoint's threads read this while the event loop writes it: plain attribute reads
and writes, and a copy of the set before iterating.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

from shared.retry import Link

STALL_S = 30.0


class Health:
    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self.services: set[Any] = set()  # objects with `status()`, running in this process
        self.last_beat = clock()

    def beat(self) -> None:
        self.last_beat = self._clock()

    @contextlib.contextmanager
    def tracking(self, service: Any) -> Iterator[None]:
        """`service` counts for readiness while inside."""
        self.services.add(service)
        try:
            yield
        finally:
            self.services.discard(service)

    def alive(self) -> tuple[bool, dict]:
        stalled = self._clock() - self.last_beat
        return stalled < STALL_S, {"alive": stalled < STALL_S, "event_loop_seconds_since_turn": round(stalled, 1)}

    def ready(self) -> tuple[bool, dict]:
        report = []
        for service in list(self.services):
            status = service.status()
            down = [link.name for link in links(service) if not link.up]
            report.append({"service": type(status).__name__.removesuffix("Status").lower(), "name": status.name,
                           "state": status.state, "down": down})
        ok = bool(report) and all(r["state"] == "running" and not r["down"] for r in report)
        return ok, {"ready": ok, "services": report}


def links(service: Any) -> list[Link]:
    """The `Link` of every back end `service` holds (its bus, stores): what it needs."""
    return [link for part in vars(service).values() if isinstance(link := getattr(part, "link", None), Link)]


HEALTH = Health()
"""This process's."""
