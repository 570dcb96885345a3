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

Bounded: the table is range-partitioned on `id` (`<table>_p<first id>`, each
`storage.partition_positions` ids wide, created ahead of the sequence by the writer).
Retention (`enforce_retention`, run by ingest) drops the oldest partition whole once the
newer ones hold `storage.retain_positions` rows: a catalog change, never a DELETE of
millions of rows. Each dropped partition's counts go to `<table>_dropped` first. A
partitioned table's unique constraints must contain the partition key, so the table-wide
`UNIQUE (game_id, ply)` became one per partition; exactly-once rests on the ledger, which
is not partitioned (its primary key stays global) and is pruned by age only
(`storage.ledger_retention_hours` behind its newest entry, in small deletes: it holds one
row per message, not per position). Where the server's autovacuum is off, retention
VACUUMs what it churns itself: the ledger, and the system catalogs that every partition
created and dropped leaves dead rows in. A table from before partitioning is migrated in
place: it becomes the first partition (`<table>_p0`), nothing is copied.

Who may do what (`deploy/postgres/roles.sql`): the writer (ingest) owns these tables,
since creating and dropping partitions at run time is an owner's right; a login that may
not create tables (the trainer's) skips the migrations and only reads.
"""

from __future__ import annotations

import contextlib
import logging
import re
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import numpy as np

from shared import tls
from shared.config import StorageConfig, mask_url
from shared.games import Game
from shared.replay import ReplayUnavailable
from shared.replay.rows import ADDED_COLUMNS, READ_ADDED, DroppedPart, WriteResult, decode_rows
from shared.retry import Link, Refused, reach
from shared.transitions import Transitions

log = logging.getLogger(__name__)

COLUMNS = ["env_id", "game_id", "ply", "actor_id", "model_version", "observation", "legal_mask", "policy", "value",
           "search_value", "policy_weight"]
MIGRATION_LOCK = 0x6361727472696467  # pg_advisory_xact_lock key: "cartridg"
PARTITION_LOCK = MIGRATION_LOCK + 1  # creating or dropping partitions: one at a time
RETENTION_LOCK = MIGRATION_LOCK + 2  # dropping partitions, pruning the ledger: one service at a time
# DDL on the partitioned table waits at most this for its lock, so that it never sits in
# the lock queue in front of ingest's writes and the trainer's reads for long; it is
# tried again on the next pass.
DDL_LOCK_TIMEOUT = "2s"
LEDGER_PRUNE_CHUNK = 10_000  # ledger rows per DELETE
LEDGER_PRUNE_CHUNKS = 10  # DELETEs per retention pass at most
LEDGER_VACUUM_ROWS = 10_000  # without autovacuum: VACUUM the ledger after this many rows pruned
CATALOG_VACUUM_PARTITIONS = 20  # without autovacuum: VACUUM the catalogs after this many partitions dropped
# The system catalogs a partition's creation and drop leave dead rows in (about 10 kB a
# partition): a database owner may vacuum them (not being shared catalogs).
CHURNED_CATALOGS = ("pg_class", "pg_attribute", "pg_attrdef", "pg_depend", "pg_type", "pg_constraint",
                    "pg_index", "pg_inherits", "pg_statistic")
# The longest partition name `<table>_p<first id>` must fit PostgreSQL's 63-byte names.
MAX_TABLE_NAME = 63 - len(f"_p{2**63}")
_BOUND = re.compile(r"FROM \('?(MINVALUE|-?\d+)'?\) TO \('?(MAXVALUE|-?\d+)'?\)")
# What a call raises while the server is away or refuses for now (connection lost,
# restarting, table missing): raised to callers as ReplayUnavailable.
UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@contextlib.contextmanager
def refusing_untrusted(url: str):
    """Around connecting at start-up: a server whose TLS certificate is not trusted is
    refused at once (retrying will not make it trusted), naming the URL's setting."""
    try:
        yield
    except Exception as exc:
        if (error := tls.certificate_error(exc)) is not None:
            raise Refused(tls.untrusted(f"PostgreSQL at {mask_url(url)}", error,
                                        "sslrootcert in storage.postgres_url")) from None
        raise


async def may_create(pool: asyncpg.Pool) -> bool:
    """Whether this login may create tables (the owner's or a writer's, which run the
    migrations); a least-privilege reader may not, and only reads what exists."""
    return bool(await pool.fetchval("SELECT has_schema_privilege(current_schema(), 'CREATE')"))


async def add_missing_columns(conn, table: str, columns: dict[str, str]) -> None:
    """Add the `columns` (name -> SQL type) that a table from an earlier release lacks
    (checked first: ALTER TABLE takes its lock even when there is nothing to add).
    `table` as it appears in SQL (quoted if need be)."""
    have = {r["attname"] for r in await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped", table)}
    for name, kind in columns.items():
        if name not in have:
            await conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
            log.info("table %s: added column %s", table.strip('"'), name)


class PostgresReplay:
    def __init__(self, storage: StorageConfig, game: Game):
        self.url = storage.postgres_url
        self.connect_attempts = storage.connect_attempts
        # Validated against the config's identifier pattern, and quoted all the same.
        self.name = storage.replay_table
        if len(self.name) > MAX_TABLE_NAME:
            raise ValueError(f"storage.replay_table {self.name!r} is too long for PostgreSQL: at most "
                             f"{MAX_TABLE_NAME} characters (its partitions are named <table>_p<first id>)")
        self.table = f'"{self.name}"'
        self.ledger = f'"{self.name}_batches"'
        self.sequence = f'"{self.name}_id_seq"'
        self.dropped_table = f'"{self.name}_dropped"'
        self.retain = storage.retain_positions
        self.partition_size = storage.partition_positions
        self.ledger_horizon_s = storage.ledger_retention_hours * 3600
        self.self_vacuum = False  # set if the server's autovacuum is off: retention vacuums what it churns
        self.may_vacuum_catalogs = False  # this login owns the database (or is a superuser)
        self._pruned_unvacuumed = 0  # ledger rows deleted since its last VACUUM
        self._dropped_unvacuumed = 0  # partitions dropped since the catalogs' last VACUUM
        self._covered_until = 0  # ids below this have a partition (as last seen)
        self._sealed_rows: dict[str, int] = {}  # rows of partitions the sequence has passed
        self.game = game
        self.pool: asyncpg.Pool | None = None
        self.link = Link(f"PostgreSQL at {mask_url(self.url)}", log)

    async def __aenter__(self) -> "PostgresReplay":
        async def attempt() -> None:
            try:
                with refusing_untrusted(self.url):
                    await self._create_database()
            except asyncpg.InvalidAuthorizationSpecificationError as exc:  # bad user/password
                raise Refused(f"PostgreSQL at {mask_url(self.url)} refused the login: {exc}") from None
            self.pool = await asyncpg.create_pool(self.url, min_size=1, max_size=4)

        await reach(f"PostgreSQL at {mask_url(self.url)}", attempt, attempts=self.connect_attempts,
                    errors=(OSError, TimeoutError, asyncpg.CannotConnectNowError,
                            asyncpg.TooManyConnectionsError))
        if await may_create(self.pool):
            await self._migrate()
            # The ledger is the one table retention DELETEs from, and every partition
            # dropped leaves dead catalog rows: with autovacuum off neither would ever be
            # reclaimed, and the database would grow without bound.
            self.self_vacuum = await self.pool.fetchval("SHOW autovacuum") == "off"
            self.may_vacuum_catalogs = await self.pool.fetchval(
                "SELECT rolsuper OR pg_has_role(current_user, (SELECT datdba FROM pg_database"
                " WHERE datname = current_database()), 'MEMBER') FROM pg_roles WHERE rolname = current_user")
            if self.self_vacuum:
                log.warning("PostgreSQL runs with autovacuum off: retention will VACUUM %s itself after every "
                            "%d ledger rows it prunes, and the system catalogs after every %d partitions it drops",
                            self.ledger, LEDGER_VACUUM_ROWS, CATALOG_VACUUM_PARTITIONS)
                if not self.may_vacuum_catalogs:
                    log.warning("this login neither owns the database nor is a superuser: the catalogs' VACUUM "
                                "is left out and they will grow; turn autovacuum on")
        else:  # a reader's login (the trainer's): the schema is the writer's to create
            log.info("PostgreSQL login may not create tables: reading %s as ingest made it", self.name)
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
        """Create what is missing, partition a table from before partitioning. Services
        start together: the advisory lock makes concurrent migrations take turns (CREATE
        ... IF NOT EXISTS alone can still collide on the catalog)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            kind = await conn.fetchval("SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", self.table)
            if kind is not None:
                await add_missing_columns(conn, self.table, ADDED_COLUMNS)
            if kind == "r":
                await self._partition_existing(conn)
            elif kind is None:
                await conn.execute(f"""
                    CREATE SEQUENCE IF NOT EXISTS {self.sequence};
                    {self._create_parent_sql()};
                    ALTER SEQUENCE {self.sequence} OWNED BY {self.table}.id;
                """)
            await conn.execute(f"""
                CREATE TABLE IF NOT EXISTS {self.ledger} (
                    batch_id text PRIMARY KEY,
                    rows integer NOT NULL,
                    ingested_at timestamptz NOT NULL DEFAULT now()
                );
                CREATE INDEX IF NOT EXISTS "{self.name}_batches_ingested_at" ON {self.ledger} (ingested_at);
                CREATE TABLE IF NOT EXISTS {self.dropped_table} (
                    partition text PRIMARY KEY,
                    first_id bigint NOT NULL,
                    end_id bigint NOT NULL,
                    rows bigint NOT NULL,
                    positions bigint NOT NULL,
                    games bigint NOT NULL,
                    dropped_at timestamptz NOT NULL DEFAULT now()
                );
            """)
        await self._make_room(0)

    def _create_parent_sql(self) -> str:
        return f"""
            CREATE TABLE {self.table} (
                id bigint NOT NULL DEFAULT nextval('{self.sequence}'),
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
                search_value real,
                policy_weight real,
                PRIMARY KEY (id)
            ) PARTITION BY RANGE (id)"""

    async def _partition_existing(self, conn) -> None:
        """The unpartitioned table of an earlier version becomes the first partition,
        covering every id it holds or its sequence handed out: renamed (with its
        constraints, whose names the new table wants) and attached, no row copied (the
        attach reads it once to check the bound)."""
        first = f"{self.name}_p0"
        end = await conn.fetchval(
            f"SELECT greatest((SELECT coalesce(max(id), 0) FROM {self.table}),"
            f" (SELECT last_value FROM {self.sequence})) + 1")
        constraints = await conn.fetch("SELECT conname FROM pg_constraint WHERE conrelid = $1::regclass", self.table)
        await conn.execute(f'ALTER TABLE {self.table} RENAME TO "{first}"')
        for c in constraints:
            if c["conname"].startswith(self.name):
                await conn.execute(f'ALTER TABLE "{first}" RENAME CONSTRAINT "{c["conname"]}"'
                                   f' TO "{first}{c["conname"][len(self.name):]}"')
        await conn.execute(f"""
            {self._create_parent_sql()};
            ALTER SEQUENCE {self.sequence} OWNED BY {self.table}.id;
            ALTER TABLE {self.table} ATTACH PARTITION "{first}" FOR VALUES FROM (MINVALUE) TO ({int(end)});
        """)
        log.info("partitioned table %s: its %d ids so far are partition %s", self.name, end - 1, first)

    async def _partitions(self, conn) -> list[tuple[str, int, int]]:
        """`(name, first id, end id)` of every partition, oldest first."""
        rows = await conn.fetch(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass", self.table)
        parts = []
        for r in rows:
            if r["bound"] is None:
                # pg_get_expr gives NULL for a relation dropped after the scan saw it: a
                # partition that retention (here or in another service) just dropped.
                continue
            lo, hi = _BOUND.search(r["bound"]).groups()
            parts.append((r["relname"], 0 if lo == "MINVALUE" else int(lo), 2**63 - 1 if hi == "MAXVALUE" else int(hi)))
        return sorted(parts, key=lambda p: p[1])

    async def _make_room(self, rows: int) -> None:
        """Make sure partitions exist for the next `rows` ids and a whole partition
        beyond, creating them when less is left (once per partition, not per write)."""
        with self._call():
            last = await self.pool.fetchval(f"SELECT last_value FROM {self.sequence}")
            if last + rows + self.partition_size < self._covered_until:
                return
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
                    await conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
                    parts = await self._partitions(conn)
                    end = parts[-1][2] if parts else last // self.partition_size * self.partition_size
                    while end < last + rows + 2 * self.partition_size:
                        await conn.execute(
                            f'CREATE TABLE "{self.name}_p{end}" PARTITION OF {self.table} (UNIQUE (game_id, ply))'
                            f" FOR VALUES FROM ({end}) TO ({end + self.partition_size})")
                        end += self.partition_size
                    self._covered_until = end
            except asyncpg.LockNotAvailableError:
                # The table was busy; enough room for this write is all that must be there.
                if last + rows >= self._covered_until:
                    raise
                log.debug("could not create the next partition now (table busy); trying again later")

    # -- retention ---------------------------------------------------------------------
    async def enforce_retention(self) -> list[DroppedPart]:
        """Drop the oldest partitions while the newer ones hold `retain_positions` rows
        (recording each one's counts first), and forget ledger entries older than the
        horizon. Returns what was dropped. Only the partitions the sequence has passed
        are counted (each once); the one being filled counts as empty, so at least
        `retain_positions` rows always remain."""
        dropped: list[DroppedPart] = []
        with self._call():
            async with self.pool.acquire() as conn:
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK):
                    return dropped  # another service is at it
                try:
                    await self._drop_old_partitions(conn, dropped)
                    await self._prune_ledger(conn)
                    await self._vacuum_catalogs(conn, len(dropped))
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK)
        return dropped

    async def _drop_old_partitions(self, conn, dropped: list[DroppedPart]) -> None:
        last = await conn.fetchval(f"SELECT last_value FROM {self.sequence}")
        sealed = [p for p in await self._partitions(conn) if p[2] <= last + 1]
        for i, (name, *_) in enumerate(sealed):
            if name not in self._sealed_rows:
                if (rows := await self._settled_count(conn, name)) is None:
                    sealed = sealed[:i]  # this one and the newer ones are still being written
                    break
                self._sealed_rows[name] = rows
        newer = sum(self._sealed_rows[name] for name, *_ in sealed[1:])
        for i, (name, first_id, end_id) in enumerate(sealed[:-1]):
            if newer < self.retain:
                return
            try:
                async with conn.transaction():
                    # Counted before the lock (no id in it is handed out any more), so
                    # the lock is held only for the catalog change.
                    counts = await conn.fetchrow(
                        f'SELECT count(*) AS rows, count(DISTINCT (game_id, ply)) AS positions,'
                        f' count(DISTINCT game_id) AS games FROM "{name}"')
                    await conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
                    # Not while a writer lists and creates partitions (`_make_room`, which
                    # takes this lock, then the parent's: the same order, no deadlock).
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
                    # The parent first, as every reader and writer locks it: no deadlock.
                    await conn.execute(f"LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE")
                    await conn.execute(
                        f"INSERT INTO {self.dropped_table} (partition, first_id, end_id, rows, positions, games)"
                        " VALUES ($1, $2, $3, $4, $5, $6)",
                        name, first_id, end_id, counts["rows"], counts["positions"], counts["games"])
                    await conn.execute(f'DROP TABLE "{name}"')
            except asyncpg.LockNotAvailableError:
                log.debug("could not drop partition %s now (table busy); trying again later", name)
                return
            part = DroppedPart(name, first_id, end_id, counts["rows"], counts["positions"], counts["games"])
            dropped.append(part)
            del self._sealed_rows[name]
            log.info("dropped partition %s (ids %d to %d: %d positions of %d games); at least %d positions kept",
                     name, first_id, end_id - 1, part.rows, part.games, newer)
            newer -= self._sealed_rows[sealed[i + 1][0]]  # what is newer than the next one

    async def _settled_count(self, conn, name: str) -> int | None:
        """The rows of a partition the sequence has passed, once no transaction writes into
        it any more; None while one does. The sequence hands out ids before their rows
        commit, so a count taken then would miss them, and it is kept for good. A writer
        holds ROW EXCLUSIVE on every partition it has put a row in until it commits;
        SHARE conflicts with that, and NOWAIT makes a busy partition wait for the next pass."""
        try:
            async with conn.transaction():
                await conn.execute(f'LOCK TABLE "{name}" IN SHARE MODE NOWAIT')
                return await conn.fetchval(f'SELECT count(*) FROM "{name}"')
        except asyncpg.LockNotAvailableError:
            return None

    async def _prune_ledger(self, conn) -> None:
        """Forget batch ids stored more than the horizon before the newest one, a chunk
        at a time (each pass removes about what arrived since the last one)."""
        for _ in range(LEDGER_PRUNE_CHUNKS):
            status = await conn.execute(
                f"DELETE FROM {self.ledger} WHERE batch_id IN (SELECT batch_id FROM {self.ledger}"
                f" WHERE ingested_at < (SELECT max(ingested_at) FROM {self.ledger}) - make_interval(secs => $1)"
                f" LIMIT $2)", self.ledger_horizon_s, LEDGER_PRUNE_CHUNK)
            deleted = int(status.rsplit(" ", 1)[-1])
            self._pruned_unvacuumed += deleted
            if deleted < LEDGER_PRUNE_CHUNK:
                break
        if self.self_vacuum and self._pruned_unvacuumed >= LEDGER_VACUUM_ROWS:
            # Makes the dead rows' space reusable (the file does not shrink, and need not:
            # the ledger holds about the same number of rows from pass to pass).
            await conn.execute(f"VACUUM {self.ledger}")
            self._pruned_unvacuumed = 0
            log.debug("vacuumed %s", self.ledger)

    async def _vacuum_catalogs(self, conn, dropped: int) -> None:
        """Without autovacuum: make the catalog rows of dropped partitions reusable."""
        self._dropped_unvacuumed += dropped
        if self.self_vacuum and self.may_vacuum_catalogs and self._dropped_unvacuumed >= CATALOG_VACUUM_PARTITIONS:
            await conn.execute(f"VACUUM {', '.join(f'pg_catalog.{c}' for c in CHURNED_CATALOGS)}")
            self._dropped_unvacuumed = 0
            log.debug("vacuumed the system catalogs")

    async def dropped(self) -> list[DroppedPart]:
        """Every partition retention dropped, oldest first, with its counts."""
        with self._call():
            rows = await self.pool.fetch(
                f"SELECT partition, first_id, end_id, rows, positions, games FROM {self.dropped_table} ORDER BY first_id")
        return [DroppedPart(*r) for r in rows]

    # -- writing -----------------------------------------------------------------------
    async def write(self, batches: list[tuple[str, str, str, Transitions]]) -> WriteResult:
        """Store the batches not stored before, in one transaction."""
        unique = {b[0]: b for b in batches}  # the same message twice in one flush
        # Room for twice the rows: the fallback below takes ids for its staging copy too.
        await self._make_room(2 * sum(len(b[3]) for b in unique.values()))
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
            # No conflict target: the unique indexes are the partitions' own (game_id, ply).
            f'INSERT INTO {self.table} ({cols}) SELECT {cols} FROM "{staging}" ON CONFLICT DO NOTHING')
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
                f"SELECT id, uuid_send(game_id), ply, model_version, observation, legal_mask, policy, value,"
                f" {READ_ADDED} FROM {self.table} {where}", *params)
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
            "search_value": (">f4", t.search_value),
            "policy_weight": (">f4", t.policy_weight),
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
