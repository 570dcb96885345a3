"""The message bus the services talk through, whatever carries it.

Two streams:
- transitions: actors publish (confirmed, persistent), ingest consumes with acks; a
  message ingest cannot use is dead-lettered with the reason;
- events: model-published and reload events, fanned out so every subscriber (every
  actor) gets every event.
RabbitMQ carries them in a deployment (`rabbitmq.py`); `cartridge up` and unit tests use
the in-process bus (`memory.py`). The services are the same code on either.
"""

from __future__ import annotations

from typing import AsyncIterator, Protocol


class BacklogFull(Exception):
    """The bus refused a transition message: its backlog (`broker.max_backlog_bytes`) is
    full because ingest is behind. Nothing was stored; publish it again later."""


class Delivery(Protocol):
    body: bytes
    message_id: str | None

    async def ack(self, multiple: bool = False) -> None:
        """The message is stored: the bus may forget it (with `multiple`, also every
        earlier delivery of this consumer not settled yet: one frame for a whole flush)."""

    async def nack(self) -> None:
        """The message was not stored: deliver it again later."""

    async def dead_letter(self, reason: str) -> None:
        """The message is unusable: move it aside with `reason`, never redeliver it."""


class Bus(Protocol):
    async def __aenter__(self) -> "Bus": ...

    async def __aexit__(self, *exc) -> None: ...

    async def publish_transitions(self, body: bytes, *, message_id: str) -> None:
        """Returns once the bus has the message safely (publisher confirm); `BacklogFull`
        if the backlog is at its bound."""

    async def consume_transitions(self, prefetch: int) -> AsyncIterator[Delivery]:
        """Start consuming: transition messages, at most `prefetch` unacknowledged."""

    async def pending_transitions(self) -> int:
        """Transition messages waiting to be consumed (for burst mode's "all done")."""

    async def publish_event(self, body: bytes) -> None:
        """Send a control event to every subscriber."""

    async def subscribe_events(self) -> AsyncIterator[bytes]:
        """Subscribe now; the iterator yields every control event published from now on."""
