"""Ingest on the real RabbitMQ and PostgreSQL: exactly once, dead letters, acks after commit."""

from __future__ import annotations

import asyncio

import aio_pika
import msgspec
import numpy as np
import pytest

from services.ingest.service import IngestService
from shared.bus import MemoryBus, RabbitBus
from shared.bus.rabbitmq import ERROR_HEADER
from shared.config import load_config
from shared.games import get_game
from shared.messages import Array, decode_transitions, encode_transitions
from shared.replay import open_replay
from shared.transitions import Transitions
from tests.helpers import assert_same_rows, message, play_games

GAME = get_game("tictactoe")


async def publish(config, bodies: list[tuple[str, bytes]]) -> None:
    async with RabbitBus(config.broker, name="test publisher") as bus:
        for batch_id, body in bodies:
            await bus.publish_transitions(body, message_id=batch_id)


async def stored(config) -> Transitions:
    async with open_replay(config.storage, GAME) as replay:
        _, rows = await replay.fetch_since("tictactoe", 0, 1_000_000)
    return rows


async def dead_letters(config) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(config.broker.url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(config.broker.dead_letter_queue, durable=True)
        found = []
        while (msg := await queue.get(no_ack=True, fail=False)) is not None:
            found.append(msg)
        return found


async def test_messages_land_once_with_their_content(make_config):
    config = make_config()
    games = play_games(games=6)
    bodies = [message(g) for g in games]
    await publish(config, bodies + bodies[:2])  # two messages delivered twice
    ingest = IngestService(config)
    await asyncio.wait_for(ingest.run(burst=True), 60)
    rows = await stored(config)
    assert_same_rows(rows, Transitions.concat(games))
    assert ingest.stats.duplicates == 2
    # Delivered twice again, in a later run: still stored once.
    await publish(config, bodies[:3])
    await asyncio.wait_for(IngestService(config).run(burst=True), 60)
    assert len(await stored(config)) == len(rows)


def corrupt(t: Transitions, **fields) -> bytes:
    return encode_transitions(msgspec.structs.replace(
        decode_transitions(message(t)[1]), **{k: Array.of(v) for k, v in fields.items()}))


@pytest.mark.parametrize("make_bad, reason", [
    (lambda t: b"\x93not msgpack at all", "not a transition batch"),
    (lambda t: msgspec.msgpack.encode({"hello": "world"}), "not a transition batch"),
    (lambda t: msgspec.msgpack.encode(msgspec.structs.replace(
        decode_transitions(message(t)[1]), schema_version=99)), "schema_version 99"),
    (lambda t: corrupt(t, policy=np.where(t.legal_mask, 0, 1 / np.maximum((~t.legal_mask).sum(1, keepdims=True), 1))
                       .astype(np.float32)), "policy"),
    (lambda t: corrupt(t, value=np.full(len(t), np.nan, np.float32)), "NaN"),
    (lambda t: corrupt(t, observation=np.zeros((len(t), 2, 4, 4), np.uint8)), "observation: expected shape"),
    (lambda t: corrupt(t, ply=t.ply.astype(np.int64)), "ply: expected dtype int16"),
])
async def test_malformed_messages_are_dead_lettered_and_the_rest_land(make_config, make_bad, reason):
    config = make_config()
    good = play_games(games=3)
    bad_game = play_games(games=1, seed=7)[0]
    bodies = [message(good[0]), ("bad-1", make_bad(bad_game)), message(good[1]), message(good[2])]
    await publish(config, bodies)
    ingest = IngestService(config)
    await asyncio.wait_for(ingest.run(burst=True), 60)
    assert_same_rows(await stored(config), Transitions.concat(good))
    dead = await dead_letters(config)
    assert [m.message_id for m in dead] == ["bad-1"]
    assert reason in dead[0].headers[ERROR_HEADER]
    assert ingest.stats.dead_lettered == 1


async def test_oversized_message_is_dead_lettered(make_config):
    config = make_config(broker={"max_message_bytes": 200})
    game = play_games(games=1)[0]
    await publish(config, [message(game)])
    await asyncio.wait_for(IngestService(config).run(burst=True), 60)
    dead = await dead_letters(config)
    assert len(dead) == 1 and "exceeds max_message_bytes (200)" in dead[0].headers[ERROR_HEADER]
    assert len(await stored(config)) == 0


class FailingReplay:
    """A replay whose database is "down" (a unit-test fake: no rows are ever stored)."""

    def __init__(self):
        self.attempts = 0

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        pass

    async def write(self, batches):
        self.attempts += 1
        raise ConnectionRefusedError("database is down")


async def test_nothing_is_acked_before_commit():
    config_bus = MemoryBus()
    config = load_config(environ={}, overrides={"common": {"env_id": "tictactoe"}, "ingest": {"flush_ms": 10}})
    games = play_games(games=3)
    for g in games:
        batch_id, body = message(g)
        await config_bus.publish_transitions(body, message_id=batch_id)
    replay = FailingReplay()
    stop = asyncio.Event()
    ingest = IngestService(config, bus=config_bus, replay=replay)
    task = asyncio.create_task(ingest.run(stop))
    async with asyncio.timeout(30):
        while replay.attempts < 2:  # it retried rather than acked or dropped
            await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 30)
    assert ingest.stats.rows == 0
    assert await config_bus.pending_transitions() == 3  # all handed back for redelivery
