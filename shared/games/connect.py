"""k-in-a-row games on an H x W grid, with or without gravity: Connect4 and TicTacToe
are the same rules with different sizes, so they share one vectorised implementation."""

from __future__ import annotations

import numpy as np

from shared.games.base import IllegalMove


class ConnectGame:
    """Batched rules for a k-in-a-row game.

    With gravity (Connect4) an action is a column and the stone drops to the lowest
    empty row (row 0 is the bottom). Without gravity (TicTacToe) an action is a cell,
    `row * W + col`. Move strings use 1-based action numbers, one character each.
    """

    def __init__(self, env_id: str, rows: int, cols: int, k: int, gravity: bool):
        self.env_id = env_id
        self.rows, self.cols, self.k, self.gravity = rows, cols, k, gravity
        self.board_shape = (rows, cols)
        self.obs_shape = (2, rows, cols)
        self.num_actions = cols if gravity else rows * cols
        self.max_plies = rows * cols
        if self.num_actions > 9:
            raise ValueError("move strings use one digit per move: at most 9 actions")

    # -- batched rules ---------------------------------------------------------------
    def initial_boards(self, n: int) -> np.ndarray:
        return np.zeros((n, self.rows, self.cols), dtype=np.int8)

    def legal_mask(self, boards: np.ndarray) -> np.ndarray:
        if self.gravity:
            return boards[:, -1, :] == 0  # a column is open while its top cell is empty
        return boards.reshape(len(boards), -1) == 0

    def play(self, boards: np.ndarray, actions: np.ndarray):
        n = len(boards)
        actions = np.asarray(actions, dtype=np.int64)
        idx = np.arange(n)
        if self.gravity:
            cols = actions
            rows = np.count_nonzero(boards[idx, :, cols], axis=1)
        else:
            rows, cols = np.divmod(actions, self.cols)
        if np.any(boards[idx, np.minimum(rows, self.rows - 1), cols] != 0) or np.any(rows >= self.rows):
            raise IllegalMove("an action was played on an occupied cell or a full column")
        after = boards.copy()
        after[idx, rows, cols] = 1
        won = self._has_line(after == 1)
        full = ~np.any(after == 0, axis=(1, 2))
        done = won | full
        value = np.where(won, -1.0, 0.0).astype(np.float32)
        return np.negative(after, out=after), done, value

    def _has_line(self, stones: np.ndarray) -> np.ndarray:
        """`bool[n]`: whether `stones` (`bool[n, H, W]`) hold k in a row anywhere."""
        k, h, w = self.k, self.rows, self.cols
        found = np.zeros(len(stones), dtype=bool)
        # (row step, col step) for horizontal, vertical, diagonal, anti-diagonal lines.
        for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
            hh, ww = h - dr * (k - 1), w - abs(dc) * (k - 1)
            if hh <= 0 or ww <= 0:
                continue
            c0 = (k - 1) if dc < 0 else 0
            run = stones[:, 0:hh, c0:c0 + ww].copy()
            for i in range(1, k):
                run &= stones[:, dr * i:dr * i + hh, c0 + dc * i:c0 + dc * i + ww]
            found |= run.any(axis=(1, 2))
        return found

    def observe(self, boards: np.ndarray) -> np.ndarray:
        return np.stack([boards == 1, boards == -1], axis=1).view(np.uint8)

    def mirror_actions(self) -> np.ndarray:
        """Permutation of actions under a left-right mirror (a symmetry of both games):
        `policy[:, perm]` is the mirrored position's policy."""
        if self.gravity:
            return np.arange(self.cols)[::-1].copy()
        return np.arange(self.num_actions).reshape(self.rows, self.cols)[:, ::-1].ravel().copy()

    # -- notation ----------------------------------------------------------------------
    def parse_moves(self, text: str) -> list[int]:
        text = text.strip()
        symbols = "123456789"[: self.num_actions]  # ASCII only: str.isdigit() accepts '²', '٣'
        actions = []
        for i, ch in enumerate(text):
            if ch not in symbols:
                raise IllegalMove(
                    f"move {i + 1} of {text!r}: {ch!r} is not a move 1..{self.num_actions}"
                )
            actions.append(symbols.index(ch))
        return actions

    def format_moves(self, actions) -> str:
        return "".join(str(int(a) + 1) for a in actions)

    def position(self, text: str) -> tuple[np.ndarray, bool, float]:
        """Play a move string from the empty board: `(board, done, value)` for the side
        to move. `IllegalMove` names the first move that cannot be played."""
        board = self.initial_boards(1)
        done, value = False, 0.0
        for i, a in enumerate(self.parse_moves(text)):
            if done:
                raise IllegalMove(f"move {i + 1} of {text!r}: the game is already over")
            if not self.legal_mask(board)[0, a]:
                raise IllegalMove(f"move {i + 1} of {text!r}: {a + 1} is full or occupied")
            board, d, v = self.play(board, np.array([a]))
            done, value = bool(d[0]), float(v[0])
        return board[0], done, value
