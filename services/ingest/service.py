"""The ingest service: transition messages in, one binary COPY per flush out, exactly once.

Lifecycle:
1. open the bus (RabbitMQ: connect, declare the topology) and the replay store (create
   or migrate its schema); consume the transitions queue with `ingest.prefetch` messages
   unacknowledged at most;
2. loop: decode each message as it comes and gather them until `flush_rows` rows or
   `flush_ms` milliseconds. Then check the flush's contents at once (`checks.py`),
   dead-letter each unusable message with the reason (the others carry on), store the
   good ones in one transaction (batch ids stored before are skipped) and only after
   its commit ack them. While one flush commits, the next one gathers. If the database
   is away the flush is retried with backoff and nothing is acked: nothing is lost;
3. on stop (SIGTERM/SIGINT in `__main__`): take no more messages, store and ack what is
   in hand, cancel the consumer, close; whatever the broker sent meanwhile goes back to
   the queue unacked. `burst=True` also ends once the queue is empty and everything is
   stored (tests, benchmarks and draining a backlog need no sleeps).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from services.ingest.checks import check_many
from shared.bus import BusUnavailable, Delivery, TransitionConsumer, open_bus
from shared.config import Config
from shared.games import get_game
from shared.messages import MessageError, TransitionBatch, decode_transitions
from shared.replay import Replay, ReplayUnavailable, open_replay
from shared.retry import Stopped, retry
from shared.status import IngestStatus, Lifecycle, instance_name
from shared.transitions import Transitions

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0
IDLE_WAIT_S = 0.2  # with nothing to do, how often burst mode asks whether the queue is empty
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
    actor_models: dict[str, int] = field(default_factory=dict)  # newest model seen per actor
    first_delivery_at: float | None = None  # monotonic clock
    last_commit_at: float | None = None


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

    def status(self) -> IngestStatus:
        s = self.stats
        return IngestStatus(
            name=self.name, state=self._lifecycle.state, messages=s.messages, rows=s.rows,
            duplicates=s.duplicates, dead_lettered=s.dead_lettered, flushes=s.flushes,
            write_failures=s.write_failures, settled=s.settled, actor_models=dict(s.actor_models),
        )

    async def run(self, stop: asyncio.Event | None = None, burst: bool = False) -> None:
        stop = stop or asyncio.Event()
        async with self._lifecycle, self.bus, self.replay:
            deliveries = await self.bus.consume_transitions(self.config.ingest.prefetch)
            async with asyncio.TaskGroup() as tasks:
                receiver = tasks.create_task(self._receive(deliveries))
                stopper = tasks.create_task(self._end_on(stop))
                self.consuming.set()
                self._lifecycle.started(stop)
                try:
                    await self._flush_loop(stop, burst, tasks)
                finally:
                    # Cancel the consumer only now, after the last ack: what arrived since
                    # the stop goes back to the queue (on the in-process bus, cancelling
                    # earlier would hand back the very messages being stored).
                    receiver.cancel()
                    stopper.cancel()
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

    async def _flush_loop(self, stop: asyncio.Event, burst: bool, tasks: asyncio.TaskGroup) -> None:
        cfg = self.config.ingest
        pending: list[Pending] = []
        rows, deadline, ended = 0, None, False
        committing: asyncio.Task[bool] | None = None  # the previous flush, still committing
        progress = _Progress(self.stats)
        while True:
            got = await self._next(IDLE_WAIT_S if deadline is None else max(deadline - time.monotonic(), 0))
            if got is END:
                ended = True
            elif got is not None and (item := await self._accept(got)) is not None:
                pending.append(item)
                rows += item.batch.rows
                deadline = deadline or time.monotonic() + cfg.flush_ms / 1000

            due = deadline is not None and time.monotonic() >= deadline
            if pending and (rows >= cfg.flush_rows or due or ended):
                good = await self._check(pending)  # while the previous flush commits
                if committing is not None and not await committing:  # stopped, database away
                    return await self._hand_back([p.delivery for p in good] + self._rest_of_inbox())
                committing = tasks.create_task(self._flush(good, stop)) if good else None
                pending, rows, deadline = [], 0, None

            if not pending and (ended or (burst and got is None)):
                if committing is not None and not await committing:
                    return await self._hand_back(self._rest_of_inbox())
                committing = None
                if ended or await self.bus.pending_transitions() == 0:
                    return
            progress.maybe_log()

    async def _accept(self, delivery: Delivery) -> Pending | None:
        """Decode one message (its contents are checked with the whole flush);
        dead-letter it if it is not a transition batch at all."""
        self.stats.messages += 1
        if self.stats.first_delivery_at is None:
            self.stats.first_delivery_at = time.monotonic()
        try:
            if len(delivery.body) > self.config.broker.max_message_bytes:
                raise MessageError(
                    f"message of {len(delivery.body)} bytes exceeds max_message_bytes "
                    f"({self.config.broker.max_message_bytes})")
            return Pending(delivery, decode_transitions(delivery.body))
        except MessageError as exc:
            await self._dead_letter(delivery, exc)
            return None

    async def _dead_letter(self, delivery: Delivery, reason: MessageError) -> None:
        log.error("dead-lettering message %s: %s", delivery.message_id, reason)
        try:
            await delivery.dead_letter(str(reason))  # acked once the dead-letter copy is confirmed
        except BusUnavailable as exc:
            log.warning("could not dead-letter message %s (%s); the broker will redeliver it",
                        delivery.message_id, exc)
            return
        self.stats.dead_lettered += 1
        self.stats.settled += 1

    async def _check(self, pending: list[Pending]) -> list[Pending]:
        """Check the contents of a flush's messages at once; dead-letter the unusable
        ones (each with its reason) and return the others, with their rows."""
        good = []
        for p, checked in zip(pending, check_many([p.batch for p in pending], self.game)):
            if isinstance(checked, MessageError):
                await self._dead_letter(p.delivery, checked)
            else:
                p.rows = checked
                good.append(p)
                self.stats.actor_models[p.batch.actor_id] = int(checked.model_version.max())
        return good

    async def _flush(self, good: list[Pending], stop: asyncio.Event) -> bool:
        """Store checked messages in one transaction, then ack them; retried while the
        database is away. False if stopped before they could be stored (then they are
        handed back)."""
        batches = [(p.batch.batch_id, self.game.env_id, p.batch.actor_id, p.rows) for p in good]

        def failed(exc: BaseException, failures: int) -> None:
            self.stats.write_failures += 1
            log.warning("storing %d messages failed (%s: %s); nothing acked, retry %d",
                        len(good), type(exc).__name__, exc, failures)

        try:
            # Every message was checked before, so the data is not the cause: keep the
            # messages unacked and try again. Any other error is a bug and stops ingest.
            result = await retry(lambda: self.replay.write(batches), what=f"storing {len(good)} messages",
                                 errors=ReplayUnavailable, stop=stop, on_failure=failed)
        except Stopped:
            await self._hand_back([p.delivery for p in good])
            return False
        self.stats.rows += result.inserted_rows
        self.stats.duplicates += result.duplicate_batches
        self.stats.flushes += 1
        self.stats.settled += len(good)
        self.stats.last_commit_at = time.monotonic()
        # Committed: now ack. Deliveries arrive in order, and every earlier one is in
        # this flush, was acked with an earlier flush, or was dead-lettered (acked):
        # one multiple-ack settles the whole flush.
        try:
            await good[-1].delivery.ack(multiple=True)
        except BusUnavailable as exc:
            log.warning("stored %d messages but could not ack them (%s); the broker will "
                        "redeliver them and the batch ledger will skip them", len(good), exc)
        return True

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


class _Progress:
    """A one-line INFO progress report, at most every PROGRESS_EVERY_S, when busy."""

    def __init__(self, stats: IngestStats):
        self.stats = stats
        self.at, self.rows, self.dead = time.monotonic(), 0, 0

    def maybe_log(self) -> None:
        now, s = time.monotonic(), self.stats
        if now - self.at < PROGRESS_EVERY_S:
            return
        if s.rows != self.rows or s.dead_lettered != self.dead:
            log.info("ingest: %.0f rows/s, %d rows stored, %d duplicate messages, %d dead-lettered",
                     (s.rows - self.rows) / (now - self.at), s.rows, s.duplicates, s.dead_lettered)
        self.at, self.rows, self.dead = now, s.rows, s.dead_lettered
