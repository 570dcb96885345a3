"""Connect4 positions labelled with exact move values by a perfect solver.

The data ships with the package (`shared/games/data/c4_<stage>.txt`, format and origin
in the README there), so every clone and every installed wheel has it: the tests check
the rules against it and the evaluator scores models on it.

    positions = load_labelled("mid")
    best = positions.values == positions.score[:, None]  # optimal columns (NaN: full)
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

from shared.games import IllegalMove, get_game

STAGES = ("early", "mid", "late")
"""Game phases with a file each: 6-14, 15-22 and 23-30 stones on the board."""
MAX_VALUE = 21  # |value| = 22 - the winner's stones at the end, at least 1 stone
FIELDS = ("moves", "score", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "source")
GAME = get_game("connect4")


class LabelledDataError(ValueError):
    """A positions file that does not follow the format; the message names the file,
    the line and what is wrong with it."""


@dataclass(frozen=True)
class LabelledPositions:
    """One set of positions; row i of every field belongs to position i."""

    moves: list[str]
    """The columns played from the empty board, `1`..`7`, first player first."""
    boards: np.ndarray
    """`int8[n, 6, 7]`: the positions as the Connect4 `Game` holds them (side to move +1)."""
    values: np.ndarray
    """`float32[n, 7]`: exact value of playing each column, for the side to move
    (> 0 it wins, 0 draw, < 0 it loses; larger is faster); NaN for a full column."""
    score: np.ndarray
    """`int64[n]`: exact value of the position for the side to move, the best column's."""
    source: list[str]
    """The kind of game each position came from (`random`, `heuristic`, `guided-0.5`, ...)."""

    def __len__(self) -> int:
        return len(self.moves)


def load_labelled(stage: str) -> LabelledPositions:
    """The positions of one of `STAGES`, read from the package's data."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")
    name = f"c4_{stage}.txt"
    text = resources.files("shared.games").joinpath("data", name).read_text(encoding="ascii")
    return parse_labelled(text, name)


def parse_labelled(text: str, name: str = "<text>") -> LabelledPositions:
    """Positions from the text of a file in the format above; blank lines are skipped.
    `LabelledDataError` names the first line that is wrong (`name` says where from)."""
    errors: dict[int, str] = {}  # line number -> what is wrong
    lines: list[int] = []
    moves, actions, values, score, source = [], [], [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = _parse_line(line)
        except ValueError as exc:
            errors[number] = str(exc)
            continue
        lines.append(number)
        for column, item in zip((moves, actions, values, score, source), row):
            column.append(item)
    values_array = np.array(values, np.float32).reshape(len(values), GAME.num_actions)
    boards = _play(moves, actions, lines, values_array, errors)
    if errors:
        first = min(errors)
        more = f" (and {len(errors) - 1} more lines)" if len(errors) > 1 else ""
        raise LabelledDataError(f"{name} line {first}: {errors[first]}{more}")
    return LabelledPositions(moves=moves, boards=boards, values=values_array,
                             score=np.array(score, np.int64), source=source)


def _parse_line(line: str) -> tuple[str, list[int], list[float], int, str]:
    """One line's fields, checked on their own (not yet against the board)."""
    fields = line.split("\t")
    if len(fields) != len(FIELDS):
        raise ValueError(f"{len(fields)} tab-separated fields; expected {len(FIELDS)} ({' '.join(FIELDS)})")
    text, score_text, *column_texts, source = fields
    try:
        actions = GAME.parse_moves(text)
    except IllegalMove as exc:
        raise ValueError(str(exc)) from None
    score = _value("score", score_text)
    values = [np.nan if v == "x" else _value(f"s{k}", v) for k, v in enumerate(column_texts, start=1)]
    open_values = [v for v in values if not np.isnan(v)]
    if not open_values:
        raise ValueError("every column is marked full (x)")
    if score != max(open_values):
        raise ValueError(f"score {score} is not the best column's value {max(open_values):g}")
    if not source:
        raise ValueError("the source field is empty")
    return text, actions, values, score, source


def _value(field: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{field} {text!r} is neither a whole number nor x") from None
    if abs(value) > MAX_VALUE:
        raise ValueError(f"{field} {value} lies outside [-{MAX_VALUE}, {MAX_VALUE}]")
    return value


def _play(moves: list[str], actions: list[list[int]], lines: list[int], values: np.ndarray,
          errors: dict[int, str]) -> np.ndarray:
    """Every position played out at once, one batched move per ply. A position whose
    moves cannot be played, whose game is over, or whose full columns are not exactly
    its `x` columns is recorded in `errors` under its line number."""
    n = len(actions)
    length = np.array([len(a) for a in actions], np.int64)
    padded = np.zeros((n, int(length.max(initial=0))), np.int64)
    for i, a in enumerate(actions):
        padded[i, :len(a)] = a
    boards = GAME.initial_boards(n)
    good = np.ones(n, bool)
    for ply in range(padded.shape[1]):
        rows = np.flatnonzero(good & (length > ply))
        column = padded[rows, ply]
        full = ~GAME.legal_mask(boards[rows])[np.arange(len(rows)), column]
        for i in rows[full]:
            errors[lines[i]] = f"move {ply + 1} of {moves[i]!r}: column {padded[i, ply] + 1} is full"
            good[i] = False
        rows = rows[~full]
        after, over, _ = GAME.play(boards[rows], padded[rows, ply])
        boards[rows] = after
        for i in rows[over]:
            errors[lines[i]] = (f"{moves[i]!r} is a finished game: a position must have a move to play"
                                if ply + 1 == length[i] else
                                f"move {ply + 2} of {moves[i]!r}: the game is already over")
            good[i] = False
    marked_full = np.isnan(values)
    wrong = good & (GAME.legal_mask(boards) == marked_full).any(axis=1)
    for i in np.flatnonzero(wrong):
        k = int(np.flatnonzero(GAME.legal_mask(boards[i:i + 1])[0] == marked_full[i])[0])
        state = "marked full (x) but open" if marked_full[i, k] else "full but has a value"
        errors[lines[i]] = f"column {k + 1} is {state}"
    return boards
