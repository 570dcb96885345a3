"""How good are a player's move choices, measured against exact move values.

Input: `values float32[n, A]`, the exact value of each move for the side to move (NaN:
illegal, e.g. a full column; larger is better, > 0 wins, 0 draws, < 0 loses) and the
chosen actions `int[n]`. Two measures, each with its binomial standard error:

- optimal %: the chosen move has the best value (any move tying the best counts);
- keeps %: the chosen move keeps the game-theoretic outcome (a win stays a win, a draw
  a draw), over won and drawn positions only: in a lost position every move keeps the
  loss, so those say nothing.

An illegal choice is neither optimal nor keeping. The functions take plain arrays, so
they score Connect4 solver sets (`shared.games.labelled`) and the exhaustively solved
TicTacToe positions below alike.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import msgspec
import numpy as np

from shared.games import get_game
from shared.games.labelled import LabelledPositions


class MoveScore(msgspec.Struct, frozen=True):
    positions: int
    optimal: int
    """Positions where the chosen move has the best value."""
    optimal_pct: float
    optimal_se: float
    """Binomial standard error of `optimal_pct`, in percentage points."""
    decisive: int
    """Won or drawn positions: those `keeps` is measured over."""
    keeps: int
    keeps_pct: float
    keeps_se: float


def _percent(hits: int, n: int) -> tuple[float, float]:
    """Percentage and its binomial standard error (NaN for no positions)."""
    if n == 0:
        return math.nan, math.nan
    p = hits / n
    return 100 * p, 100 * math.sqrt(p * (1 - p) / n)


def score_moves(values: np.ndarray, chosen: np.ndarray) -> MoveScore:
    """Score the `chosen` actions (`int[n]`) against the move `values` (`[n, A]`)."""
    values = np.asarray(values, dtype=np.float64)
    chosen = np.asarray(chosen)
    if values.ndim != 2 or chosen.shape != values.shape[:1]:
        raise ValueError(f"values must be [n, A] and chosen [n]; got {values.shape} and {chosen.shape}")
    if not np.issubdtype(chosen.dtype, np.integer):
        raise ValueError(f"chosen must hold integer actions, got {chosen.dtype}")
    if len(chosen) and (chosen.min() < 0 or chosen.max() >= values.shape[1]):
        bad = int(np.flatnonzero((chosen < 0) | (chosen >= values.shape[1]))[0])
        raise ValueError(f"position {bad}: action {chosen[bad]} is outside 0..{values.shape[1] - 1}")
    no_move = np.isnan(values).all(axis=1)
    if no_move.any():
        raise ValueError(f"position {int(np.flatnonzero(no_move)[0])} has no legal move (all values NaN)")
    best = np.nanmax(values, axis=1)
    mine = values[np.arange(len(chosen)), chosen]  # NaN for an illegal choice: compares False
    optimal = mine == best
    decisive = best >= 0
    keeps = np.where(best > 0, mine > 0, mine == 0) & decisive
    n, d = len(chosen), int(decisive.sum())
    return MoveScore(n, int(optimal.sum()), *_percent(int(optimal.sum()), n),
                     d, int(keeps.sum()), *_percent(int(keeps.sum()), d))


def score_player(player: Callable[[np.ndarray], np.ndarray], boards: np.ndarray, values: np.ndarray) -> MoveScore:
    """Let `player` (boards -> actions) choose in every position and score its choices."""
    return score_moves(values, np.asarray(player(boards)))


@functools.cache
def tictactoe_labelled() -> LabelledPositions:
    """Every reachable, unfinished TicTacToe position (4,520), each once, with the exact
    value of every move for the side to move: +1 wins, 0 draws, -1 loses, NaN occupied.
    `moves` gives one move string reaching each position (the first in move order).
    Solved by exhaustive minimax on first use, one batched rules call per ply, then
    cached."""
    game = get_game("tictactoe")
    # Forward, ply by ply: the distinct unfinished positions, and for each of their
    # moves the result (game over) or the index of the position it leads to.
    boards, moves = game.initial_boards(1), [""]
    levels = []  # per ply: (boards, moves, parent, action, done, value, child)
    while len(boards):
        parent, action = np.nonzero(game.legal_mask(boards))
        after, done, value = game.play(boards[parent], action)
        child = np.full(len(parent), -1)
        index: dict[bytes, int] = {}
        next_moves = []
        for e in np.flatnonzero(~done):
            key = after[e].tobytes()
            if key not in index:
                index[key] = len(index)
                next_moves.append(moves[parent[e]] + game.format_moves([action[e]]))
            child[e] = index[key]
        levels.append((boards, moves, parent, action, done, value, child))
        boards = np.stack([np.frombuffer(k, np.int8).reshape(game.board_shape) for k in index]) if index \
            else boards[:0]
        moves = next_moves
    # Backward: a move scores the result if it ends the game, else minus the best move
    # value of the position it leads to (the opponent's view).
    tables: list[np.ndarray] = []
    best_below = np.zeros(1, np.float32)  # placeholder: every move of the last ply ends the game
    for boards, _, parent, action, done, value, child in reversed(levels):
        # play() scores a finished game for the next side to move: negate for the mover.
        outcome = np.where(done, -value, -best_below[np.maximum(child, 0)])
        table = np.full((len(boards), game.num_actions), np.nan, np.float32)
        table[parent, action] = outcome + 0.0  # + 0.0: no -0.0
        tables.insert(0, table)
        best_below = np.nanmax(table, axis=1)
    values = np.concatenate(tables)
    return LabelledPositions(
        moves=[m for _, moves, *_ in levels for m in moves],
        boards=np.concatenate([b for b, *_ in levels]),
        values=values,
        score=np.nanmax(values, axis=1).astype(np.int64),
        source=["minimax"] * len(values),
    )
