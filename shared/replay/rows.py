"""Transitions to and from database rows, shared by every replay back end."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.games import Game
from shared.transitions import Transitions

# Columns added after the first release, with their SQL type (the same word in PostgreSQL
# and SQLite): each back end's migration adds them to an older table, where the rows
# stored before hold NULL and readers take what stood for them (`READ_ADDED`; messages
# from older actors get the same stand-ins: `shared.transitions.OPTIONAL_FIELDS`).
ADDED_COLUMNS = {"search_value": "real", "policy_weight": "real"}
# How readers select the columns after `value` (the rows' search value and policy weight).
READ_ADDED = "coalesce(search_value, value), coalesce(policy_weight, 1)"


@dataclass(frozen=True)
class WriteResult:
    inserted_rows: int
    duplicate_batches: int  # batches skipped because they were stored before


@dataclass(frozen=True)
class DroppedPart:
    """A part of the replay that retention dropped, as counted just before: the record
    that lets an audit account for positions no longer in the table."""
    name: str  # the partition (PostgreSQL) or id range (SQLite)
    first_id: int  # ids first_id <= id < end_id
    end_id: int
    rows: int
    positions: int  # distinct (game_id, ply): rows minus duplicates
    games: int  # distinct game ids


def row_bytes(a: np.ndarray) -> list[bytes]:
    """One `bytes` per row of `a` (the cell value of a bytea/BLOB column): one
    `tobytes()` for the whole array, sliced, is several times faster than one per row."""
    data, k = np.ascontiguousarray(a).tobytes(), a[0].nbytes if len(a) else 0
    return [data[i:i + k] for i in range(0, len(data), k)] if k else []


def decode_rows(game: Game, rows: list[tuple]) -> Transitions:
    """Rows of (id, game_id bytes, ply, model_version, observation, legal_mask, policy,
    value, search_value, policy_weight) back to numpy columns, one `frombuffer` per byte
    column."""
    n, a = len(rows), game.num_actions
    col = list(zip(*rows)) if rows else [()] * 10

    def stacked(i: int, dtype, shape) -> np.ndarray:
        return np.frombuffer(b"".join(col[i]), dtype=dtype).reshape(n, *shape)

    return Transitions(
        game_id=stacked(1, np.uint8, (16,)),
        ply=np.array(col[2], np.int16).reshape(n),
        model_version=np.array(col[3], np.int32).reshape(n),
        observation=stacked(4, np.uint8, game.obs_shape),
        legal_mask=stacked(5, np.bool_, (a,)),
        policy=stacked(6, np.float32, (a,)),
        value=np.array(col[7], np.float32).reshape(n),
        search_value=np.array(col[8], np.float32).reshape(n),
        policy_weight=np.array(col[9], np.float32).reshape(n),
    )
