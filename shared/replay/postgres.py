"""The replay buffer in PostgreSQL.

Exactly once: every flush is one transaction that first records its messages' batch ids
in a ledger (`<table>_batches`, primary key, `ON CONFLICT DO NOTHING RETURNING`); only
batches new to the ledger are written, with one binary COPY. A batch delivered twice is
stored once, and since the ledger rows commit with the data rows, a crash can never
leave one without the other. `UNIQUE (game_id, ply)` backs this up: should the same game
arrive under another batch id, that flush falls back to COPY into a staging table and
`INSERT ... SELECT ... ON CONFLICT (game_id, ply) DO NOTHING`, so it still commits.

Why the ledger first and staging only as the fallback: `bench/ingest.py` measures both
write paths in one run (10k-row flushes); the ledger + COPY path was 1.4x to 2.5x as fast
over the runs in the README's Benchmarks section, since staging writes every row twice and
probes the unique index once more.

No index on env_id: one pipeline (one game) writes a table, so the queries by id are
served by the primary key, and an (env_id, id) index cost about a quarter of the COPY
rate when measured; only `count` scans the table.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import numpy as np

from shared.config import StorageConfig, mask_url
from shared.games import Game
from shared.replay import ReplayUnavailable
from shared.replay.rows import WriteResult, decode_rows
from shared.retry import Link, Refused, reach
from shared.transitions import Transitions

log = logging.getLogger(__name__)

COLUMNS = ["env_id", "game_id", "ply", "actor_id", "model_version", "observation", "legal_mask", "policy", "value"]
MIGRATION_LOCK = 0x6361727472696467  # pg_advisory_xact_lock key: "cartridg"
# What a call raises while the server is away or refuses for now (connection lost,
# restarting, table missing): raised to callers as ReplayUnavailable.
UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PostgresReplay:
    def __init__(self, storage: StorageConfig, game: Game):
        self.url = storage.postgres_url
        self.connect_attempts = storage.connect_attempts
        # Validated against the config's identifier pattern, and quoted all the same.
        self.name = storage.replay_table
        self.table = f'"{self.name}"'
        self.ledger = f'"{self.name}_batches"'
        self.game = game
        self.pool: asyncpg.Pool | None = None
        self.link = Link(f"PostgreSQL at {mask_url(self.url)}", log)

    async def __aenter__(self) -> "PostgresReplay":
        async def attempt() -> None:
            try:
                await self._create_database()
            except asyncpg.InvalidAuthorizationSpecificationError as exc:  # bad user/password
                raise Refused(f"PostgreSQL at {mask_url(self.url)} refused the login: {exc}") from None
            self.pool = await asyncpg.create_pool(self.url, min_size=1, max_size=4)

        await reach(f"PostgreSQL at {mask_url(self.url)}", attempt, attempts=self.connect_attempts,
                    errors=(OSError, TimeoutError, asyncpg.CannotConnectNowError,
                            asyncpg.TooManyConnectionsError))
        await self._migrate()
        self.link.ok()
        return self

    async def __aexit__(self, *exc) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    def _call(self):
        """Around each use of the server: its errors raised as ReplayUnavailable, and
        the link told whether it answers."""
        return self.link.watch(UNAVAILABLE, ReplayUnavailable)

    async def _create_database(self) -> None:
        """CREATE DATABASE cannot run in a transaction and has no IF NOT EXISTS: try the
        database, create it from the maintenance database if missing, and accept losing
        the race to another service starting at the same moment."""
        parts = urlsplit(self.url)
        name = unquote(parts.path.lstrip("/"))
        if not name:
            return
        try:
            conn = await asyncpg.connect(self.url)
            await conn.close()
            return
        except asyncpg.InvalidCatalogNameError:
            pass
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{name.replace(chr(34), chr(34) * 2)}"')
            log.info("created database %s", mask_url(self.url))
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            # Another service created it first (at the same instant the catalog's unique
            # index, not the duplicate check, is what notices).
            pass
        finally:
            await admin.close()

    async def _migrate(self) -> None:
        """Create what is missing. Services start together: the advisory lock makes
        concurrent migrations take turns (CREATE ... IF NOT EXISTS alone can still
        collide on the catalog)."""
        t = self.table
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(f"""
                CREATE TABLE IF NOT EXISTS {t} (
                    id bigserial PRIMARY KEY,
                    env_id text NOT NULL,
                    game_id uuid NOT NULL,
                    ply smallint NOT NULL,
                    actor_id text NOT NULL,
                    model_version integer NOT NULL,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    observation bytea NOT NULL,
                    legal_mask bytea NOT NULL,
                    policy bytea NOT NULL,
                    value real NOT NULL,
                    UNIQUE (game_id, ply)
                );
                CREATE TABLE IF NOT EXISTS {self.ledger} (
                    batch_id text PRIMARY KEY,
                    rows integer NOT NULL,
                    ingested_at timestamptz NOT NULL DEFAULT now()
                );
            """)

    # -- writing -----------------------------------------------------------------------
    async def write(self, batches: list[tuple[str, str, str, Transitions]]) -> WriteResult:
        """Store the batches not stored before, in one transaction."""
        unique = {b[0]: b for b in batches}  # the same message twice in one flush
        with self._call():
            async with self.pool.acquire() as conn, conn.transaction():
                new = await conn.fetch(
                    f"INSERT INTO {self.ledger} (batch_id, rows) SELECT * FROM unnest($1::text[], $2::int[])"
                    " ON CONFLICT DO NOTHING RETURNING batch_id",
                    list(unique), [len(b[3]) for b in unique.values()],
                )
                fresh = [unique[r["batch_id"]] for r in new]
                inserted = sum(len(b[3]) for b in fresh)
                if inserted:
                    data = copy_data(fresh)
                    try:
                        async with conn.transaction():  # savepoint: a conflict must not abort the flush
                            await self.copy(conn, self.name, data)
                    except asyncpg.UniqueViolationError:
                        log.warning("positions already stored under another batch id; skipping those")
                        inserted = await self._insert_skipping_conflicts(conn, data)
        return WriteResult(inserted_rows=inserted, duplicate_batches=len(batches) - len(fresh))

    async def _insert_skipping_conflicts(self, conn, data: bytes) -> int:
        staging = f"{self.name}_staging"  # per connection, emptied at every commit
        await conn.execute(f'CREATE TEMP TABLE IF NOT EXISTS "{staging}" (LIKE {self.table} INCLUDING DEFAULTS)'
                           " ON COMMIT DELETE ROWS")
        await self.copy(conn, staging, data)
        cols = ", ".join(COLUMNS)
        status = await conn.execute(
            f'INSERT INTO {self.table} ({cols}) SELECT {cols} FROM "{staging}" ON CONFLICT (game_id, ply) DO NOTHING')
        return int(status.rsplit(" ", 1)[-1])

    @staticmethod
    async def copy(conn, table: str, data: bytes) -> None:
        """COPY a stream made by `copy_data` into `table`."""
        async def chunks():
            yield data
        await conn.copy_to_table(table, source=chunks(), columns=COLUMNS, format="binary")

    # -- reading -----------------------------------------------------------------------
    async def count(self, env_id: str) -> int:
        with self._call():
            return await self.pool.fetchval(f"SELECT count(*) FROM {self.table} WHERE env_id = $1", env_id)

    async def fetch_since(self, env_id: str, last_id: int, limit: int) -> tuple[int, Transitions]:
        """Up to `limit` rows with id > `last_id`, in id order, and the last one's id
        (`last_id` itself if there are none): how the trainer extends its window."""
        return await self._fetch(
            f"WHERE env_id = $1 AND id > $2 ORDER BY id LIMIT $3", (env_id, last_id, limit), last_id)

    async def fetch_newest(self, env_id: str, limit: int) -> tuple[int, Transitions]:
        """The newest `limit` rows, in id order, and the last one's id (0 if none): the
        trainer's first load of its window."""
        return await self._fetch(
            f"WHERE id IN (SELECT id FROM {self.table} WHERE env_id = $1 ORDER BY id DESC LIMIT $2) ORDER BY id",
            (env_id, limit), 0)

    async def _fetch(self, where: str, params: tuple, last_id: int) -> tuple[int, Transitions]:
        # uuid_send: the uuid's 16 bytes, as the game_id column of Transitions holds them.
        with self._call():
            rows = await self.pool.fetch(
                f"SELECT id, uuid_send(game_id), ply, model_version, observation, legal_mask, policy, value"
                f" FROM {self.table} {where}", *params)
        if not rows:
            return last_id, decode_rows(self.game, [])
        return rows[-1][0], decode_rows(self.game, [tuple(r) for r in rows])


# PostgreSQL's binary COPY format: a header, then per row a field count and each field as
# (int32 length, bytes) in network byte order, then a -1 trailer.
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
COPY_TRAILER = b"\xff\xff"


def copy_data(batches: list[tuple[str, str, str, Transitions]]) -> bytes:
    """The binary COPY stream for all rows of `batches`, built with numpy: every row of
    a group of messages with equally long env and actor ids has the same layout, so the
    group is one structured array filled column by column (no Python object per row).
    bytea columns hold the arrays' own bytes (`tobytes()` of each row)."""
    groups: dict[tuple[bytes, int], list[tuple[bytes, Transitions]]] = {}
    for _, env_id, actor_id, rows in batches:
        actor = actor_id.encode()
        groups.setdefault((env_id.encode(), len(actor)), []).append((actor, rows))
    parts = [COPY_HEADER]
    for (env, actor_len), members in groups.items():
        t = Transitions.concat([rows for _, rows in members]) if len(members) > 1 else members[0][1]
        n = len(t)
        cells = {  # column -> (dtype of its bytes, values)
            "env_id": (f"S{len(env)}", env),
            "game_id": (("u1", 16), t.game_id),
            "ply": (">i2", t.ply),
            "actor_id": (f"S{actor_len}", np.repeat(np.array([a for a, _ in members], f"S{actor_len}"),
                                                     [len(rows) for _, rows in members])),
            "model_version": (">i4", t.model_version),
            "observation": (("u1", t.observation[0].nbytes), t.observation.reshape(n, -1).view(np.uint8)),
            "legal_mask": (("u1", t.legal_mask[0].nbytes), t.legal_mask.reshape(n, -1).view(np.uint8)),
            "policy": (("u1", t.policy[0].nbytes), np.ascontiguousarray(t.policy).view(np.uint8).reshape(n, -1)),
            "value": (">f4", t.value),
        }
        layout = [("fields", ">i2")]
        for name in COLUMNS:
            dtype, _ = cells[name]
            layout.append((f"{name}_len", ">i4"))
            if np.dtype(dtype).itemsize:  # an empty text has a length and no bytes
                layout.append((name, dtype))
        rows = np.empty(n, np.dtype(layout))
        rows["fields"] = len(COLUMNS)
        for name in COLUMNS:
            dtype, values = cells[name]
            rows[f"{name}_len"] = np.dtype(dtype).itemsize
            if np.dtype(dtype).itemsize:
                rows[name] = values
        parts.append(rows.tobytes())
    parts.append(COPY_TRAILER)
    return b"".join(parts)
