"""The evaluator's results in the SQLite file of `cartridge up` (the replay's file)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

from shared.config import StorageConfig
from shared.evaluations import (
    ADDED_EVALUATION_COLUMNS, EVALUATION_COLUMNS, GAME_COLUMNS, SERVING_COLUMNS, Evaluation, RatingGame,
    evaluation_of, evaluation_row, game_of, game_row, insert_sql, select_sql, serving_of, table_sql, tallies_sql,
)
from shared.model_store import ServingPointer
from shared.replay import ReplayUnavailable
from shared.replay.sqlite import add_missing_columns
from shared.retry import Link
from shared.threads import to_thread_to_completion

log = logging.getLogger(__name__)


def question(i: int) -> str:
    return "?"


class SqliteEvaluations:
    def __init__(self, storage: StorageConfig):
        self.path = Path(storage.sqlite_path)
        self.link = Link(f"SQLite file {self.path}", log)  # one lost/back line per outage
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> "SqliteEvaluations":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await asyncio.to_thread(sqlite3.connect, self.path, check_same_thread=False,
                                           isolation_level=None, timeout=30)
        await self._run(self._db.executescript, table_sql("REAL", "INTEGER PRIMARY KEY AUTOINCREMENT"))
        await self._run(self._add_columns)
        return self

    def _add_columns(self) -> None:
        """What a file from an earlier release lacks, in one write transaction (another
        process opening the same file at once waits, then finds them)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            add_missing_columns(db, "evaluations", dict.fromkeys(ADDED_EVALUATION_COLUMNS, "REAL"))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def __aexit__(self, *exc) -> None:
        async with self._lock:  # never while a statement runs in a thread
            if self._db is not None:
                await to_thread_to_completion(self._db.close)
                self._db = None

    async def _run(self, fn, *args):
        async with self._lock:
            with self.link.watch((sqlite3.OperationalError,), ReplayUnavailable):
                return await to_thread_to_completion(fn, *args)

    async def record(self, env_id: str, evaluation: Evaluation | None = None,
                     games: list[RatingGame] = ()) -> None:
        def write() -> None:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(insert_sql("rating_games", GAME_COLUMNS, question),
                               [game_row(env_id, g) for g in games])
                if evaluation is not None:
                    db.execute(insert_sql("evaluations", EVALUATION_COLUMNS, question, "env_id, version"),
                               evaluation_row(evaluation))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        await self._run(write)

    async def _select(self, table: str, columns: tuple[str, ...], env_id: str, order: str) -> list:
        return await self._run(lambda: self._db.execute(select_sql(table, columns, question, order),
                                                        (env_id,)).fetchall())

    async def evaluations(self, env_id: str) -> list[Evaluation]:
        return [evaluation_of(r) for r in await self._select("evaluations", EVALUATION_COLUMNS, env_id, "version")]

    async def games(self, env_id: str) -> list[RatingGame]:
        return [game_of(r) for r in await self._select("rating_games", GAME_COLUMNS, env_id, "id")]

    async def tallies(self, env_id: str, since: int = 0) -> list[tuple[str, str, int, int, int]]:
        return await self._run(lambda: self._db.execute(tallies_sql(question), (env_id, since)).fetchall())

    async def record_serving(self, env_id: str, pointer: ServingPointer) -> None:
        await self._run(self._db.execute, insert_sql("serving", SERVING_COLUMNS, question),
                        (env_id, pointer.version, pointer.hold, pointer.reason, pointer.decided_at))

    async def servings(self, env_id: str) -> list[ServingPointer]:
        return [serving_of(r) for r in await self._select("serving", SERVING_COLUMNS, env_id, "id")]
