"""Transitions as numpy columns, and their conversion to and from `TransitionBatch`.

`Transitions` is the one in-memory form of training data: the self-play loop produces
it, messages carry it, ingest validates it and the replay stores write and read it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import numpy as np

from shared.games import Game
from shared.messages import Array, MessageError, TransitionBatch, new_batch_id

POLICY_SUM_TOLERANCE = 1e-3
# Fields a message from an older actor may lack, and what stands in for them.
OPTIONAL_FIELDS = {
    "search_value": lambda cols: cols["value"].copy(),  # no search value: the result stands in
    "policy_weight": lambda cols: np.ones(len(cols["value"]), np.float32),  # every move a full search
}


@dataclass(frozen=True)
class Transitions:
    """Rows of training data; every field has the row count as its first dimension."""

    game_id: np.ndarray  # uint8 [n, 16]
    ply: np.ndarray  # int16 [n]
    model_version: np.ndarray  # int32 [n]
    observation: np.ndarray  # uint8 [n, 2, H, W]
    legal_mask: np.ndarray  # bool [n, A]
    policy: np.ndarray  # float32 [n, A]
    value: np.ndarray  # float32 [n]
    search_value: np.ndarray  # float32 [n]
    policy_weight: np.ndarray  # float32 [n]: 1 where `policy` is a target (full search), else 0

    def __len__(self) -> int:
        return len(self.ply)

    @staticmethod
    def concat(parts: list["Transitions"]) -> "Transitions":
        return Transitions(**{
            name: np.concatenate([getattr(p, name) for p in parts])
            for name in Transitions.__dataclass_fields__
        })

    def game_uuids(self) -> list[uuid.UUID]:
        return [uuid.UUID(bytes=bytes(row)) for row in self.game_id]


def to_batch(t: Transitions, *, env_id: str, actor_id: str, batch_id: str | None = None) -> TransitionBatch:
    return TransitionBatch(
        batch_id=batch_id or new_batch_id(),
        env_id=env_id,
        actor_id=actor_id,
        created_at=time.time(),
        **{name: Array.of(getattr(t, name)) for name in Transitions.__dataclass_fields__},
    )


def from_batch(batch: TransitionBatch, game: Game) -> Transitions:
    """Decode and check a batch's contents against `game`; `MessageError` names the
    first problem (wrong env_id, shape, dtype, non-finite or impossible values)."""
    if batch.env_id != game.env_id:
        raise MessageError(f"env_id {batch.env_id!r} does not match this pipeline's {game.env_id!r}")
    n = batch.ply.shape[0] if len(batch.ply.shape) == 1 else -1
    if n < 1:
        raise MessageError(f"ply: expected a non-empty 1-d array, got shape {batch.ply.shape}")
    A = game.num_actions
    expected = {
        "game_id": (np.uint8, (n, 16)),
        "ply": (np.int16, (n,)),
        "model_version": (np.int32, (n,)),
        "observation": (np.uint8, (n, *game.obs_shape)),
        "legal_mask": (np.bool_, (n, A)),
        "policy": (np.float32, (n, A)),
        "value": (np.float32, (n,)),
        "search_value": (np.float32, (n,)),
        "policy_weight": (np.float32, (n,)),
    }
    cols = {}
    for name, (dtype, shape) in expected.items():
        arr: Array | None = getattr(batch, name)
        if arr is None and name in OPTIONAL_FIELDS:
            cols[name] = OPTIONAL_FIELDS[name](cols)
            continue
        if not _known_dtype(arr.dtype) or np.dtype(arr.dtype) != np.dtype(dtype):
            raise MessageError(f"{name}: expected dtype {np.dtype(dtype)}, got {arr.dtype!r}")
        if tuple(arr.shape) != shape:
            raise MessageError(f"{name}: expected shape {list(shape)}, got {arr.shape}")
        cols[name] = arr.numpy(name)
    t = Transitions(**cols)
    _check_values(t, game)
    return t


def _known_dtype(text: str) -> bool:
    try:
        np.dtype(text)
        return True
    except TypeError:
        return False


def _check_values(t: Transitions, game: Game) -> None:
    if np.any((t.ply < 0) | (t.ply >= game.max_plies)):
        raise MessageError(f"ply: values must lie in [0, {game.max_plies - 1}]")
    if np.any(t.model_version < 0):
        raise MessageError("model_version: must not be negative")
    if np.any(t.observation > 1) or np.any(t.observation.sum(axis=1) > 1):
        raise MessageError("observation: planes must be 0/1 and never overlap")
    if not all(np.all(np.isfinite(a)) for a in (t.policy, t.value, t.search_value, t.policy_weight)):
        raise MessageError("policy/value/search_value/policy_weight: NaN or infinite values")
    if np.any(t.policy < 0):
        raise MessageError("policy: negative probabilities")
    if np.any(np.abs(t.policy.sum(axis=1) - 1) > POLICY_SUM_TOLERANCE):
        raise MessageError("policy: rows must sum to 1")
    if np.any(t.policy[~t.legal_mask] > 0):
        raise MessageError("policy: probability mass on illegal moves")
    if np.any(np.abs(t.value) > 1):
        raise MessageError("value: must lie in [-1, 1]")
    if np.any(np.abs(t.search_value) > 1):
        raise MessageError("search_value: must lie in [-1, 1]")
    if np.any((t.policy_weight < 0) | (t.policy_weight > 1)):
        raise MessageError("policy_weight: must lie in [0, 1]")
