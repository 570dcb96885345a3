"""The ingest service: transition messages in, one binary COPY per flush out, exactly once.

Lifecycle:
1. open the bus (RabbitMQ: connect, declare the topology) and the replay store (create
   or migrate its schema); consume the transitions queue with `ingest.prefetch` messages
   unacknowledged at most;
2. gather a flush (`_flushes`): decode each message as it comes, until `flush_rows`
   rows or `flush_ms` milliseconds. Check its contents at once (`_check`, `checks.py`)
   and dead-letter each unusable message with the reason (the others carry on). Commit
   it (`_commit`): the good ones in one transaction (batch ids stored before are
   skipped), and only after the commit one ack for them all. While one flush commits,
   the next one gathers (`_store_flushes`). If the database is away the commit is
   retried with backoff and nothing is acked: nothing is lost;
3. on stop (SIGTERM/SIGINT in `__main__`): take no more messages, store and ack what is
   in hand, cancel the consumer, close; whatever the broker sent meanwhile goes back to
   the queue unacked. `burst=True` also ends once the queue is empty and everything is
   stored (tests, benchmarks and draining a backlog need no sleeps).
Meanwhile, every RETENTION_EVERY_S, `_keep_bounded` has the replay store drop what lies
beyond `storage.retain_positions` (whole partitions) and looks at how many messages wait
in the dead-letter queue (both in `status()`); `_watch_commits` ends the service with
`IngestStalled` (and every task's stack in the log) if a commit neither finishes nor fails
for COMMIT_STALL_S: a stuck ingest would otherwise stall every actor behind the bounded
queue, silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from services.ingest.checks import check_many
from shared.bus import BusUnavailable, Delivery, TransitionConsumer, open_bus
from shared.config import Config
from shared.games import get_game
from shared.messages import MessageError, TransitionBatch, decode_transitions
from shared.metrics.export import exported
from shared.metrics.families import recorder
from shared.replay import Replay, ReplayUnavailable, open_replay
from shared.retry import Stopped, retry
from shared.status import IngestStatus, Lifecycle, instance_name
from shared.transitions import Transitions

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0
BACKLOG_EVERY_S = 5.0  # how often to ask the bus how many messages wait (a metric)
RETENTION_EVERY_S = 5.0  # how often retention runs (each pass is cheap when nothing is due)
IDLE_WAIT_S = 0.2  # with nothing to do, how often burst mode asks whether the queue is empty
# A flush commits in well under a second, and a failed attempt (the database away) restarts
# the clock: a commit this long without either is stuck, and ingest exits to be restarted
# (its messages are unacked: the broker hands them to the next ingest).
COMMIT_STALL_S = 300.0
STALL_CHECK_S = 5.0
END = object()  # in the inbox: stop here (stop was asked for, or the consumer ended)


@dataclass
class Pending:
    delivery: Delivery
    batch: TransitionBatch  # decoded, contents not checked yet
    rows: Transitions | None = None  # once checked


@dataclass
class IngestStats:
    messages: int = 0
    rows: int = 0  # rows stored (duplicates not counted)
    duplicates: int = 0  # messages whose batch id was stored before
    dead_lettered: int = 0
    flushes: int = 0
    write_failures: int = 0  # flush attempts the database refused (then retried)
    settled: int = 0  # messages acked after their commit, or dead-lettered
    dropped_partitions: int = 0  # replay partitions retention dropped
    dropped_rows: int = 0  # positions in them
    dead_letter_depth: int = 0  # messages in the dead-letter queue, as last seen
    actor_models: dict[str, int] = field(default_factory=dict)  # newest model seen per actor
    first_delivery_at: float | None = None  # monotonic clock
    last_commit_at: float | None = None
    backlog: int | None = None  # messages waiting in the queue, as last asked


class IngestStalled(RuntimeError):
    """A commit neither finished nor failed for COMMIT_STALL_S."""


def task_stacks() -> str:
    """Every asyncio task of this loop and the chain of awaits it is suspended in, outermost
    first (`Task.print_stack` shows only the outermost coroutine's frame)."""
    lines = []
    for task in asyncio.all_tasks():
        lines.append(f"task {task.get_name()}:")
        awaited = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is None:
                lines.append(f"  awaiting {awaited!r}"[:300])
                break
            lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    return "\n".join(lines)


class IngestService:
    def __init__(self, config: Config, *, bus: TransitionConsumer | None = None, replay: Replay | None = None):
        """`bus` and `replay` default to what `config` names (RabbitMQ, `storage`)."""
        self.config = config
        self.game = get_game(config.common.env_id)
        self.name = instance_name()
        self.bus = bus or open_bus(config.broker, name="ingest")
        self.replay = replay or open_replay(config.storage, self.game)
        self.stats = IngestStats()
        self.consuming = asyncio.Event()  # set once the store is open and consuming starts
        self._lifecycle = Lifecycle()
        self._inbox: asyncio.Queue = asyncio.Queue()  # deliveries, then END
        self._committing_since: float | None = None  # a commit's start or its last failed attempt

    def status(self) -> IngestStatus:
        s = self.stats
        return IngestStatus(
            name=self.name, state=self._lifecycle.state, messages=s.messages, rows=s.rows,
            duplicates=s.duplicates, dead_lettered=s.dead_lettered, flushes=s.flushes,
            write_failures=s.write_failures, settled=s.settled, actor_models=dict(s.actor_models),
            backlog=s.backlog,
            dropped_partitions=s.dropped_partitions, dropped_rows=s.dropped_rows,
            dead_letter_depth=s.dead_letter_depth,
        )

    async def run(self, stop: asyncio.Event | None = None, burst: bool = False) -> None:
        stop = stop or asyncio.Event()
        async with self._lifecycle, exported(self), self.bus, self.replay:
            deliveries = await self.bus.consume_transitions(self.config.ingest.prefetch)
            async with asyncio.TaskGroup() as tasks:
                receiver = tasks.create_task(self._receive(deliveries))
                helpers = [receiver, tasks.create_task(self._end_on(stop)), tasks.create_task(self._log_progress()),
                           tasks.create_task(self._watch_backlog()), tasks.create_task(self._keep_bounded()),
                           tasks.create_task(self._watch_commits())]
                self.consuming.set()
                self._lifecycle.started(stop)
                try:
                    if unstored := await self._store_flushes(stop, burst, tasks):
                        # Take no more first: a consumer still running would be handed
                        # these again and return them a second time, out of order.
                        receiver.cancel()
                        await asyncio.wait([receiver])
                        await self._hand_back(unstored + self._rest_of_inbox())
                finally:
                    # Cancel the consumer only now, after the last ack: what arrived since
                    # the stop goes back to the queue (on the in-process bus, cancelling
                    # earlier would hand back the very messages being stored).
                    for task in helpers:
                        task.cancel()
        s = self.stats
        log.info("ingest stopped: %d rows from %d messages stored, %d duplicate messages skipped, "
                 "%d dead-lettered", s.rows, s.messages, s.duplicates, s.dead_lettered)

    async def _receive(self, deliveries) -> None:
        # A task of its own, so that waiting for a flush deadline never interrupts the
        # consumer mid-delivery.
        try:
            async for delivery in deliveries:
                self._inbox.put_nowait(delivery)
        finally:
            self._inbox.put_nowait(END)

    async def _log_progress(self) -> None:
        """One INFO line every PROGRESS_EVERY_S while rows are being stored."""
        last, last_at = self.status(), time.monotonic()
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            now, at = self.status(), time.monotonic()
            if (now.rows, now.dead_lettered) != (last.rows, last.dead_lettered):
                log.info("ingest: %.0f rows/s, %d rows stored, %d duplicate messages, %d dead-lettered",
                         (now.rows - last.rows) / (at - last_at), now.rows, now.duplicates, now.dead_lettered)
            last, last_at = now, at

    async def _watch_backlog(self) -> None:
        """Keep `stats.backlog` fresh: how far behind ingest is, as the broker counts."""
        while True:
            try:
                self.stats.backlog = await self.bus.pending_transitions()
            except Exception as exc:  # a figure for the metrics: never a reason to stop ingest
                log.debug("could not count the transitions backlog: %s", exc)
            await asyncio.sleep(BACKLOG_EVERY_S)
    async def _keep_bounded(self) -> None:
        """Retention and the dead-letter count, every RETENTION_EVERY_S. An outage only
        postpones them (the store and the bus log it)."""
        while True:
            try:
                for part in await self.replay.enforce_retention():
                    self.stats.dropped_partitions += 1
                    self.stats.dropped_rows += part.rows
            except ReplayUnavailable:
                pass
            try:
                self.stats.dead_letter_depth = await self.bus.dead_letter_depth()
            except BusUnavailable:
                pass
            await asyncio.sleep(RETENTION_EVERY_S)

    async def _watch_commits(self) -> None:
        """Raise `IngestStalled` once a commit has neither finished nor failed for
        COMMIT_STALL_S, after logging where every task waits."""
        while True:
            await asyncio.sleep(STALL_CHECK_S)
            since = self._committing_since
            if since is not None and (stuck := time.monotonic() - since) > COMMIT_STALL_S:
                log.error("a commit has neither finished nor failed for %.0f s: exiting to be restarted (its "
                          "messages go back to the queue). Where each task waits:\n%s", stuck, task_stacks())
                raise IngestStalled(f"a commit neither finished nor failed for {stuck:.0f} s")

    async def _end_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        log.info("stopping: taking no more messages, storing what is in hand")
        self._inbox.put_nowait(END)  # what is queued before this is in hand, the rest goes back

    async def _next(self, timeout: float):
        """The next delivery (or END), or None if none came within `timeout` seconds."""
        if not self._inbox.empty():
            return self._inbox.get_nowait()
        try:
            async with asyncio.timeout(timeout):
                return await self._inbox.get()
        except TimeoutError:
            return None

    async def _store_flushes(self, stop: asyncio.Event, burst: bool, tasks: asyncio.TaskGroup) -> list[Delivery]:
        """Gather a flush, check it, commit it and ack it, while the next one gathers
        (one flush commits at a time). Returns, in delivery order, what could not be
        stored because a stop came while the database was away."""
        committing: asyncio.Task[list[Delivery]] | None = None  # the previous flush
        async with contextlib.aclosing(self._flushes(burst)) as flushes:
            async for flush in flushes:
                good = await self._check(flush)  # while the previous flush commits
                if unstored := await _unstored(committing):
                    return unstored + [p.delivery for p in good]
                committing = tasks.create_task(self._commit(good, stop)) if good else None
        return await _unstored(committing)

    async def _flushes(self, burst: bool) -> AsyncIterator[list[Pending]]:
        """Flushes as they fill: `flush_rows` rows, `flush_ms` after a flush's first
        message, or what is in hand when the inbox ends (a stop). In burst mode they also
        end once nothing comes and the queue is empty."""
        cfg = self.config.ingest
        while True:
            got = await self._next(IDLE_WAIT_S)
            if got is None:
                if burst and await self.bus.pending_transitions() == 0:
                    return
                continue
            flush, rows = [], 0
            deadline = time.monotonic() + cfg.flush_ms / 1000
            while got is not None and got is not END:
                if (item := await self._accept(got)) is not None:
                    flush.append(item)
                    rows += item.batch.rows
                if rows >= cfg.flush_rows:
                    break
                got = await self._next(max(deadline - time.monotonic(), 0))
            if flush:
                yield flush
            if got is END:
                return

    async def _accept(self, delivery: Delivery) -> Pending | None:
        """Decode one message (its contents are checked with the whole flush);
        dead-letter it if it is not a transition batch at all."""
        self.stats.messages += 1
        if self.stats.first_delivery_at is None:
            self.stats.first_delivery_at = time.monotonic()
        if len(delivery.body) > self.config.broker.max_message_bytes:
            await self._dead_letter(delivery, MessageError(
                f"message of {len(delivery.body)} bytes exceeds max_message_bytes "
                f"({self.config.broker.max_message_bytes})"), "too_large")
            return None
        try:
            return Pending(delivery, decode_transitions(delivery.body))
        except MessageError as exc:
            await self._dead_letter(delivery, exc, "undecodable")
            return None

    async def _dead_letter(self, delivery: Delivery, reason: MessageError, kind: str) -> None:
        """`kind`: one of `families.DEAD_LETTER_REASONS` (the metric's label)."""
        log.error("dead-lettering message %s: %s", delivery.message_id, reason)
        try:
            await delivery.dead_letter(str(reason))  # acked once the dead-letter copy is confirmed
        except BusUnavailable as exc:
            log.warning("could not dead-letter message %s (%s); the broker will redeliver it",
                        delivery.message_id, exc)
            return
        self.stats.dead_lettered += 1
        self.stats.settled += 1
        if (metrics := recorder()) is not None:
            metrics.ingest.dead_lettered.labels(reason=kind).inc()

    async def _check(self, pending: list[Pending]) -> list[Pending]:
        """Check the contents of a flush's messages at once; dead-letter the unusable
        ones (each with its reason) and return the others, with their rows."""
        good = []
        for p, checked in zip(pending, check_many([p.batch for p in pending], self.game)):
            if isinstance(checked, MessageError):
                await self._dead_letter(p.delivery, checked, "invalid")
            else:
                p.rows = checked
                good.append(p)
                self.stats.actor_models[p.batch.actor_id] = int(checked.model_version.max())
        return good

    async def _commit(self, good: list[Pending], stop: asyncio.Event) -> list[Delivery]:
        """Store checked messages in one transaction, then ack them; retried while the
        database is away. Returns their deliveries if stopped before they could be
        stored, else nothing. `_watch_commits` watches it."""
        self._committing_since = time.monotonic()
        try:
            return await self._store_and_ack(good, stop)
        finally:
            self._committing_since = None

    async def _store_and_ack(self, good: list[Pending], stop: asyncio.Event) -> list[Delivery]:
        batches = [(p.batch.batch_id, self.game.env_id, p.batch.actor_id, p.rows) for p in good]
        started = time.monotonic()

        def failed(exc: BaseException, failures: int) -> None:
            self.stats.write_failures += 1
            self._committing_since = time.monotonic()  # trying: not stuck

        try:
            # Every message was checked before, so the data is not the cause: keep the
            # messages unacked and try again (the replay store logs the outage). Any
            # other error is a bug and stops ingest.
            result = await retry(lambda: self.replay.write(batches), what=f"storing {len(good)} messages",
                                 errors=ReplayUnavailable, stop=stop, on_failure=failed)
        except Stopped:
            return [p.delivery for p in good]
        self.stats.rows += result.inserted_rows
        self.stats.duplicates += result.duplicate_batches
        self.stats.flushes += 1
        self.stats.settled += len(good)
        self.stats.last_commit_at = time.monotonic()
        if (metrics := recorder()) is not None:
            metrics.ingest.flush_rows.observe(sum(len(p.rows) for p in good))
            metrics.ingest.commit_seconds.observe(self.stats.last_commit_at - started)
        # Committed: now ack. Deliveries arrive in order, and every earlier one is in
        # this flush, was acked with an earlier flush, or was dead-lettered (acked):
        # one multiple-ack settles the whole flush.
        try:
            await good[-1].delivery.ack(multiple=True)
        except BusUnavailable as exc:
            log.warning("stored %d messages but could not ack them (%s); the broker will "
                        "redeliver them and the batch ledger will skip them", len(good), exc)
        return []

    async def _hand_back(self, deliveries: list[Delivery]) -> None:
        """Give back messages that were not stored, for redelivery."""
        for delivery in deliveries:
            try:
                await delivery.nack()
            except BusUnavailable:
                return  # the broker requeues them all by itself
        if deliveries:
            log.info("handed %d unstored messages back to the queue", len(deliveries))

    def _rest_of_inbox(self) -> list[Delivery]:
        rest = []
        while not self._inbox.empty():
            if (item := self._inbox.get_nowait()) is not END:
                rest.append(item)
        return rest


async def _unstored(commit: asyncio.Task[list[Delivery]] | None) -> list[Delivery]:
    """What a flush could not store (waits for its commit); nothing for no flush."""
    return [] if commit is None else await commit
