"""The regression guard: the pure rule, then on the real services (a model trained on
TicTacToe's exact move values, then random weights published after it)."""

from __future__ import annotations

import asyncio
import functools

import numpy as np
import torch

from services.actor.service import ActorService
from services.evaluator.accuracy import tictactoe_labelled
from services.evaluator.ratings import Rating
from services.evaluator.rollback import decide
from services.evaluator.service import EvaluatorService
from services.trainer.export import export_onnx
from services.trainer.learner import Batch, train_step
from services.trainer.network import PolicyValueNet
from shared.bus import open_bus
from shared.evaluations import open_evaluations
from shared.games import get_game
from shared.messages import ReloadRequest, decode_event
from shared.model_store import ServingPointer, open_model_store
from tests.helpers import running, wait_until
from tests.test_evaluator_service import publish

GAME = get_game("tictactoe")


def r(rating: float, stderr: float = 50, games: float = 40) -> Rating:
    return Rating(rating=rating, stderr=stderr, games=games)


def test_rolls_back_only_beyond_twice_the_combined_error_after_enough_games():
    assert decide({1: r(800), 2: r(600)}, 2, None, 20).version == 1  # 200 > 2 * 71
    rolled = decide({1: r(800), 2: r(600)}, 2, None, 20)
    assert rolled.hold and "rolled back to 1" in rolled.reason
    assert decide({1: r(800), 2: r(700)}, 2, None, 20) is None  # 100 < 141: noise
    assert decide({1: r(800), 2: r(600, games=10)}, 2, None, 20) is None  # too few games
    assert decide({1: r(800), 2: r(900)}, 2, None, 20) is None  # better: nothing to do


def test_a_newer_version_as_good_as_the_best_takes_over_from_a_hold():
    held = ServingPointer(version=1, hold=True)
    assert decide({1: r(800), 2: r(600), 3: r(700)}, 3, held, 20) is None
    take = decide({1: r(800), 2: r(600), 3: r(800)}, 3, held, 20)
    assert (take.version, take.hold) == (3, False)


@functools.cache
def trained_models(steps: int = 150, batch_size: int = 512) -> tuple[bytes, bytes]:
    """A net taught TicTacToe's exact move values (optimal moves as the policy target, the
    position's value as the value target), and the same net with its policy turned upside
    down (it prefers the moves it rates worst): a strong model and a deliberately weakened
    one. Trained once per test session."""
    labelled = tictactoe_labelled()
    best = labelled.values == np.nanmax(labelled.values, axis=1, keepdims=True)
    obs = GAME.observe(labelled.boards).astype(np.float32)
    policy = (best / best.sum(1, keepdims=True)).astype(np.float32)
    value = np.sign(labelled.score).astype(np.float32)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    net = PolicyValueNet(GAME.obs_shape, GAME.num_actions, blocks=1, channels=8)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        rows = rng.integers(0, len(obs), batch_size)
        train_step(net, optimizer, Batch(obs[rows], policy[rows], value[rows], np.ones(batch_size, np.float32)),
                   torch.device("cpu"))
    strong = export_onnx(net)
    with torch.no_grad():
        last = net.policy_head[-1]
        last.weight.neg_()
        last.bias.neg_()
    return strong, export_onnx(net)


# The models play their raw policy (one simulation): the trained one plays well, the
# inverted one badly, and 16 games per version separate them beyond twice the error.
GUARD = {"simulations": 4, "positions": 8, "games": 16, "game_simulations": 1, "rollback_min_games": 8,
         "anchors": ["random", "one-ply", "alphabeta-2"]}


async def rate_in_turn(config, store, bus, *models: bytes) -> EvaluatorService:
    """Run an evaluator; publish `models` as versions 1, 2, ..., each once the one before
    is rated; return the stopped service."""
    service = EvaluatorService(config)
    async with running(service) as tasks:
        for version, data in enumerate(models, start=1):
            await publish(config, store, bus, version, data)
            await wait_until(lambda: service.status().evaluated == version, f"model {version} rated", tasks=tasks)
    return service


async def test_a_weakened_model_after_a_trained_one_rolls_back_and_a_new_actor_serves_the_best(make_config):
    config = make_config(eval=GUARD)
    strong, weak = await asyncio.to_thread(trained_models)
    reloads: list[ReloadRequest] = []

    async def listen(events):
        async for body in events:
            if isinstance(event := decode_event(body), ReloadRequest):
                reloads.append(event)

    async with open_model_store(config.storage) as store, open_bus(config.broker, name="test") as bus:
        listener = asyncio.create_task(listen(await bus.subscribe_events()))
        service = await rate_in_turn(config, store, bus, strong, weak)
        await wait_until(lambda: reloads, "the rollback event")
        assert service.status().rollbacks == 1
        assert [(e.version, e.hold) for e in reloads] == [(1, True)]
        pointer = await store.serving("tictactoe")
        assert (pointer.version, pointer.hold) == (1, True) and "rolled back to 1" in pointer.reason
        listener.cancel()

    async with open_evaluations(config.storage) as results:
        (row,) = await results.servings("tictactoe")
    assert (row.version, row.hold) == (1, True)
    actor = ActorService(make_config(actor={"max_episodes": 1}))
    async with running(actor) as tasks:
        await wait_until(lambda: actor.ready.is_set(), "the actor's first model", tasks=tasks)
        assert actor.model_version == 1  # the held version, not the newest (2)


async def test_a_normal_sequence_does_not_roll_back(make_config):
    config = make_config(eval=GUARD)
    strong, weak = await asyncio.to_thread(trained_models)
    async with open_model_store(config.storage) as store, open_bus(config.broker, name="test") as bus:
        service = await rate_in_turn(config, store, bus, weak, strong)
        assert service.status().rollbacks == 0
        assert await store.serving("tictactoe") is None
