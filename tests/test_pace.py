"""Samples per new position held to `training.samples_per_position`: the trainer waits at
the target and goes on when positions arrive; it tells actors to pause when positions run
ahead by more than `position_lead`; actors pause, resume, and play on when it falls silent."""

from __future__ import annotations

import asyncio

import pytest

from services.actor import pace as actor_pace
from services.actor.service import ActorService
from services.trainer import service as trainer_service
from services.trainer.pace import SamplePace
from services.trainer.service import TrainerService
from shared.bus import MemoryBus, open_bus
from shared.config import TrainingConfig
from shared.games import get_game
from shared.messages import ModelPublished, TrainerProgress, decode_event, encode_event, trainer_progress
from shared.replay import open_replay
from tests.helpers import play_games, running, wait_until

TTT = get_game("tictactoe")


def test_the_pace_allows_target_samples_per_position_and_flags_a_lead():
    pace = SamplePace(target=4.0, lead=100)
    assert pace.steps_allowed(256) == 0 and not pace.actors_ahead
    pace.positions = 1000  # pays for 4,000 samples: 15 steps of 256
    assert pace.steps_allowed(256) == 15
    assert pace.actors_ahead  # 1,000 positions, none trained on: 900 more than the lead
    pace.samples = 15 * 256
    assert pace.steps_allowed(256) == 0
    assert not pace.actors_ahead  # 4,000 - 3,840 = 160 samples ahead: 40 positions < 100
    assert pace.ratio == pytest.approx(3.84)
    off = SamplePace(target=0.0, lead=100, positions=10, samples=10_000)
    assert off.steps_allowed(256) is None and not off.actors_ahead


def test_a_lead_too_small_for_one_batch_is_refused():
    # The trainer would wait for a whole batch while actors wait for the trainer.
    with pytest.raises(ValueError, match="position_lead"):
        TrainingConfig(samples_per_position=0.5, position_lead=100, batch_size=256)
    TrainingConfig(samples_per_position=0.5, position_lead=512, batch_size=256)


async def write_games(config, games: int, first: int) -> int:
    async with open_replay(config.storage, TTT) as replay:
        parts = play_games(games=games, seed=first)
        await replay.write([(f"b{first + i}", "tictactoe", "test", t) for i, t in enumerate(parts)])
        return sum(len(t) for t in parts)


async def test_the_trainer_waits_at_the_target_and_goes_on_when_positions_arrive(make_config):
    # PostgreSQL replay. The first load counts as min_transitions (50) positions: at one
    # sample per position that pays for one batch of 32, then training waits.
    config = make_config(training={"samples_per_position": 1.0, "position_lead": 10_000, "batch_size": 32,
                                   "min_transitions": 50, "steps_per_iteration": 1000})
    await write_games(config, 30, first=0)
    trainer = TrainerService(config, bus=MemoryBus())
    async with running(trainer) as tasks:
        await wait_until(lambda: trainer.status().waiting_for_positions, "the trainer to wait", tasks=tasks)
        assert trainer.step == 1 and trainer.pace.samples == 32
        added = await write_games(config, 30, first=100)
        expected = 1 + (50 + added - 32) // 32  # every batch the new positions pay for
        await wait_until(lambda: trainer.step == expected and trainer.status().waiting_for_positions,
                         "the trainer to use the new positions", tasks=tasks)
        assert trainer.pace.ratio <= 1.0


async def test_the_trainer_announces_when_actors_should_pause(make_config, monkeypatch):
    monkeypatch.setattr(trainer_service, "PACE_EVERY_S", 0.01)
    config = make_config(training={"samples_per_position": 2.0, "position_lead": 100})
    bus = MemoryBus()
    events = await bus.subscribe_events()
    trainer = TrainerService(config, bus=bus)
    trainer.pace.positions, trainer.pace.samples = 1000, 1000  # 500 positions ahead
    announcing = asyncio.create_task(trainer._announce_pace())
    try:
        first = decode_event(await asyncio.wait_for(anext(events), 10))
        assert first == TrainerProgress(env_id="tictactoe", samples=1000, positions=1000, pause_actors=True,
                                        interval_s=0.01, published_at=first.published_at)
        trainer.pace.samples = 1900  # 50 positions ahead: within the lead
        while (event := decode_event(await asyncio.wait_for(anext(events), 10))).pause_actors:
            pass
        assert event.samples == 1900
    finally:
        announcing.cancel()


def test_only_the_trainers_announcements_are_read_as_its_pace():
    progress = TrainerProgress(env_id="connect4", samples=1, positions=2, pause_actors=True, interval_s=5)
    assert trainer_progress(encode_event(progress)) == progress
    published = ModelPublished(env_id="connect4", version=1, key="k", sha256="s", size=1)
    assert trainer_progress(encode_event(published)) is None
    assert trainer_progress(b'{"type": "trainer_progress", "samples": "many"}') is None  # malformed
    assert trainer_progress(b"not json") is None


def progress(pause: bool, interval_s: float = 5.0, env_id: str = "tictactoe") -> TrainerProgress:
    return TrainerProgress(env_id=env_id, samples=0, positions=0, pause_actors=pause, interval_s=interval_s)


async def test_the_gate_pauses_resumes_and_lapses_when_the_trainer_falls_silent():
    gate, stop = actor_pace.TrainerPace("tictactoe"), asyncio.Event()
    gate.observe(progress(True, env_id="connect4"))  # another game's trainer
    assert not gate.paused
    gate.observe(progress(True))
    waiting = asyncio.create_task(gate.wait(stop))
    await asyncio.sleep(0)
    assert gate.paused and not waiting.done()
    gate.observe(progress(False))
    await asyncio.wait_for(waiting, 1)
    assert gate.pauses == 1
    gate.observe(progress(True, interval_s=0.02))  # then silence: lapses after 3 intervals
    assert gate.paused
    await asyncio.wait_for(gate.wait(stop), 5)
    assert not gate.paused and gate.pauses == 2
    gate.observe(progress(True))
    stop.set()
    await asyncio.wait_for(gate.wait(stop), 1)  # a stop ends the wait


async def test_actors_pause_while_the_trainer_asks_over_rabbitmq(make_config):
    config = make_config(actor={"actor_id": "paced", "parallel_games": 4})
    actor = ActorService(config)  # the real broker, as in a deployment
    async with open_bus(config.broker, name="test trainer") as bus, running(actor) as tasks:
        await wait_until(lambda: actor.status().positions > 0, "self-play", tasks=tasks)
        await bus.publish_event(encode_event(progress(True)))
        await wait_until(lambda: actor.status().paused, "the actor to pause", tasks=tasks)
        await asyncio.sleep(0.1)  # a search step under way when the pause came ends
        held = actor.status().positions
        await asyncio.sleep(0.5)
        assert actor.status().positions == held
        await bus.publish_event(encode_event(progress(False)))
        await wait_until(lambda: actor.status().positions > held, "self-play to resume", tasks=tasks)
        assert not actor.status().paused and actor.pace.pauses == 1


async def test_pace_announcements_expire_unread_in_a_durable_queue(make_config):
    # An evaluator that is away must not come back to a backlog of stale announcements.
    config = make_config()
    queue = config.broker.evaluator_queue
    async with open_bus(config.broker, name="test evaluator") as evaluator:
        await evaluator.subscribe_events(durable_queue=queue)  # declares it; then the evaluator leaves
    async with open_bus(config.broker, name="test trainer") as trainer:
        await trainer.publish_event(encode_event(progress(True)), expires_s=0.05)
        published = ModelPublished(env_id="tictactoe", version=1, key="k", sha256="s", size=1)
        await trainer.publish_event(encode_event(published))
    await asyncio.sleep(0.3)  # past the announcement's expiry
    async with open_bus(config.broker, name="test evaluator") as evaluator:
        events = await evaluator.subscribe_events(durable_queue=queue)
        assert decode_event(await asyncio.wait_for(anext(events), 10)) == published
