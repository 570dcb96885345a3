"""Players: anything that picks a move for each of many boards at once.

A `Player` maps boards (`int8[n, H, W]`, side to move +1) to actions (`int[n]`). The
fixed ones here (`random`, `one-ply`) and a model's noise-free search are what
`cartridge arena` and the evaluator's rating games play with; the alpha-beta yardstick
lives with the evaluator (`services/evaluator/alphabeta.py`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from shared.config import MCTSConfig
from shared.games import Game
from shared.inference import Evaluator
from shared.search.analysis import search_positions

Player = Callable[[np.ndarray], np.ndarray]  # boards -> actions


def random_player(game: Game, rng: np.random.Generator) -> Player:
    def play(boards: np.ndarray) -> np.ndarray:
        legal = game.legal_mask(boards)
        return (rng.random(legal.shape) * legal).argmax(axis=1)
    return play


def winning_moves(game: Game, boards: np.ndarray) -> np.ndarray:
    """`bool[n, A]`: moves that win at once for the side to move."""
    n, a = len(boards), game.num_actions
    legal = game.legal_mask(boards)
    wins = np.zeros((n, a), bool)
    for action in range(a):
        rows = np.flatnonzero(legal[:, action])
        if len(rows):
            _, done, value = game.play(boards[rows], np.full(len(rows), action))
            wins[rows, action] = done & (value < 0)
    return wins


def one_ply_player(game: Game, rng: np.random.Generator) -> Player:
    """Takes a win, else blocks an immediate loss, else plays a random legal move."""
    def play(boards: np.ndarray) -> np.ndarray:
        legal = game.legal_mask(boards)
        win = winning_moves(game, boards)
        block = winning_moves(game, -boards) & legal  # where the opponent would win
        noise = rng.random(legal.shape)
        choice = np.where(win.any(1, keepdims=True), win, np.where(block.any(1, keepdims=True), block, legal))
        return (noise * choice).argmax(axis=1)
    return play


def search_player(game: Game, evaluator: Evaluator, sims: int, mcts: MCTSConfig) -> Player:
    """The most visited move of a `sims`-simulation search without noise (0: the raw
    policy's most likely move)."""
    def play(boards: np.ndarray) -> np.ndarray:
        policy, _ = search_positions(game, evaluator, boards, sims, mcts)
        return policy.argmax(axis=1)
    return play
