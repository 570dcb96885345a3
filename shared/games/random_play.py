"""Finished games of random legal moves, played by the real rules: valid training data
without a model or a search, for tests and benchmarks (message sizes, write rates)."""

from __future__ import annotations

import uuid

import numpy as np

from shared.games import get_game
from shared.transitions import Transitions


def random_games(env_id: str = "tictactoe", games: int = 6, seed: int = 0,
                 min_plies: int = 1) -> list[Transitions]:
    """`games` finished games of random legal moves, one Transitions per game, all
    played at once (one batched rules call per ply). Every row is valid training data:
    the observation of a reachable position, a random policy summing to 1 over the legal
    moves, and the final result from the side to move's view. Games shorter than
    `min_plies` are replayed (e.g. 20 for message sizes like real Connect4 games)."""
    game = get_game(env_id)
    rng = np.random.default_rng(seed)
    out: list[Transitions] = []
    while len(out) < games:
        n = games - len(out)
        boards = game.initial_boards(n)
        running = np.ones(n, bool)
        result = np.zeros(n, np.float32)  # from the view of the side that moved last
        length = np.zeros(n, np.int64)
        steps = []  # (observation, legal, policy, running) per ply
        while running.any():
            legal = game.legal_mask(boards)
            policy = rng.random(legal.shape).astype(np.float32) * legal
            policy[~running] = legal[~running]  # finished games: any valid filler
            policy /= np.maximum(policy.sum(axis=1, keepdims=True), 1e-9)
            steps.append((game.observe(boards), legal, policy, running.copy()))
            # Sample the move from the policy (row-wise inverse CDF).
            actions = (policy.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
            actions = np.minimum(actions, game.num_actions - 1)
            actions = np.where(legal[np.arange(n), actions], actions, legal.argmax(axis=1))
            live = np.flatnonzero(running)
            after, done, value = game.play(boards[live], actions[live])
            boards[live] = after
            length[live] += 1
            result[live[done]] = -value[done]  # play() scores it for the next side to move
            running[live[done]] = False
        for g in range(n):
            if length[g] < min_plies:
                continue
            plies = np.arange(length[g])
            # The side to move at ply i is the last mover when (length - 1 - i) is even.
            sign = np.where((length[g] - 1 - plies) % 2 == 0, 1.0, -1.0)
            out.append(Transitions(
                # A fresh uuid4 even for the same seed: a game id must never repeat.
                game_id=np.repeat(np.frombuffer(uuid.uuid4().bytes, np.uint8)[None], length[g], axis=0),
                ply=plies.astype(np.int16),
                model_version=np.full(length[g], int(rng.integers(0, 5)), np.int32),
                observation=np.stack([s[0][g] for s in steps[:length[g]]]),
                legal_mask=np.stack([s[1][g] for s in steps[:length[g]]]),
                policy=np.stack([s[2][g] for s in steps[:length[g]]]),
                value=(sign * result[g]).astype(np.float32),
                search_value=rng.uniform(-1, 1, length[g]).astype(np.float32),  # no search here: any value
                policy_weight=(rng.random(length[g]) < 0.75).astype(np.float32),
            ))
    return out[:games]
