"""The ingest service: transition messages in, one binary COPY per flush out, exactly once.

Lifecycle: open the bus and the replay store (creating or migrating its schema), consume
with a prefetch window, then loop:
- each message is decoded and checked; one that cannot be used is dead-lettered at once
  with the reason (the others keep going);
- good messages gather until `flush_rows` rows or `flush_ms` milliseconds, then one
  transaction stores them (batch ids already stored are skipped) and only after its
  commit are they acked. If the database is down the flush is retried with backoff and
  nothing is acked, so nothing is lost.
On stop: stop taking messages, flush and ack what is in hand, close. `burst=True` exits
once the queue is empty and everything is stored (tests and benchmarks need no sleeps).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import asyncpg

from shared.bus import Bus, Delivery, RabbitBus
from shared.config import Config
from shared.games import get_game
from shared.messages import MessageError, decode_transitions
from shared.replay import Replay, open_replay
from shared.transitions import Transitions, from_batch

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0
RETRY_DELAYS = (0.2, 0.5, 1, 2, 5)
IDLE_CHECK_S = 0.2  # burst mode: how often an idle consumer asks if the queue is empty
# Errors that mean "the database is away", not "this data is bad".
DATABASE_DOWN = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                 asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, TimeoutError)


@dataclass
class Pending:
    delivery: Delivery
    batch_id: str
    actor_id: str
    rows: Transitions


@dataclass
class IngestStats:
    messages: int = 0
    rows: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    flushes: int = 0
    settled: int = 0  # messages acked after their commit, or dead-lettered
    actor_models: dict[str, int] = field(default_factory=dict)  # newest model seen per actor
    first_delivery_at: float | None = None  # monotonic clock
    last_commit_at: float | None = None


class IngestService:
    def __init__(self, config: Config, *, bus: Bus | None = None, replay: Replay | None = None):
        """`bus` and `replay` default to what `config` names."""
        self.config = config
        self.game = get_game(config.common.env_id)
        self.bus = bus or RabbitBus(config.broker, name="ingest")
        self.replay = replay or open_replay(config.storage, self.game)
        self.stats = IngestStats()
        self._inbox: asyncio.Queue[Delivery] = asyncio.Queue()

    async def run(self, stop: asyncio.Event | None = None, burst: bool = False) -> None:
        stop = stop or asyncio.Event()
        async with self.bus, self.replay:
            deliveries = await self.bus.consume_transitions(self.config.ingest.prefetch)
            async with asyncio.TaskGroup() as tasks:
                receiver = tasks.create_task(self._receive(deliveries))
                await self._flush_loop(stop, burst)
                receiver.cancel()
        log.info("ingest stopped: %d rows from %d messages stored, %d duplicates skipped, %d dead-lettered",
                 self.stats.rows, self.stats.messages, self.stats.duplicates, self.stats.dead_lettered)

    async def _receive(self, deliveries) -> None:
        # A task of its own, so waiting for the next flush deadline never cancels the
        # consumer mid-delivery.
        async for delivery in deliveries:
            self._inbox.put_nowait(delivery)

    async def _flush_loop(self, stop: asyncio.Event, burst: bool) -> None:
        cfg = self.config.ingest
        pending: list[Pending] = []
        rows = 0
        deadline = None
        # One flush may be in flight while the next one gathers: decoding overlaps the COPY.
        flushing: asyncio.Task[bool] | None = None
        last_log, last_rows = time.monotonic(), 0
        while True:
            wait = IDLE_CHECK_S if deadline is None else max(deadline - time.monotonic(), 0)
            delivery = await self._next(wait, stop)
            if delivery is not None:
                item = await self._accept(delivery)
                if item is not None:
                    pending.append(item)
                    rows += len(item.rows)
                    deadline = deadline or time.monotonic() + cfg.flush_ms / 1000
            due = deadline is not None and time.monotonic() >= deadline
            if pending and (rows >= cfg.flush_rows or due or stop.is_set()):
                if flushing is not None and not await flushing:
                    return  # stopped while the database was away: all handed back
                flushing = asyncio.create_task(self._flush(pending, stop))
                pending, rows, deadline = [], 0, None
            idle = not pending and self._inbox.empty()
            if idle and (stop.is_set() or burst):
                if flushing is not None and not await flushing:
                    return
                flushing = None
                if stop.is_set() or await self.bus.pending_transitions() == 0:
                    return
            now = time.monotonic()
            if now - last_log >= PROGRESS_EVERY_S:
                log.info("ingest: %.0f rows/s, %d rows stored, %d dead-lettered",
                         (self.stats.rows - last_rows) / (now - last_log), self.stats.rows, self.stats.dead_lettered)
                last_log, last_rows = now, self.stats.rows

    async def _next(self, wait: float, stop: asyncio.Event) -> Delivery | None:
        if not self._inbox.empty():
            return self._inbox.get_nowait()
        if stop.is_set():
            return None
        get = asyncio.ensure_future(self._inbox.get())
        stopped = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({get, stopped}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if get in done:
            return get.result()
        get.cancel()
        return None

    async def _accept(self, delivery: Delivery) -> Pending | None:
        """Decode and check one message; dead-letter it (with the reason) if unusable."""
        self.stats.messages += 1
        if self.stats.first_delivery_at is None:
            self.stats.first_delivery_at = time.monotonic()
        try:
            if len(delivery.body) > self.config.broker.max_message_bytes:
                raise MessageError(
                    f"message of {len(delivery.body)} bytes exceeds max_message_bytes "
                    f"({self.config.broker.max_message_bytes})")
            batch = decode_transitions(delivery.body)
            rows = from_batch(batch, self.game)
        except MessageError as exc:
            reason = str(exc)
            log.error("dead-lettered message %s: %s", delivery.message_id, reason)
            await delivery.dead_letter(reason)
            self.stats.dead_lettered += 1
            self.stats.settled += 1
            return None
        self.stats.actor_models[batch.actor_id] = int(rows.model_version.max())
        return Pending(delivery, batch.batch_id, batch.actor_id, rows)

    async def _flush(self, pending: list[Pending], stop: asyncio.Event) -> bool:
        """Store `pending` in one transaction, then ack; retried while the database is
        away. False if stopped before it could be stored (then everything is nacked)."""
        batches = [(p.batch_id, self.game.env_id, p.actor_id, p.rows) for p in pending]
        for attempt in range(10**9):
            try:
                result = await self.replay.write(batches)
                break
            except DATABASE_DOWN as exc:
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                log.warning("flush of %d messages failed (%s: %s); nothing acked, retrying in %ss",
                            len(pending), type(exc).__name__, exc, delay)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    continue
                for p in pending:
                    await p.delivery.nack()
                return False
        # Deliveries arrive in order and every earlier one is either in this flush, in an
        # earlier flush (acked) or dead-lettered (acked): one multiple-ack covers the flush.
        await pending[-1].delivery.ack(multiple=True)
        self.stats.rows += result.inserted_rows
        self.stats.duplicates += result.duplicate_batches
        self.stats.flushes += 1
        self.stats.settled += len(pending)
        self.stats.last_commit_at = time.monotonic()
        return True
