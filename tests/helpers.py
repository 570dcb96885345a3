"""Test data: real self-play games, and message bodies built from them."""

from __future__ import annotations

import numpy as np

from services.actor.selfplay import SelfPlay
from shared.config import MCTSConfig
from shared.games import get_game
from shared.inference import UniformEvaluator
from shared.messages import encode_transitions
from shared.transitions import Transitions, to_batch


def play_games(env_id: str = "tictactoe", games: int = 6, sims: int = 8, seed: int = 0) -> list[Transitions]:
    """Finished self-play games (uniform evaluator), one Transitions per game."""
    game = get_game(env_id)
    sp = SelfPlay(game, MCTSConfig(num_simulations=sims), UniformEvaluator(game),
                  num_games=min(games, 8), max_games=games, seed=seed)
    finished = []
    while sp.running:
        finished += sp.step()
    return [f.transitions for f in finished]


def message(t: Transitions, env_id: str = "tictactoe", batch_id: str | None = None, actor_id: str = "test") -> tuple[str, bytes]:
    batch = to_batch(t, env_id=env_id, actor_id=actor_id, batch_id=batch_id)
    return batch.batch_id, encode_transitions(batch)


def assert_same_rows(a: Transitions, b: Transitions) -> None:
    for name in Transitions.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
