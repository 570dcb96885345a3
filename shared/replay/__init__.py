"""The replay buffer: PostgreSQL in a deployment, one SQLite file for `cartridge up`."""

from __future__ import annotations

from typing import Protocol

from shared.config import StorageConfig
from shared.games import Game
from shared.replay.rows import DroppedPart, WriteResult
from shared.transitions import Transitions


class ReplayUnavailable(ConnectionError):
    """The database is away or refuses for now (connection lost, restarting, locked,
    table missing): the caller keeps its data and tries again. Each back end raises it
    for its own driver's errors."""


class Replay(Protocol):
    async def __aenter__(self) -> "Replay": ...

    async def __aexit__(self, *exc) -> None: ...

    async def write(self, batches: list[tuple[str, str, str, Transitions]]) -> WriteResult:
        """`(batch_id, env_id, actor_id, rows)` per message; one transaction, each batch
        id stored at most once."""

    async def enforce_retention(self) -> list[DroppedPart]:
        """Drop what lies beyond `storage.retain_positions` (whole partitions, each one's
        counts recorded first) and ledger entries beyond its horizon; what was dropped."""

    async def dropped(self) -> list[DroppedPart]:
        """The record of everything retention dropped, oldest first."""

    async def count(self, env_id: str) -> int: ...

    async def fetch_since(self, env_id: str, last_id: int, limit: int) -> tuple[int, Transitions]:
        """Rows with id > `last_id` in id order, and the id of the last one."""

    async def fetch_newest(self, env_id: str, limit: int) -> tuple[int, Transitions]:
        """The newest `limit` rows in id order, and the id of the last one."""


def open_replay(storage: StorageConfig, game: Game) -> Replay:
    """The back end `storage.replay_backend` names, not yet entered (`async with` it)."""
    if storage.replay_backend == "sqlite":
        from shared.replay.sqlite import SqliteReplay

        return SqliteReplay(storage, game)
    from shared.replay.postgres import PostgresReplay

    return PostgresReplay(storage, game)


__all__ = ["DroppedPart", "Replay", "ReplayUnavailable", "WriteResult", "open_replay"]
