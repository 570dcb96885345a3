"""The bus on RabbitMQ (aio-pika, robust connection).

Topology, declared idempotently by every service at start-up (with `broker.declare` off,
only checked: least-privilege logins may not declare; `cartridge provision` does it):
- `transitions_queue`: durable quorum queue (replicated and crash-safe, the type
  RabbitMQ recommends for data that must not be lost; measured as fast as classic here),
  dead-lettering to `dead_letter_exchange`;
- `dead_letter_exchange` (direct) -> `dead_letter_queue`: unusable messages, kept with
  the reason in the `x-cartridge-error` header, bounded (`max_dead_letter_bytes`, the
  oldest dropped first);
- `models_exchange` (fanout): model-published and reload events; each subscriber binds
  its own exclusive, auto-deleted queue, so every actor gets every event.
A queue's arguments cannot change once it exists: changing the queue type means deleting
the queue first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import dataclass
from typing import AsyncIterator

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import DeliveryError
from aiormq.exceptions import (
    AMQPConnectionError,
    AMQPError,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ProbableAuthenticationError,
)

from shared import tls
from shared.bus.base import BacklogFull, BusUnavailable
from shared.config import BrokerConfig, mask_url
from shared.retry import Link, Refused, reach

log = logging.getLogger(__name__)

CONTENT_TYPE_MSGPACK = "application/msgpack"  # transition batches
CONTENT_TYPE_JSON = "application/json"  # control events
ERROR_HEADER = "x-cartridge-error"  # why a message was dead-lettered

RECONNECT_INTERVAL_S = 1.0  # a robust connection's retry period after it was lost


def connection_options(broker: BrokerConfig) -> dict:
    """What every AMQP connection of a service is opened with besides the URL: the TLS
    context trusting `broker.ca_file`, when set (else aiormq's own: the system's trust
    store, or a `cafile` query parameter of the URL)."""
    context = tls.client_context(broker.ca_file) if broker.url.startswith("amqps://") else None
    return {"ssl_context": context} if context is not None else {}


def untrusted_broker(broker: BrokerConfig, exc: BaseException) -> str | None:
    """The line for a broker whose TLS certificate is not trusted, if that is why `exc`
    happened."""
    error = tls.certificate_error(exc)
    return tls.untrusted(f"RabbitMQ at {mask_url(broker.url)}", error, "broker.ca_file") if error else None


async def connect(broker: BrokerConfig, *, name: str) -> AbstractRobustConnection:
    """A robust connection: after a broker restart it re-opens itself and restores its
    channels, queues and consumers (publishes in flight at that moment still fail and
    must be retried by the caller). At start-up the broker may not be up yet: retry
    with exponential backoff, at most `connect_attempts` times. A refused login or an
    untrusted TLS certificate is a configuration error and fails at once."""
    url = mask_url(broker.url)

    async def attempt() -> AbstractRobustConnection:
        try:
            return await aio_pika.connect_robust(
                broker.url, client_properties={"connection_name": name},
                reconnect_interval=RECONNECT_INTERVAL_S, **connection_options(broker),
            )
        except ProbableAuthenticationError as exc:
            raise Refused(f"RabbitMQ at {url} refused the login: {exc}") from None
        except (OSError, AMQPConnectionError) as exc:
            if (untrusted := untrusted_broker(broker, exc)) is not None:
                raise Refused(untrusted) from None
            raise

    connection = await reach(f"RabbitMQ at {url}", attempt, attempts=broker.connect_attempts,
                             errors=(OSError, AMQPConnectionError))
    log.info("connected to RabbitMQ at %s as %r", url, name)
    return connection


@dataclass(frozen=True)
class Topology:
    transitions_queue: AbstractQueue
    dead_letter_exchange: AbstractExchange
    dead_letter_queue: AbstractQueue
    models_exchange: AbstractExchange


def transitions_queue_arguments(broker: BrokerConfig) -> dict:
    # Quorum, not classic: the durable queue type RabbitMQ recommends for data that must
    # not be lost (Raft-replicated once there are several nodes, fsynced before a
    # publisher confirm), and it adds poison-message handling (`x-delivery-limit`) should
    # we want it. Measured here with 9 KB persistent confirmed messages and 256 in
    # flight: 8.7k msg/s quorum vs 8.2k classic, so it costs nothing.
    # Bounded, refusing new messages when full: an unbounded backlog (ingest behind or
    # down) grows until the broker's disk or memory alarm blocks every publishing
    # connection, model events included (measured: a 7.7 s disk alarm held an event 7.7 s).
    # With reject-publish the publisher gets a nack and waits; nothing is dropped.
    # A queue's arguments are fixed when it is created: changing any of them (type,
    # dead-letter exchange, bound) means deleting the queue first; `declare_topology`
    # accepts a queue created with other arguments, with a warning.
    return {"x-queue-type": "quorum", "x-dead-letter-exchange": broker.dead_letter_exchange,
            "x-max-length-bytes": broker.max_backlog_bytes, "x-overflow": "reject-publish"}


def dead_letter_queue_arguments(broker: BrokerConfig) -> dict:
    # Bounded so that a stream of bad messages cannot fill the broker's disk; when full
    # the oldest go (drop-head, the default overflow): the newest show what is wrong now.
    return {"x-max-length-bytes": broker.max_dead_letter_bytes}


async def _declare_bounded(channel: AbstractChannel, name: str, arguments: dict, policy: dict) -> AbstractQueue:
    """Declare queue `name` with `arguments`; one declared by an earlier version with
    other arguments is used as it is, with a warning that gives the `policy` (the
    arguments a policy can set) that bounds it."""
    try:
        return await channel.declare_queue(name, durable=True, arguments=arguments)
    except ChannelPreconditionFailed as exc:  # the broker closed the channel: open it again
        log.warning(
            "queue %s exists with other arguments than this version declares (%s); using it as it is. "
            "It may be unbounded: bound it with a policy, e.g. `rabbitmqctl set_policy "
            "%s '^%s$' '%s' --apply-to queues`, or delete the queue while it is empty to have it declared anew",
            name, exc.args[0] if exc.args else exc, f"{name}-bound", re.escape(name), json.dumps(policy))
        await channel.reopen()
        return await channel.declare_queue(name, passive=True)


class TopologyMissing(Refused):
    """`broker.declare` is off and an exchange or queue is not there: the admin has not
    declared it (`cartridge provision`)."""

    @classmethod
    def of(cls, exc: ChannelNotFoundEntity) -> "TopologyMissing":
        return cls(f"RabbitMQ: {exc.args[-1] if exc.args else exc}; with broker.declare = false "
                   "the admin declares the topology first (`cartridge provision`)")


async def check_topology(channel: AbstractChannel, broker: BrokerConfig) -> Topology:
    """What a least-privilege login does instead of declaring: confirm, with passive
    declares (which need no right), that the exchanges and queues exist, as they are."""
    try:
        return Topology(
            await channel.declare_queue(broker.transitions_queue, passive=True),
            await channel.get_exchange(broker.dead_letter_exchange, ensure=True),
            await channel.declare_queue(broker.dead_letter_queue, passive=True),
            await channel.get_exchange(broker.models_exchange, ensure=True),
        )
    except ChannelNotFoundEntity as exc:
        raise TopologyMissing.of(exc) from None


async def declare_topology(channel: AbstractChannel, broker: BrokerConfig) -> Topology:
    """Declare (or confirm) the exchanges and queues; safe to call any number of times.
    With `broker.declare` off, only check them (`check_topology`)."""
    if not broker.declare:
        return await check_topology(channel, broker)
    dlx = await channel.declare_exchange(
        broker.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    dead = await _declare_bounded(channel, broker.dead_letter_queue, dead_letter_queue_arguments(broker),
                                  {"max-length-bytes": broker.max_dead_letter_bytes})
    # Messages dead-lettered from the transitions queue keep its name as routing key.
    await dead.bind(dlx, routing_key=broker.transitions_queue)
    transitions = await _declare_bounded(
        channel, broker.transitions_queue, transitions_queue_arguments(broker),
        {"max-length-bytes": broker.max_backlog_bytes, "overflow": "reject-publish"})
    models = await channel.declare_exchange(
        broker.models_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
    return Topology(transitions, dlx, dead, models)


async def bind_event_queue(channel: AbstractChannel, broker: BrokerConfig,
                           durable_queue: str | None = None) -> AbstractQueue:
    """A private queue receiving every event on the models exchange from now on; the
    broker deletes it when this connection goes. (On a robust channel aio-pika names it
    `amq_<uuid>` itself rather than letting the server pick `amq.gen-*`, so that it can
    declare it again after a reconnect.) A `durable_queue` is kept instead, events and all,
    while nobody consumes it (the evaluator's). With `broker.declare` off, the exchange and
    the durable queue (declared and bound by the admin) are only checked: a subscriber
    declares nothing but its own private queue."""
    if not broker.declare:
        try:
            exchange = await channel.get_exchange(broker.models_exchange, ensure=True)
            if durable_queue:
                return await channel.declare_queue(durable_queue, passive=True)
        except ChannelNotFoundEntity as exc:
            raise TopologyMissing.of(exc) from None
    else:
        exchange = await channel.declare_exchange(
            broker.models_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
    if durable_queue:
        queue = await channel.declare_queue(durable_queue, durable=True)
    else:
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange)
    return queue


# What a publish, ack or nack raises when the connection (and so the channel the message
# came on) is gone. The broker then redelivers every unacked message by itself, so the
# caller logs it and carries on; any other AMQP error is a bug or a topology problem.
CONNECTION_LOST = (ConnectionError, ChannelInvalidStateError)
# What a publish may raise that trying again can cure: the above, a nack, a channel
# closed under it, "connection was not opened" while reconnecting, no confirm in time.
PUBLISH_FAILED = (*CONNECTION_LOST, AMQPError, RuntimeError, TimeoutError)


@contextlib.contextmanager
def unavailable_on(errors: tuple[type[BaseException], ...]):
    """Services see `BusUnavailable`, never aio-pika's errors. (A lost connection is
    reported by the connection itself, see `RabbitBus._watch`; a refused publish is the
    publisher's to report.)"""
    try:
        yield
    except errors as exc:
        raise BusUnavailable(f"RabbitMQ: {type(exc).__name__}: {exc}") from exc


@dataclass
class RabbitDelivery:
    message: AbstractIncomingMessage
    bus: "RabbitBus"

    @property
    def body(self) -> bytes:
        return self.message.body

    @property
    def message_id(self) -> str | None:
        return self.message.message_id

    async def ack(self, multiple: bool = False) -> None:
        with unavailable_on(CONNECTION_LOST):
            await self.message.ack(multiple=multiple)

    async def nack(self) -> None:
        with unavailable_on(CONNECTION_LOST):
            await self.message.nack(requeue=True)

    async def dead_letter(self, reason: str) -> None:
        # Published explicitly (not basic.reject) so the reason travels with it; acked
        # only once the dead-letter copy is confirmed, so it is never lost in between.
        headers = dict(self.message.headers or {})
        headers[ERROR_HEADER] = reason[:1000]
        with unavailable_on(CONNECTION_LOST):
            channel = await self.bus._confirming_channel()
            dlx = await channel.get_exchange(self.bus.config.dead_letter_exchange, ensure=False)
            await dlx.publish(
                aio_pika.Message(self.message.body, headers=headers, message_id=self.message.message_id,
                                 content_type=self.message.content_type,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=self.bus.config.transitions_queue,
            )
            await self.message.ack()


class RabbitBus:
    def __init__(self, broker: BrokerConfig, *, name: str):
        self.config, self.name = broker, name
        self.connection: AbstractRobustConnection | None = None
        self._events_connection: AbstractRobustConnection | None = None
        self._publisher: AbstractChannel | None = None
        self.topology: Topology | None = None
        self.link = Link(f"RabbitMQ at {mask_url(broker.url)}", log)
        self._closing = False
        self._restored_callbacks: list = []

    async def __aenter__(self) -> "RabbitBus":
        self.connection = await connect(self.config, name=self.name)
        self._watch(self.connection, "connection")
        channel = await self._confirming_channel()
        self.topology = await declare_topology(channel, self.config)
        return self

    async def __aexit__(self, *exc) -> None:
        self._closing = True
        for connection in (self._events_connection, self.connection):
            if connection is not None:
                await connection.close()

    def _watch(self, connection: AbstractRobustConnection, part: str) -> None:
        """Tell the link when `connection` is lost and when aio-pika has it open again
        (channels and consumers restored): one line each, whatever fails in between."""
        def closed(_connection, exc: BaseException | None = None) -> None:
            if not self._closing:
                self.link.failed(f"{part} closed: {exc}" if exc else f"{part} closed", part)

        connection.close_callbacks.add(closed)
        connection.reconnect_callbacks.add(lambda _connection: self.link.ok(part))
        self.link.ok(part)

    async def _confirming_channel(self) -> AbstractChannel:
        if self._publisher is None or self._publisher.is_closed:
            try:
                self._publisher = await self.connection.channel(publisher_confirms=True)
            except RuntimeError as exc:  # aio-pika: "Connection was not opened" (reconnecting)
                raise ConnectionError(f"RabbitMQ connection is down: {exc}") from None
        return self._publisher

    async def publish_transitions(self, body: bytes, *, message_id: str) -> None:
        try:
            with unavailable_on(PUBLISH_FAILED):
                channel = await self._confirming_channel()
                await channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                     content_type=CONTENT_TYPE_MSGPACK, message_id=message_id),
                    routing_key=self.config.transitions_queue,
                )
        except BusUnavailable as exc:
            if isinstance(exc.__cause__, DeliveryError):  # a nack: reject-publish, the queue is at its bound
                raise BacklogFull(f"RabbitMQ refused the message: queue {self.config.transitions_queue} is full "
                                  f"(max_backlog_bytes {self.config.max_backlog_bytes})") from None
            raise

    async def consume_transitions(self, prefetch: int) -> AsyncIterator[RabbitDelivery]:
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = (await declare_topology(channel, self.config)).transitions_queue
        return self._deliveries(queue)

    async def _deliveries(self, queue) -> AsyncIterator[RabbitDelivery]:
        async with queue.iterator() as messages:
            async for message in messages:
                yield RabbitDelivery(message, self)

    async def pending_transitions(self) -> int:
        """Messages ready in the transitions queue (not counting unacked ones)."""
        with unavailable_on(CONNECTION_LOST):
            channel = await self._confirming_channel()
            # The raw channel: aio-pika's robust channel answers a repeated declare from
            # its cache, with the count of the first declaration.
            raw = await channel.get_underlay_channel()
            return (await raw.queue_declare(self.config.transitions_queue, passive=True)).message_count

    async def dead_letter_depth(self) -> int:
        with unavailable_on(CONNECTION_LOST):
            raw = await (await self._confirming_channel()).get_underlay_channel()
            return (await raw.queue_declare(self.config.dead_letter_queue, passive=True)).message_count

    async def publish_event(self, body: bytes, *, expires_s: float | None = None) -> None:
        with unavailable_on(PUBLISH_FAILED):
            channel = await self._confirming_channel()
            exchange = await channel.get_exchange(self.config.models_exchange, ensure=False)
            message = aio_pika.Message(body, content_type=CONTENT_TYPE_JSON, expiration=expires_s)
            await exchange.publish(message, routing_key="")

    async def subscribe_events(self, durable_queue: str | None = None) -> AsyncIterator[bytes]:
        # Control events get a connection of their own: RabbitMQ throttles a connection
        # that publishes faster than queues take (flow control), and a model event must
        # not wait behind an actor's flood of transitions (measured: 42 s instead of 50 ms
        # with 8 actors on one connection each).
        if self._events_connection is None:
            self._events_connection = await connect(self.config, name=f"{self.name} events")
            self._watch(self._events_connection, "events connection")
            # aio-pika calls these once the channels, queues and consumers are restored:
            # from then on no event is missed, so a look at the store then is up to date.
            self._events_connection.reconnect_callbacks.add(lambda _connection: self._events_restored())
        queue = await bind_event_queue(await self._events_connection.channel(), self.config, durable_queue)
        # Consuming from here on, not from the first read: a consumer that exists is
        # restored with its channel after a reconnect; one still being set up when the
        # connection drops would fail instead.
        messages = queue.iterator(no_ack=True)
        await messages.consume()
        return self._events(messages)

    def on_events_restored(self, callback) -> None:
        self._restored_callbacks.append(callback)

    def _events_restored(self) -> None:
        for callback in self._restored_callbacks:
            callback()

    @staticmethod
    async def _events(messages) -> AsyncIterator[bytes]:
        async with messages:
            async for message in messages:
                yield message.body
