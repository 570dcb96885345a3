"""Publishing finished games to RabbitMQ without losing or blocking on any of them.

Each message is persistent and confirmed by the broker. Up to `max_unconfirmed`
publishes are in flight; beyond that `publish` waits, so self-play slows down instead of
memory growing while the broker is away. A publish that fails (connection lost,
channel closed, backlog full) is retried with backoff under the same `batch_id`; a
broker that got it before failing will hand ingest a duplicate, which ingest's batch
ledger drops. A lost broker is logged by the bus; a full backlog here, once each time.

With a `confirmed_log` file, every confirmed message is appended to it as one JSON line
(`{"batch_id", "rows", "games": {game uuid hex: plies}}`), written before the publish
counts as done: what the log lists, the broker had accepted (the fault suite audits the
replay table against it).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import numpy as np

from shared.bus import BacklogFull, BusUnavailable, TransitionPublisher
from shared.messages import TransitionBatch, encode_transitions
from shared.retry import Link, retry

log = logging.getLogger(__name__)


class GamePublisher:
    def __init__(self, bus: TransitionPublisher, max_unconfirmed: int, confirmed_log: str | Path = ""):
        self._bus = bus
        # Line-buffered: each confirmation reaches the OS at once, so it survives SIGKILL.
        self._confirmed_log = open(confirmed_log, "a", buffering=1) if confirmed_log else None
        self._slots = asyncio.Semaphore(max_unconfirmed)
        self._pending: set[asyncio.Task] = set()
        self._error: BaseException | None = None  # a publish that failed for good: a bug
        self.confirmed_batches = 0
        self.confirmed_rows = 0
        self.retries = 0
        # "lost room in the transitions backlog (...); retrying" / "... back after 12 s"
        self.room = Link("room in the transitions backlog", log)
        self.room.ok()
        # While the backlog is full one publish (the prober) retries; the others wait for
        # it to get through rather than each retrying on its own, which with hundreds in
        # flight per actor meant hundreds of refused publishes a second at the broker.
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._prober: asyncio.Task | None = None

    @property
    def unconfirmed(self) -> int:
        return len(self._pending)

    async def publish(self, batch: TransitionBatch) -> None:
        """Start publishing `batch`; returns once it is in flight (waits while the
        unconfirmed backlog is full). Raises what made an earlier publish fail for good
        (not an outage, which is retried: a bug)."""
        if self._error is not None:
            raise self._error
        await self._slots.acquire()
        task = asyncio.create_task(self._publish_until_confirmed(batch), name=f"publish {batch.batch_id}")
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._error = self._error or task.exception()

    async def _publish_until_confirmed(self, batch: TransitionBatch) -> None:
        body = encode_transitions(batch)

        def failed(exc: BaseException, failures: int) -> None:
            self.retries += 1
            if isinstance(exc, BacklogFull):  # ingest is behind: games wait, nothing is lost
                self.room.failed(str(exc))

        async def attempt() -> None:
            me = asyncio.current_task()
            while not self._has_room.is_set() and self._prober not in (None, me):
                await self._has_room.wait()
            try:
                await self._bus.publish_transitions(body, message_id=batch.batch_id)
            except BacklogFull:
                self._has_room.clear()
                self._prober = self._prober or me
                raise
            self._room_again(me)

        try:
            await retry(attempt, what=f"publish of batch {batch.batch_id}", errors=BusUnavailable,
                        on_failure=failed)
            self.room.ok()
            self.confirmed_batches += 1
            self.confirmed_rows += batch.rows
            if self._confirmed_log is not None:
                self._confirmed_log.write(audit_line(batch))
        finally:
            if self._prober is asyncio.current_task():  # cancelled while probing: let another probe
                self._room_again(self._prober)
            self._slots.release()

    def _room_again(self, task: asyncio.Task | None) -> None:
        if self._prober is task:
            self._prober = None
        self._has_room.set()

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything in flight is confirmed; False if `timeout` ran out
        first (what was still unconfirmed is then cancelled and logged)."""
        if not self._pending:
            return True
        done, pending = await asyncio.wait(set(self._pending), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.error("%d batches were still unconfirmed at shutdown", len(pending))
        return not pending

    def close(self) -> None:
        if self._confirmed_log is not None:
            self._confirmed_log.close()


def audit_line(batch: TransitionBatch) -> str:
    ids = np.frombuffer(batch.game_id.data, np.uint8).reshape(-1, 16)
    unique, plies = np.unique(ids, axis=0, return_counts=True)
    games = {bytes(g).hex(): int(n) for g, n in zip(unique, plies)}
    return json.dumps({"batch_id": batch.batch_id, "rows": batch.rows, "games": games}) + "\n"
