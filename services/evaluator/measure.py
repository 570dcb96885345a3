"""How accurately one model chooses moves, by game stage: the raw policy on every
labelled position, and a noise-free search on the first `positions` of each stage.

Labelled positions: Connect4's solver sets (`shared.games.labelled`, stages of 6-14,
15-22 and 23-30 stones); TicTacToe's every position solved by minimax
(`accuracy.tictactoe_labelled`), split by stones on the board (0-2, 3-5, 6-8).
Everything here is CPU work: callers run it in a worker thread.
"""

from __future__ import annotations

import functools

import msgspec
import numpy as np

from services.evaluator.accuracy import MoveScore, score_player, tictactoe_labelled
from shared.config import EvalConfig, MCTSConfig
from shared.games import Game
from shared.games.labelled import STAGES, LabelledPositions, load_labelled
from shared.inference import Evaluator
from shared.players import search_player

TICTACTOE_STAGES = {"early": (0, 2), "mid": (3, 5), "late": (6, 8)}  # stones on the board


class Accuracy(msgspec.Struct, frozen=True):
    policy: dict[str, MoveScore]
    """Raw policy (no search), every labelled position, per stage."""
    search: dict[str, MoveScore]
    """`simulations`-simulation search on `positions` per stage."""

    def optimal_pct(self, which: str) -> dict[str, float]:
        return {stage: round(s.optimal_pct, 2) for stage, s in getattr(self, which).items()}

    def keeps_pct(self, which: str) -> dict[str, float]:
        return {stage: round(s.keeps_pct, 2) for stage, s in getattr(self, which).items()}

    def as_dict(self) -> dict:
        """The form the results store keeps."""
        return msgspec.to_builtins(self)


def _subset(p: LabelledPositions, rows: np.ndarray) -> LabelledPositions:
    return LabelledPositions(moves=[p.moves[i] for i in rows], boards=p.boards[rows], values=p.values[rows],
                             score=p.score[rows], source=[p.source[i] for i in rows])


@functools.cache
def labelled_stages(env_id: str) -> dict[str, LabelledPositions]:
    """The labelled positions of a game, per stage."""
    if env_id == "connect4":
        return {stage: load_labelled(stage) for stage in STAGES}
    if env_id == "tictactoe":
        every = tictactoe_labelled()
        stones = np.count_nonzero(every.boards, axis=(1, 2))
        return {stage: _subset(every, np.flatnonzero((stones >= lo) & (stones <= hi)))
                for stage, (lo, hi) in TICTACTOE_STAGES.items()}
    raise ValueError(f"no labelled positions for {env_id!r}")


def searched_rows(total: int, wanted: int) -> np.ndarray:
    """`wanted` rows spread evenly over `total` (the same ones for every model)."""
    if wanted >= total:
        return np.arange(total)
    return np.linspace(0, total - 1, wanted).round().astype(np.int64)


def measure(game: Game, evaluator: Evaluator, config: EvalConfig, mcts: MCTSConfig) -> Accuracy:
    """Both accuracies of `evaluator` on `game`'s labelled positions."""
    raw = search_player(game, evaluator, 0, mcts)
    searched = search_player(game, evaluator, config.simulations, mcts)
    policy, search = {}, {}
    for stage, p in labelled_stages(game.env_id).items():
        policy[stage] = score_player(raw, p.boards, p.values)
        rows = searched_rows(len(p), config.positions)
        search[stage] = score_player(searched, p.boards[rows], p.values[rows])
    return Accuracy(policy=policy, search=search)
