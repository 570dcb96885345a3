"""Heartbeats on RabbitMQ: every service sends its `status()` snapshot every few seconds,
so that `cartridge status` and the web page see every service, actors on other hosts too.

Topology (declared idempotently by senders and readers, or only checked with
`broker.declare` off): a fanout exchange
`broker.heartbeats`, bound to a stream queue of the same name. A stream is read without
being consumed away, from any point in time: a reader starting now asks for the last
`status.lookback_s` seconds and sees every service that beat in that window, including
one that has gone silent since (that is how a dead service is noticed by a one-shot
`cartridge status`). Retention is an hour, in small segments so old beats really go.

Heartbeats have a connection of their own, opened in the background: a broker that is
away delays no service, and the service's own connections are not touched. A beat that
cannot be sent is skipped (the next one says the same, newer).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import socket
import time
from typing import AsyncIterator, Callable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection
from aiormq.exceptions import AMQPError

from shared.bus.rabbitmq import connection_options, untrusted_broker
from shared.config import BrokerConfig, Config, mask_url
from shared.messages import Heartbeat, MessageError, decode_heartbeat, encode_heartbeat
from shared.retry import DependencyError
from shared.status import AnyStatus

log = logging.getLogger(__name__)

STREAM_ARGUMENTS = {"x-queue-type": "stream", "x-max-age": "1h", "x-stream-max-segment-size-bytes": 1_000_000}
SEND_ERRORS = (ConnectionError, OSError, AMQPError, RuntimeError, TimeoutError)
LAST_BEAT_S = 3.0  # how long a stopping service waits to say so


async def declare(channel: AbstractChannel, broker: BrokerConfig) -> tuple[aio_pika.abc.AbstractExchange, AbstractQueue]:
    if not broker.declare:  # a least-privilege login: the admin declared them (passive needs no right)
        return (await channel.get_exchange(broker.heartbeats, ensure=True),
                await channel.declare_queue(broker.heartbeats, passive=True))
    exchange = await channel.declare_exchange(broker.heartbeats, aio_pika.ExchangeType.FANOUT, durable=True)
    stream = await channel.declare_queue(broker.heartbeats, durable=True, arguments=STREAM_ARGUMENTS)
    await stream.bind(exchange)
    return exchange, stream


class HeartbeatSender:
    """Sends `status()` every `status.heartbeat_s` while entered, and once more on exit."""

    def __init__(self, config: Config, status: Callable[[], AnyStatus]):
        self.broker, self.interval = config.broker, config.status.heartbeat_s
        self.status = status
        self.host = socket.gethostname()
        self.sent = 0
        self._connection: AbstractRobustConnection | None = None
        self._exchange = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "HeartbeatSender":
        self._task = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LAST_BEAT_S):
                await self.send()  # state `stopped`: gone on purpose
        if self._connection is not None:
            with contextlib.suppress(*SEND_ERRORS):
                await self._connection.close()

    async def _beat(self) -> None:
        while True:
            await self.send()
            await asyncio.sleep(self.interval)

    async def send(self) -> bool:
        """One heartbeat now; False (logged at DEBUG) if the broker cannot take it."""
        try:
            if self._exchange is None:
                if self._connection is None:
                    self._connection = await aio_pika.connect_robust(
                        self.broker.url, client_properties={"connection_name": "heartbeats"},
                        **connection_options(self.broker))
                self._exchange, _ = await declare(await self._connection.channel(), self.broker)
            beat = Heartbeat(interval_s=self.interval, host=self.host, status=self.status())
            await self._exchange.publish(
                aio_pika.Message(encode_heartbeat(beat), content_type="application/json",
                                 timestamp=datetime.datetime.now(datetime.timezone.utc)), routing_key="")
        except SEND_ERRORS as exc:
            log.debug("heartbeat not sent (%s: %s)", type(exc).__name__, exc)
            self._exchange = None  # declare again on a fresh channel next time
            return False
        self.sent += 1
        return True


async def follow(broker: BrokerConfig, since: float, *, name: str = "heartbeat reader") -> AsyncIterator[Heartbeat]:
    """Every heartbeat sent since `since` (unix time), then each new one as it comes.
    `DependencyError` if RabbitMQ cannot be reached now."""
    url = mask_url(broker.url)
    try:
        connection = await aio_pika.connect_robust(broker.url, client_properties={"connection_name": name},
                                                   **connection_options(broker))
    except (OSError, AMQPError) as exc:
        raise DependencyError(untrusted_broker(broker, exc) or f"RabbitMQ at {url} is unreachable: {exc}") from None
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=500)  # a stream needs a prefetch and acks
        _, stream = await declare(channel, broker)
        beats: asyncio.Queue[bytes] = asyncio.Queue()

        async def received(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            beats.put_nowait(message.body)
            await message.ack()

        offset = datetime.datetime.fromtimestamp(since, datetime.timezone.utc)
        await stream.consume(received, arguments={"x-stream-offset": offset})
        while True:
            body = await beats.get()
            try:
                beat = decode_heartbeat(body)
            except MessageError as exc:
                log.debug("ignored a message on the heartbeats stream: %s", exc)
                continue
            if beat.sent_at >= since:  # the stream starts at a chunk boundary: maybe a bit earlier
                yield beat
    finally:
        with contextlib.suppress(*SEND_ERRORS):
            await connection.close()


async def read_recent(broker: BrokerConfig, lookback_s: float, *, quiet_s: float = 0.5,
                      limit_s: float = 10.0) -> list[Heartbeat]:
    """The heartbeats of the last `lookback_s` seconds: read until none came for `quiet_s`
    (the stream's backlog is delivered at once), at most `limit_s`."""
    since, out = time.time() - lookback_s, []
    beats = follow(broker, since, name="cartridge status")
    deadline = time.monotonic() + limit_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(await asyncio.wait_for(anext(beats), min(quiet_s, left)))
            except TimeoutError:
                break
    finally:
        await beats.aclose()
    return out
