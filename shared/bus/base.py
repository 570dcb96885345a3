"""The message bus the services talk through, whatever carries it.

Two streams:
- transitions: actors publish (confirmed, persistent), ingest consumes with acks; a
  message ingest cannot use is dead-lettered with the reason;
- events: model-published and reload events, fanned out so every subscriber (every
  actor) gets every event.
A service names the ends it uses (`TransitionPublisher`, `TransitionConsumer`,
`EventPublisher`, `EventSubscriber`; `ActorBus` is an actor's pair); `Bus` has them all.
RabbitMQ carries them in a deployment (`rabbitmq.py`); `cartridge up` and unit tests use
the in-process bus (`memory.py`). The services are the same code on either.

A bus raises `BusUnavailable` when it cannot do what was asked for now (connection lost,
reconnecting, the message refused): the caller may try again later. Each bus translates
its own library's errors into it, so services never see them.
"""

from __future__ import annotations

from typing import AsyncIterator, Callable, Protocol


class BusUnavailable(ConnectionError):
    """The bus cannot take or settle a message now; trying again later may work."""


class BacklogFull(BusUnavailable):
    """The bus refused a transition message: its backlog (`broker.max_backlog_bytes`) is
    full because ingest is behind. Nothing was stored; publish it again later."""


class Delivery(Protocol):
    body: bytes
    message_id: str | None

    async def ack(self, multiple: bool = False) -> None:
        """The message is stored: the bus may forget it (with `multiple`, also every
        earlier delivery of this consumer not settled yet: one frame for a whole flush)."""

    async def nack(self) -> None:
        """The message was not stored: deliver it again later (nothing to do if its
        consumer has already given it back)."""

    async def dead_letter(self, reason: str) -> None:
        """The message is unusable: move it aside with `reason`, never redeliver it."""


class BusConnection(Protocol):
    async def __aenter__(self) -> "BusConnection": ...

    async def __aexit__(self, *exc) -> None: ...


# One protocol per direction of each stream: a service asks for what it uses, and a bus
# implements what it is.

class TransitionPublisher(BusConnection, Protocol):
    async def publish_transitions(self, body: bytes, *, message_id: str) -> None:
        """Returns once the bus has the message safely (publisher confirm); `BacklogFull`
        if the backlog is at its bound."""


class TransitionConsumer(BusConnection, Protocol):
    async def consume_transitions(self, prefetch: int) -> AsyncIterator[Delivery]:
        """Start consuming: transition messages, at most `prefetch` unacknowledged."""

    async def pending_transitions(self) -> int:
        """Transition messages waiting to be consumed (for burst mode's "all done")."""

    async def dead_letter_depth(self) -> int:
        """Messages in the dead-letter queue now."""


class EventPublisher(BusConnection, Protocol):
    async def publish_event(self, body: bytes, *, expires_s: float | None = None) -> None:
        """Send a control event to every subscriber. `expires_s`: the event is worthless
        after that long (the trainer's pace): a queue drops it unread, so a durable
        subscriber that is away is never handed stale ones."""


class EventSubscriber(BusConnection, Protocol):
    async def subscribe_events(self, durable_queue: str | None = None) -> AsyncIterator[bytes]:
        """Subscribe now; the iterator yields every control event published from now on.
        `durable_queue`: a named queue that outlives this subscriber, so events published
        while it is away wait for it (the evaluator's; a bus within one process has no
        such "away" and may ignore it)."""

    def on_events_restored(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever the subscription is back after a lost connection
        (events published in between were missed). A bus that cannot lose its
        connection never calls it."""


class ActorBus(TransitionPublisher, EventSubscriber, Protocol):
    """What an actor uses (and all that a `cartridge up` worker's pipe carries)."""


class Bus(ActorBus, TransitionConsumer, EventPublisher, Protocol):
    """Every stream in both directions: RabbitMQ and the in-process bus."""
