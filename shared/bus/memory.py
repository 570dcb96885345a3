"""The bus inside one process: asyncio queues with RabbitMQ's delivery semantics
(acks, redelivery on nack, dead-lettering with a reason, fan-out events)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterator

from shared.bus.base import BacklogFull


@dataclass(eq=False)
class MemoryDelivery:
    body: bytes
    message_id: str | None
    tag: int
    _bus: "MemoryBus" = field(repr=False)
    _settled: bool = False
    _returned: bool = False  # its consumer went away and gave it back

    def _settle(self) -> None:
        if self._settled:
            raise RuntimeError("delivery already acknowledged")
        self._settled = True
        self._bus._unacked.release()
        self._bus._outstanding.discard(self)

    async def ack(self, multiple: bool = False) -> None:
        self._settle()
        if multiple:
            for earlier in [d for d in self._bus._outstanding if d.tag < self.tag]:
                earlier._settle()

    async def nack(self) -> None:
        if self._returned:
            return
        self._settle()
        self._bus._enqueue(self.body, self.message_id)

    async def dead_letter(self, reason: str) -> None:
        self._settle()
        self._bus.dead_letters.append((self.body, reason))


class MemoryBus:
    def __init__(self, prefetch: int = 1024, max_backlog_bytes: int | None = None):
        """`max_backlog_bytes` bounds the bodies waiting to be consumed, as
        `broker.max_backlog_bytes` bounds the RabbitMQ queue (None: unbounded)."""
        self._queue: asyncio.Queue[tuple[bytes, str | None]] = asyncio.Queue()
        self.max_backlog_bytes = max_backlog_bytes
        self.backlog_bytes = 0  # bodies published and not yet delivered
        self._unacked = asyncio.Semaphore(prefetch)
        self._outstanding: set[MemoryDelivery] = set()  # delivered, not yet settled
        self._tags = 0
        self._subscribers: list[asyncio.Queue[bytes]] = []
        self.dead_letters: list[tuple[bytes, str]] = []
        self.published = 0  # transition messages ever published

    async def __aenter__(self) -> "MemoryBus":
        return self

    async def __aexit__(self, *exc) -> None:
        pass

    async def pending_transitions(self) -> int:
        return self._queue.qsize()

    async def dead_letter_depth(self) -> int:
        return len(self.dead_letters)

    async def publish_transitions(self, body: bytes, *, message_id: str) -> None:
        # Like RabbitMQ's reject-publish: refused once the backlog has reached its bound.
        if self.max_backlog_bytes is not None and self.backlog_bytes >= self.max_backlog_bytes:
            raise BacklogFull(f"transitions backlog full ({self.backlog_bytes} bytes waiting)")
        self.published += 1
        self._enqueue(body, message_id)

    def _enqueue(self, body: bytes, message_id: str | None) -> None:
        self.backlog_bytes += len(body)
        self._queue.put_nowait((body, message_id))

    async def consume_transitions(self, prefetch: int) -> AsyncIterator[MemoryDelivery]:
        self._unacked = asyncio.Semaphore(prefetch)
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[MemoryDelivery]:
        try:
            while True:
                await self._unacked.acquire()
                body, message_id = await self._queue.get()
                self.backlog_bytes -= len(body)
                self._tags += 1
                delivery = MemoryDelivery(body, message_id, self._tags, self)
                self._outstanding.add(delivery)
                yield delivery
        finally:
            # A consumer that goes away hands back what it had not settled, in order, as
            # RabbitMQ does when its channel closes.
            for delivery in sorted(self._outstanding, key=lambda d: d.tag):
                delivery._settled = delivery._returned = True
                self._enqueue(delivery.body, delivery.message_id)
            self._outstanding.clear()

    async def publish_event(self, body: bytes, *, expires_s: float | None = None) -> None:
        for queue in self._subscribers:
            queue.put_nowait(body)

    def on_events_restored(self, callback) -> None:
        pass  # within one process (or over a pipe to the parent) nothing is ever missed

    async def subscribe_events(self, durable_queue: str | None = None) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._subscribers.append(queue)
        return self._events(queue)

    @staticmethod
    async def _events(queue: asyncio.Queue[bytes]) -> AsyncIterator[bytes]:
        while True:
            yield await queue.get()
