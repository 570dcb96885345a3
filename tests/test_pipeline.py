"""End to end on the real services: actors -> RabbitMQ -> ingest -> PostgreSQL -> trainer
-> S3 -> model-published event -> every actor hot-reloads; then manual reloads."""

from __future__ import annotations

import asyncio

import pytest

from cartridge.reload import publish_reload
from services.actor.service import ActorService
from services.ingest.service import IngestService
from services.trainer.service import TrainerService
from shared.model_store import open_model_store
from shared.replay import open_replay
from tests.helpers import WAIT_S, running, wait_until

async def test_two_actors_to_trainer_and_back(make_config):
    config = make_config()
    actors = [ActorService(make_config(actor={"actor_id": f"actor-{i}", "parallel_games": 8})) for i in range(2)]
    ingest = IngestService(config)
    async with running(*actors, ingest) as tasks:
        await wait_until(lambda: all(a.ready.is_set() for a in actors), "actors ready", tasks=tasks)
        assert all(a.model_version == 0 for a in actors)  # no model yet: uniform

        trainer = TrainerService(config)
        await asyncio.wait_for(trainer.run(cycles=1), WAIT_S)
        assert trainer.version == 1 and trainer.step == config.training.steps_per_iteration

        await wait_until(lambda: all(a.model_version == 1 for a in actors), "model 1 on both actors", tasks=tasks)
        for actor in actors:
            version, latency_ms = actor.reloader.updates[-1]
            assert version == 1
            assert latency_ms is not None and latency_ms < 1000, f"reload took {latency_ms} ms"

        # Games played after the switch are stored as model 1's.
        async with open_replay(config.storage, actors[0].game) as replay:
            await wait_until(lambda: actors[0].publisher.confirmed_rows > 0, "a published game", tasks=tasks)
            first_count = await replay.count(config.common.env_id)
            assert first_count >= config.training.min_transitions


async def test_reload_rollback_and_unknown_version(make_config):
    config = make_config()
    # Two model versions in the store, made by two trainer cycles on stored data.
    actor = ActorService(make_config(actor={"actor_id": "solo"}))
    ingest = IngestService(config)
    async with running(actor, ingest) as tasks:
        await wait_until(lambda: actor.ready.is_set(), "actor ready", tasks=tasks)
        trainer = TrainerService(config)
        await asyncio.wait_for(trainer.run(cycles=2), WAIT_S)
        await wait_until(lambda: actor.model_version == 2, "model 2", tasks=tasks)

        await publish_reload(config, version=1)  # roll back
        await wait_until(lambda: actor.model_version == 1, "rollback to model 1", tasks=tasks)

        handled = actor.reloader.events_handled
        await publish_reload(config, version=99)  # does not exist: keep model 1
        await wait_until(lambda: actor.reloader.events_handled > handled, "reload 99 handled", tasks=tasks)
        assert actor.model_version == 1
        assert "99" in actor.reloader.failures[-1] and "keeping model 1" in actor.reloader.failures[-1]

        await publish_reload(config, version=None)  # newest: model 2
        await wait_until(lambda: actor.model_version == 2, "reload to newest", tasks=tasks)
        assert [v for v, _ in actor.reloader.updates] == [1, 2, 1, 2]
        assert not tasks[0].done()  # still playing
