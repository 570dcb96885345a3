"""Checking a whole flush of transition messages at once.

`from_batch` checks one message: its arrays' dtypes and shapes, then their values (a
dozen numpy reductions). Per message of one game that is ~66 us, most of ingest's CPU
time; over a whole flush at once it is ~12 us per message. So messages whose arrays line
up (same dtypes and inner shapes, each array as long as its own shape says) are merged,
field by field, into one batch that `from_batch` checks once. If that fails, the group
is checked message by message, so each bad message is named with its own reason and the
good ones still land. The rules themselves stay in `shared.transitions`; merging is
sound because they apply row by row (a future rule across rows, e.g. plies of a game
in sequence, would have to be checked per message).
"""

from __future__ import annotations

import math

import numpy as np

from shared.games import Game
from shared.messages import Array, MessageError, TransitionBatch
from shared.transitions import Transitions, from_batch

FIELDS = tuple(Transitions.__dataclass_fields__)
_itemsizes: dict[str, int] = {}  # dtype text -> bytes per element


def check_many(batches: list[TransitionBatch], game: Game) -> list[Transitions | MessageError]:
    """Per message, in order: its rows, or the `MessageError` saying why it is unusable."""
    out: list[Transitions | MessageError | None] = [None] * len(batches)
    groups: dict[tuple, list[int]] = {}
    for i, batch in enumerate(batches):
        key = _layout(batch)
        groups.setdefault(key if key is not None else ("alone", i), []).append(i)
    for key, members in groups.items():
        if len(members) > 1:
            rows = _check_merged([batches[i] for i in members], game)
            if rows is not None:
                start = 0
                for i in members:
                    n = batches[i].rows
                    out[i] = Transitions(**{f: getattr(rows, f)[start:start + n] for f in FIELDS})
                    start += n
                continue
        for i in members:  # alone, or a group with at least one bad message in it
            try:
                out[i] = from_batch(batches[i], game)
            except MessageError as exc:
                out[i] = exc
    return out


def _layout(batch: TransitionBatch) -> tuple | None:
    """What must be equal for messages to be merged: env_id and every field's dtype and
    inner shape. None if the message's own arrays do not line up row for row (it is
    then checked alone, and `from_batch` says what is wrong)."""
    if len(batch.ply.shape) != 1 or batch.ply.shape[0] < 1:
        return None
    n = batch.ply.shape[0]
    key: list = [batch.env_id]
    for name in FIELDS:
        a: Array | None = getattr(batch, name)
        if a is None:
            return None  # an older actor's message, without an optional field: checked alone
        size = _itemsizes.get(a.dtype)
        if size is None:
            try:
                size = _itemsizes[a.dtype] = np.dtype(a.dtype).itemsize
            except TypeError:
                return None
        if not a.shape or a.shape[0] != n or len(a.data) != n * math.prod(a.shape[1:]) * size:
            return None
        key.append((a.dtype, tuple(a.shape[1:])))
    return tuple(key)


def _check_merged(batches: list[TransitionBatch], game: Game) -> Transitions | None:
    """All rows of `batches` (same layout) checked as one batch, or None if any is bad."""
    first, n = batches[0], sum(b.rows for b in batches)
    merged = TransitionBatch(
        batch_id="", env_id=first.env_id, actor_id="", created_at=0.0,
        **{name: Array(getattr(first, name).dtype, [n, *getattr(first, name).shape[1:]],
                       b"".join([getattr(b, name).data for b in batches]))
           for name in FIELDS},
    )
    try:
        return from_batch(merged, game)
    except MessageError:
        return None
