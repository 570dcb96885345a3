"""The evaluator service on the real services (RabbitMQ, PostgreSQL, S3 on moto): picks up
published models, stores and announces results, catches up after a restart exactly once,
records unusable models as failed and goes on. TicTacToe, tiny nets, few sims and games."""

from __future__ import annotations

import asyncio

import torch

from services.evaluator.service import EvaluatorService
from services.trainer.export import export_onnx
from services.trainer.network import PolicyValueNet
from shared.bus import open_bus
from shared.evaluations import open_evaluations
from shared.games import get_game
from shared.messages import ModelEvaluated, ModelPublished, decode_event, encode_event
from shared.model_store import open_model_store
from tests.helpers import running, wait_until

GAME = get_game("tictactoe")
SMALL = {"simulations": 4, "positions": 8, "games": 4, "game_simulations": 4,
         "anchors": ["random", "one-ply", "alphabeta-2"], "rollback_min_games": 4}


def onnx_model(seed: int) -> bytes:
    torch.manual_seed(seed)
    return export_onnx(PolicyValueNet(GAME.obs_shape, GAME.num_actions, blocks=1, channels=8))


async def publish(config, store, bus, version: int, data: bytes) -> None:
    info = await store.put_model("tictactoe", version, data, step=10 * version)
    await bus.publish_event(encode_event(ModelPublished(
        env_id=info.env_id, version=info.version, key=info.key, sha256=info.sha256, size=info.size, step=info.step)))


async def rows(config) -> dict[int, object]:
    async with open_evaluations(config.storage) as results:
        return {e.version: e for e in await results.evaluations("tictactoe")}


async def test_evaluates_published_models_and_catches_up_once_after_a_restart(make_config):
    config = make_config(eval=SMALL)
    heard: list[ModelEvaluated] = []

    async def listen(events):
        async for body in events:
            event = decode_event(body)
            if isinstance(event, ModelEvaluated):
                heard.append(event)

    async with open_model_store(config.storage) as store, open_bus(config.broker, name="test") as bus:
        listener = asyncio.create_task(listen(await bus.subscribe_events()))
        service = EvaluatorService(config)
        async with running(service) as tasks:
            await wait_until(lambda: service.status().state == "running", "start", tasks=tasks)
            await publish(config, store, bus, 1, onnx_model(1))
            await wait_until(lambda: service.status().evaluated == 1 and heard, "model 1 evaluated", tasks=tasks)
        # Published while the evaluator is down: the next start finds them.
        await publish(config, store, bus, 2, onnx_model(2))
        await publish(config, store, bus, 3, onnx_model(3))
        again = EvaluatorService(config)
        async with running(again) as tasks:
            await wait_until(lambda: again.status().evaluated == 2, "models 2 and 3 evaluated", tasks=tasks)
            await asyncio.sleep(0.5)  # the queued events for 2 and 3 arrive: nothing is evaluated twice
            assert again.status().evaluated == 2
        listener.cancel()

    stored = await rows(config)
    assert {v: e.status for v, e in stored.items()} == {1: "ok", 2: "ok", 3: "ok"}
    assert stored[3].step == 30 and stored[3].cost_cpu_s > 0
    assert set(stored[1].accuracy["policy"]) == {"early", "mid", "late"}
    async with open_evaluations(config.storage) as results:
        games = await results.games("tictactoe")
    per_version = {v: sum(g.version == v for g in games) for v in range(4)}
    assert per_version == {0: 4, 1: 4, 2: 4, 3: 4}, per_version  # the ladder once (2 pairs), each version once
    first = heard[0]
    assert first.version == 1 and first.rating is not None and first.rating_error > 0 and first.games == 4
    assert set(first.optimal_pct) == set(first.policy_optimal_pct) == {"early", "mid", "late"}


async def test_an_unusable_model_is_recorded_as_failed_and_the_service_goes_on(make_config):
    config = make_config(eval=SMALL)
    async with open_model_store(config.storage) as store, open_bus(config.broker, name="test") as bus:
        service = EvaluatorService(config)
        async with running(service) as tasks:
            await publish(config, store, bus, 1, b"not an onnx model")
            await wait_until(lambda: service.status().failed == 1, "model 1 failed", tasks=tasks)
            connect4 = get_game("connect4")
            torch.manual_seed(0)
            await publish(config, store, bus, 2, export_onnx(
                PolicyValueNet(connect4.obs_shape, connect4.num_actions, blocks=1, channels=8)))
            await wait_until(lambda: service.status().failed == 2, "model 2 failed", tasks=tasks)
            await publish(config, store, bus, 3, onnx_model(3))
            await wait_until(lambda: service.status().evaluated == 1, "model 3 evaluated", tasks=tasks)
    stored = await rows(config)
    assert [stored[v].status for v in (1, 2, 3)] == ["failed", "failed", "ok"]
    assert "not a valid ONNX model" in stored[1].reason
    assert "tictactoe" in stored[2].reason or "input" in stored[2].reason, stored[2].reason


async def test_a_version_still_being_uploaded_is_not_waiting_for_evaluation(make_config):
    """`put_model` claims a version with its metadata before the file is stored: the
    evaluator must not take (and fail) a version whose upload is under way."""
    from shared.model_store.base import encode_info, info_key, make_info

    config = make_config(eval=SMALL)
    async with open_model_store(config.storage) as store:
        await store.put_model("tictactoe", 1, onnx_model(1), step=10)
        second = onnx_model(2)
        await store._put(info_key("tictactoe", 2), encode_info(make_info("tictactoe", 2, second, 20, None)),
                         if_absent=True)  # claimed, file not yet stored
        service = EvaluatorService(config)
        async with service.store, service.results:
            assert await service.waiting() == [1]
            await store.put_model("tictactoe", 2, second, step=20)  # the upload completes
            assert await service.waiting() == [2, 1]


async def test_ratings_and_opponents_stay_within_the_rating_window(make_config):
    """With `rating_window` 2, model 4 meets only anchors and model 3, and the ratings the
    page and `cartridge ratings` show are fitted for models 3 and 4; older ones show the
    rating each was given right after its own games, marked as such."""
    from cartridge.ratings import format_table, rating_rows

    config = make_config(eval={**SMALL, "rating_window": 2, "rollback": False})
    async with open_model_store(config.storage) as store, open_bus(config.broker, name="test") as bus:
        service = EvaluatorService(config)
        async with running(service) as tasks:
            await wait_until(lambda: service.status().state == "running", "start", tasks=tasks)
            for version in range(1, 5):
                await publish(config, store, bus, version, onnx_model(version))
                await wait_until(lambda: service.status().evaluated == version, f"model {version}", tasks=tasks)
            assert service.last.version == 4 and service.last.rating is not None
    async with open_evaluations(config.storage) as results:
        games = await results.games("tictactoe")
    assert {g.player_b for g in games if g.version == 4} <= {"random", "one-ply", "alphabeta-2", "v3"}
    async with open_evaluations(config.storage) as results:
        kept = {e.version: e.rating for e in await results.evaluations("tictactoe")}
    rows = await rating_rows(config)
    rated = {r["version"]: (r["rating"], r["rating_fitted"]) for r in rows}
    assert rated[1] == (kept[1], False) and rated[2] == (kept[2], False) and None not in kept.values()
    assert rated[3][1] and rated[4][1] and rated[4][0] is not None
    table = format_table(rows).splitlines()
    assert table[1].split()[0] == "1" and f"{kept[1]:.0f} ±" in table[1] and "*" in table[1]
    assert "*" not in table[4] and table[-1].startswith("* as rated right after its own games")
