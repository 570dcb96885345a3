"""Every service's `status()`: its counters as plain data, its state through start and
stop, and one JSON decoder for all of them."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from services.actor.service import ActorService
from services.ingest.service import IngestService
from services.trainer.service import TrainerService
from shared.bus import MemoryBus
from shared.games import get_game
from shared.replay import open_replay
from shared.status import ActorStatus, AnyStatus, IngestStatus, TrainerStatus
from shared.games.random_play import random_games
from tests.helpers import message, play_games

EMBEDDED = {"replay_backend": "sqlite", "model_store": "local"}


def round_trip(status):
    data = msgspec.json.encode(status)
    assert msgspec.json.decode(data)["service"] == type(status).__name__.removesuffix("Status").lower()
    assert msgspec.json.decode(data, type=AnyStatus) == status
    return status


async def test_actor_status_counts_its_games_and_publishes(make_config):
    config = make_config(actor={"actor_id": "a1", "max_episodes": 6}, storage=EMBEDDED)
    bus = MemoryBus()
    actor = ActorService(config, bus=bus)
    assert actor.status().state == "starting"
    await asyncio.wait_for(actor.run(), 60)
    s = round_trip(actor.status())
    assert isinstance(s, ActorStatus) and (s.name, s.state) == ("a1", "stopped")
    assert s.games == 6 and s.positions == s.published_positions > 0 and s.simulations > s.positions
    assert (s.unconfirmed, s.publish_retries, s.model_version, s.reload_latency_ms) == (0, 0, 0, None)
    assert bus.published >= 1


async def test_ingest_status_settles_what_the_bus_accepted(make_config):
    config = make_config(storage=EMBEDDED)
    bus = MemoryBus()
    games = random_games("tictactoe", games=5, seed=3)
    for i, g in enumerate(games):
        batch_id, body = message(g, actor_id=f"actor-{i % 2}")
        await bus.publish_transitions(body, message_id=batch_id)
    await bus.publish_transitions(b"not a batch", message_id="bad")
    ingest = IngestService(config, bus=bus)
    assert ingest.status().state == "starting"
    await asyncio.wait_for(ingest.run(burst=True), 60)
    s = round_trip(ingest.status())
    assert isinstance(s, IngestStatus) and s.state == "stopped"
    assert (s.messages, s.rows, s.dead_lettered, s.duplicates) == (6, sum(len(g) for g in games), 1, 0)
    assert s.settled == bus.published == 6 and s.flushes >= 1 and s.write_failures == 0
    assert set(s.actor_models) == {"actor-0", "actor-1"}


async def test_trainer_status_through_waiting_and_stopping(make_config):
    config = make_config(storage=EMBEDDED, training={"min_transitions": 10_000})
    trainer = TrainerService(config, bus=MemoryBus())
    stop = asyncio.Event()
    task = asyncio.create_task(trainer.run(stop))
    async with asyncio.timeout(60):
        while trainer.status().state != "running":
            await asyncio.sleep(0.01)
    stop.set()
    assert trainer.status().state == "stopping"
    await asyncio.wait_for(task, 60)
    s = round_trip(trainer.status())
    assert isinstance(s, TrainerStatus) and s.state == "stopped"
    assert (s.step, s.version, s.replay_size, s.window_size, s.samples, s.loss) == (0, 0, 0, 0, 0, None)


async def test_trainer_status_after_a_cycle(make_config):
    config = make_config(storage=EMBEDDED)
    async with open_replay(config.storage, get_game("tictactoe")) as replay:
        games = play_games(games=20)
        await replay.write([(f"b{i}", "tictactoe", "test", g) for i, g in enumerate(games)])
    trainer = TrainerService(config, bus=MemoryBus())
    await asyncio.wait_for(trainer.run(cycles=1), 120)
    s = round_trip(trainer.status())
    t = config.training
    rows = sum(len(g) for g in games)
    assert (s.step, s.version, s.samples) == (t.steps_per_iteration, 1, t.steps_per_iteration * t.batch_size)
    assert s.replay_size == s.window_size == s.positions_loaded == rows
    assert s.loss == pytest.approx(s.policy_loss + s.value_loss, rel=1e-5)
