"""The interface every game offers the search, the self-play loop and the trainer.

All operations work on a batch of boards at once (numpy, no Python loop per board).
A board is `int8[H, W]` seen from the side to move: +1 its stones, -1 the opponent's,
0 empty. After a move the board is negated, so the next side to move again sees +1 for
its own stones; search and training never need to know whose turn it is.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class IllegalMove(ValueError):
    """A move string that cannot be played (bad character, full column, game over)."""


class Game(Protocol):
    env_id: str
    num_actions: int
    board_shape: tuple[int, int]
    obs_shape: tuple[int, int, int]
    max_plies: int

    def initial_boards(self, n: int) -> np.ndarray:
        """`n` empty boards, `int8[n, H, W]`."""

    def legal_mask(self, boards: np.ndarray) -> np.ndarray:
        """`bool[n, A]`: which actions can be played."""

    def play(self, boards: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Play one legal action on each board.

        Returns `(next_boards, done, value)`: the boards from the next side to move's
        view, whether the game is over, and its outcome from that side's view (-1: the
        opponent just won, 0: draw or not over).
        """

    def observe(self, boards: np.ndarray) -> np.ndarray:
        """Network input `uint8[n, 2, H, W]`: planes for "my stones" and "their stones"."""

    def mirror_actions(self) -> np.ndarray:
        """Action permutation matching `observation[..., ::-1]` (left-right mirror)."""

    def parse_moves(self, text: str) -> list[int]:
        """Move-string notation (e.g. `4453`) to action indices; `IllegalMove` if malformed."""

    def format_moves(self, actions: list[int]) -> str:
        """Action indices to move-string notation."""
