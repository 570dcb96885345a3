"""The transitions backlog is bounded (`broker.max_backlog_bytes`): when ingest is behind,
the bus refuses new games (`BacklogFull`, nothing stored) instead of growing until the
broker blocks every publisher; model events keep flowing meanwhile. The same test runs on
the in-memory bus and on the real RabbitMQ."""

from __future__ import annotations

import asyncio
import logging

import aio_pika
import pytest

from services.actor.publisher import GamePublisher
from shared.bus import BacklogFull, MemoryBus, RabbitBus
from shared.bus.rabbitmq import declare_topology
from shared.messages import encode_transitions
from shared.transitions import to_batch
from tests.helpers import play_games, wait_until

BOUND = 64 * 1024
BODY = b"x" * 9000  # about one Connect4 game


@pytest.fixture(params=["memory", "rabbitmq"])
def open_bus(request, make_config):
    config = make_config(broker={"max_backlog_bytes": BOUND})

    def build():
        if request.param == "memory":
            return MemoryBus(max_backlog_bytes=config.broker.max_backlog_bytes)
        return RabbitBus(config.broker, name="test backlog")
    return build


async def fill(bus) -> int:
    """Publish until the bus refuses; how many it took."""
    for n in range(1000):
        try:
            await bus.publish_transitions(BODY, message_id=f"{n:032d}")
        except BacklogFull:
            return n
    raise AssertionError("the bus never refused a message")


async def test_full_backlog_refuses_games_but_events_flow(open_bus):
    async with open_bus() as bus:
        events = await bus.subscribe_events()
        accepted = await fill(bus)
        # The bound holds: what was accepted is about BOUND bytes, not more.
        assert BOUND // len(BODY) <= accepted <= BOUND // len(BODY) + 2
        with pytest.raises(BacklogFull):
            await bus.publish_transitions(BODY, message_id="f" * 32)

        # A model event still goes through at once.
        await bus.publish_event(b'{"type": "reload"}')
        assert await asyncio.wait_for(anext(events), 10) == b'{"type": "reload"}'

        # Ingest taking messages makes room again; nothing accepted was lost.
        deliveries = await bus.consume_transitions(prefetch=1000)
        taken = []
        for _ in range(accepted):
            delivery = await asyncio.wait_for(anext(deliveries), 10)
            taken.append(delivery.message_id)
            await delivery.ack()
        assert taken == [f"{n:032d}" for n in range(accepted)]
        await bus.publish_transitions(BODY, message_id="a" * 32)


async def test_a_queue_declared_without_the_bound_is_used_with_a_warning(make_config, caplog):
    config = make_config()
    # As an earlier version of Cartridge declared it: quorum, no length limit.
    connection = await aio_pika.connect(config.broker.url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(config.broker.transitions_queue, durable=True,
                                    arguments={"x-queue-type": "quorum",
                                               "x-dead-letter-exchange": config.broker.dead_letter_exchange})
    caplog.set_level(logging.WARNING, logger="shared.bus.rabbitmq")
    async with RabbitBus(config.broker, name="test old queue") as bus:
        await bus.publish_transitions(BODY, message_id="b" * 32)
        assert await bus.pending_transitions() == 1
        channel = await bus._confirming_channel()
        await declare_topology(channel, config.broker)  # again, on a channel the broker closed once
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(config.broker.transitions_queue in w and "set_policy" in w for w in warning), warning


class CountingBus:
    """The in-memory bus, counting refused publishes per batch."""

    def __init__(self, bus: MemoryBus):
        self.bus = bus
        self.refused: dict[str, int] = {}

    async def publish_transitions(self, body: bytes, message_id: str) -> None:
        try:
            await self.bus.publish_transitions(body, message_id=message_id)
        except BacklogFull:
            self.refused[message_id] = self.refused.get(message_id, 0) + 1
            raise


async def test_a_full_backlog_is_probed_by_one_publish_while_the_others_wait():
    """Hundreds of publishes in flight must not each retry against a full queue: one
    probes (with backoff), the rest wait for it, then all go through, none lost."""
    game = play_games(games=1)[0]
    body_size = len(encode_transitions(to_batch(game, env_id="tictactoe", actor_id="t")))
    bus = CountingBus(MemoryBus(max_backlog_bytes=3 * body_size))
    publisher = GamePublisher(bus, max_unconfirmed=32)
    batches = [to_batch(game, env_id="tictactoe", actor_id="t") for _ in range(20)]
    for batch in batches:
        await publisher.publish(batch)
    await wait_until(lambda: max(bus.refused.values(), default=0) >= 4, "the prober's fourth try")

    others = [n for n in bus.refused.values() if n < 4]
    assert len(others) == len(bus.refused) - 1, bus.refused  # exactly one prober
    assert all(n == 1 for n in others), f"waiting publishes retried on their own: {bus.refused}"

    deliveries = await bus.bus.consume_transitions(prefetch=100)
    taken = []
    while len(taken) < len(batches):
        delivery = await asyncio.wait_for(anext(deliveries), 30)
        taken.append(delivery.message_id)
        await delivery.ack()
    assert await publisher.drain(timeout=30)
    assert sorted(taken) == sorted(b.batch_id for b in batches)
    assert publisher.confirmed_batches == len(batches)
