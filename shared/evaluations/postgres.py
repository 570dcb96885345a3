"""The evaluator's results in PostgreSQL (the replay's database)."""

from __future__ import annotations

import logging

import asyncpg

from shared.config import StorageConfig, mask_url
from shared.evaluations import (
    ADDED_EVALUATION_COLUMNS, EVALUATION_COLUMNS, GAME_COLUMNS, SERVING_COLUMNS, Evaluation, RatingGame,
    evaluation_of, evaluation_row, game_of, game_row, insert_sql, select_sql, serving_of, table_sql, tallies_sql,
)
from shared.games import get_game
from shared.model_store import ServingPointer
from shared.replay import ReplayUnavailable
from shared.replay.postgres import (
    MIGRATION_LOCK, UNAVAILABLE, PostgresReplay, add_missing_columns, may_create, refusing_untrusted,
)
from shared.retry import Link, reach

log = logging.getLogger(__name__)


def dollar(i: int) -> str:
    return f"${i}"


class PostgresEvaluations:
    def __init__(self, storage: StorageConfig):
        self.storage = storage
        self.url = storage.postgres_url
        self.link = Link(f"PostgreSQL at {mask_url(self.url)}", log)  # one lost/back line per outage
        self.pool: asyncpg.Pool | None = None

    async def __aenter__(self) -> "PostgresEvaluations":
        # The replay knows how to create the database if the evaluator is first.
        replay = PostgresReplay(self.storage, get_game("tictactoe"))

        async def attempt() -> None:
            with refusing_untrusted(self.url):
                await replay._create_database()
            self.pool = await asyncpg.create_pool(self.url, min_size=1, max_size=2)

        await reach(f"PostgreSQL at {mask_url(self.url)}", attempt, attempts=self.storage.connect_attempts,
                    errors=(OSError, TimeoutError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError))
        with self._translated():
            if not await may_create(self.pool):  # a reader's login (the web page's): the evaluator creates them
                return self
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)  # the replay's lock
                await conn.execute(table_sql("double precision", "bigserial PRIMARY KEY"))
                await add_missing_columns(conn, "evaluations",
                                          dict.fromkeys(ADDED_EVALUATION_COLUMNS, "double precision"))
        return self

    async def __aexit__(self, *exc) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    def _translated(self):
        return self.link.watch(UNAVAILABLE, ReplayUnavailable)

    async def record(self, env_id: str, evaluation: Evaluation | None = None,
                     games: list[RatingGame] = ()) -> None:
        with self._translated():
            async with self.pool.acquire() as conn, conn.transaction():
                if games:
                    await conn.executemany(insert_sql("rating_games", GAME_COLUMNS, dollar),
                                           [game_row(env_id, g) for g in games])
                if evaluation is not None:
                    await conn.execute(insert_sql("evaluations", EVALUATION_COLUMNS, dollar, "env_id, version"),
                                       *evaluation_row(evaluation))

    async def _select(self, table: str, columns: tuple[str, ...], env_id: str, order: str) -> list:
        with self._translated():
            return await self.pool.fetch(select_sql(table, columns, dollar, order), env_id)

    async def evaluations(self, env_id: str) -> list[Evaluation]:
        return [evaluation_of(r) for r in await self._select("evaluations", EVALUATION_COLUMNS, env_id, "version")]

    async def games(self, env_id: str) -> list[RatingGame]:
        return [game_of(r) for r in await self._select("rating_games", GAME_COLUMNS, env_id, "id")]

    async def tallies(self, env_id: str, since: int = 0) -> list[tuple[str, str, int, int, int]]:
        with self._translated():
            return [tuple(r) for r in await self.pool.fetch(tallies_sql(dollar), env_id, since)]

    async def record_serving(self, env_id: str, pointer: ServingPointer) -> None:
        with self._translated():
            await self.pool.execute(insert_sql("serving", SERVING_COLUMNS, dollar),
                                    env_id, pointer.version, pointer.hold, pointer.reason, pointer.decided_at)

    async def servings(self, env_id: str) -> list[ServingPointer]:
        return [serving_of(r) for r in await self._select("serving", SERVING_COLUMNS, env_id, "id")]
