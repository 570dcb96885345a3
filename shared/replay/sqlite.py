"""The replay buffer in one SQLite file, for `cartridge up` on a machine with no services.

Same contract as the PostgreSQL store: a flush is one transaction, a batch id already in
the ledger is skipped (exactly once), rows come back in id order. SQLite calls run in a
worker thread so the event loop never waits on the disk; WAL mode lets the trainer read
while ingest writes, and a killed process leaves the file consistent.

Bounded like the PostgreSQL store: `enforce_retention` deletes the oldest rows a whole
step of `storage.partition_positions` ids at a time (one range delete on the primary
key, recorded in `<table>_dropped` first) once the newer whole steps hold
`storage.retain_positions` rows, and forgets ledger entries older than
`storage.ledger_retention_hours`. Like the PostgreSQL store's partitions, each whole step
is counted once: a pass with nothing due is two lookups on the primary key. SQLite
reuses the freed pages, so the file stops growing (it never shrinks without VACUUM).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

from shared.config import StorageConfig
from shared.games import Game
from shared.replay import ReplayUnavailable
from shared.replay.rows import ADDED_COLUMNS, READ_ADDED, DroppedPart, WriteResult, decode_rows, row_bytes
from shared.retry import Backoff, Link, retry
from shared.threads import to_thread_to_completion
from shared.transitions import Transitions

log = logging.getLogger(__name__)

# Switching to WAL and creating the tables do not wait for a busy file (ingest and the
# trainer open it at the same moment): try again for a few seconds.
SETUP_BACKOFF = Backoff(first=0.05, max=0.5)
SETUP_ATTEMPTS = 15
LEDGER_PRUNE_CHUNK = 10_000  # ledger rows per DELETE, at most one per retention pass


def add_missing_columns(db: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Add the `columns` (name -> SQL type) that a table from an earlier release lacks."""
    have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns.items():
        if name not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
            log.info("table %s: added column %s", table, name)


class SqliteReplay:
    def __init__(self, storage: StorageConfig, game: Game):
        self.path = Path(storage.sqlite_path)
        self.table = storage.replay_table  # validated identifier
        self.game = game
        self.retain = storage.retain_positions
        self.step = storage.partition_positions
        self.ledger_horizon_s = storage.ledger_retention_hours * 3600
        self._step_rows: dict[int, int] = {}  # rows in each whole step of ids (first id -> rows)
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()  # one statement sequence at a time on the connection
        self.link = Link(f"SQLite file {self.path}", log)

    async def __aenter__(self) -> "SqliteReplay":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await asyncio.to_thread(
            sqlite3.connect, self.path, check_same_thread=False, isolation_level=None, timeout=30)
        await retry(lambda: asyncio.to_thread(self._set_up), what=f"setting up {self.path}",
                    errors=sqlite3.OperationalError, backoff=SETUP_BACKOFF, attempts=SETUP_ATTEMPTS)
        self.link.ok()
        return self

    async def __aexit__(self, *exc) -> None:
        async with self._lock:  # never while a statement runs in a thread
            if self._db is not None:
                await to_thread_to_completion(self._db.close)
                self._db = None

    def _set_up(self) -> None:
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(f"""
            CREATE TABLE IF NOT EXISTS {self.table} (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                env_id TEXT NOT NULL, game_id BLOB NOT NULL, ply INTEGER NOT NULL,
                actor_id TEXT NOT NULL, model_version INTEGER NOT NULL,
                created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
                observation BLOB NOT NULL, legal_mask BLOB NOT NULL, policy BLOB NOT NULL,
                value REAL NOT NULL, search_value REAL, policy_weight REAL,
                UNIQUE (game_id, ply));
            CREATE TABLE IF NOT EXISTS {self.table}_batches (
                batch_id TEXT PRIMARY KEY, rows INTEGER NOT NULL,
                ingested_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);
            CREATE INDEX IF NOT EXISTS {self.table}_batches_ingested_at ON {self.table}_batches (ingested_at);
            CREATE TABLE IF NOT EXISTS {self.table}_dropped (
                partition TEXT PRIMARY KEY, first_id INTEGER NOT NULL, end_id INTEGER NOT NULL,
                rows INTEGER NOT NULL, positions INTEGER NOT NULL, games INTEGER NOT NULL,
                dropped_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);
        """)
        add_missing_columns(db, self.table, ADDED_COLUMNS)

    async def _run(self, fn, *args):
        # Locked, busy or gone: raised to callers as ReplayUnavailable.
        async with self._lock:
            with self.link.watch((sqlite3.OperationalError,), ReplayUnavailable):
                return await to_thread_to_completion(fn, *args)

    # -- writing -----------------------------------------------------------------------
    async def write(self, batches: list[tuple[str, str, str, Transitions]]) -> WriteResult:
        """Store the batches not stored before, in one transaction."""
        return await self._run(self._write, batches)

    def _write(self, batches) -> WriteResult:
        db, inserted, duplicates = self._db, 0, 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for batch_id, env_id, actor_id, t in batches:
                if db.execute(f"INSERT OR IGNORE INTO {self.table}_batches (batch_id, rows) VALUES (?, ?)",
                              (batch_id, len(t))).rowcount == 0:
                    duplicates += 1
                    continue
                n = len(t)
                rows = zip(
                    [env_id] * n, [bytes(g) for g in t.game_id], t.ply.tolist(), [actor_id] * n,
                    t.model_version.tolist(), row_bytes(t.observation), row_bytes(t.legal_mask),
                    row_bytes(t.policy), t.value.tolist(), t.search_value.tolist(), t.policy_weight.tolist(),
                )
                # OR IGNORE: the same game under a new batch id must not be stored twice.
                cur = db.executemany(
                    f"INSERT OR IGNORE INTO {self.table} (env_id, game_id, ply, actor_id, model_version,"
                    " observation, legal_mask, policy, value, search_value, policy_weight)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows)
                inserted += cur.rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return WriteResult(inserted_rows=inserted, duplicate_batches=duplicates)

    # -- retention ---------------------------------------------------------------------
    async def enforce_retention(self) -> list[DroppedPart]:
        """Delete the oldest whole steps of ids that lie beyond the newest
        `retain_positions` rows (each recorded first); prune the ledger. Returns what
        was deleted."""
        return await self._run(self._enforce_retention)

    def _enforce_retention(self) -> list[DroppedPart]:
        db, t, dropped = self._db, self.table, []
        lowest = db.execute(f"SELECT min(id) FROM {t}").fetchone()[0]
        if lowest is not None:
            highest = db.execute(f"SELECT max(id) FROM {t}").fetchone()[0]
            # Ids are handed out in order by one writer at a time, so the steps below
            # `sealed` are complete and committed: each is counted once, not walked
            # again every pass (bench/sqlite_retention.py). The step being filled
            # counts as empty, so at least `retain` rows always remain.
            first, sealed = lowest // self.step * self.step, (highest + 1) // self.step * self.step
            self._step_rows = {s: n for s, n in self._step_rows.items() if s >= first}
            for start in range(first, sealed, self.step):
                if start not in self._step_rows:
                    self._step_rows[start] = db.execute(
                        f"SELECT count(*) FROM {t} WHERE id >= ? AND id < ?", (start, start + self.step)).fetchone()[0]
            newer = sum(self._step_rows[s] for s in range(first + self.step, sealed, self.step))
            while newer >= self.retain:
                end = first + self.step
                db.execute("BEGIN IMMEDIATE")
                try:
                    rows, positions, games = db.execute(
                        f"SELECT count(*), count(DISTINCT hex(game_id) || ':' || ply), count(DISTINCT game_id)"
                        f" FROM {t} WHERE id >= ? AND id < ?", (first, end)).fetchone()
                    part = DroppedPart(f"{t} ids {first}-{end - 1}", first, end, rows, positions, games)
                    db.execute(f"INSERT INTO {t}_dropped (partition, first_id, end_id, rows, positions, games)"
                               " VALUES (?, ?, ?, ?, ?, ?)", (part.name, first, end, rows, positions, games))
                    db.execute(f"DELETE FROM {t} WHERE id >= ? AND id < ?", (first, end))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                dropped.append(part)
                log.info("deleted ids %d to %d (%d positions of %d games): beyond the newest %d",
                         first, end - 1, rows, games, self.retain)
                del self._step_rows[first]
                first = end
                newer -= self._step_rows[first]
        db.execute(
            f"DELETE FROM {t}_batches WHERE rowid IN (SELECT rowid FROM {t}_batches WHERE ingested_at <"
            f" datetime((SELECT max(ingested_at) FROM {t}_batches), ?) LIMIT ?)",
            (f"-{self.ledger_horizon_s:.0f} seconds", LEDGER_PRUNE_CHUNK))
        return dropped

    async def dropped(self) -> list[DroppedPart]:
        """Every id range retention deleted, oldest first, with its counts."""
        rows = await self._run(lambda: self._db.execute(
            f"SELECT partition, first_id, end_id, rows, positions, games FROM {self.table}_dropped"
            " ORDER BY first_id").fetchall())
        return [DroppedPart(*r) for r in rows]

    # -- reading -----------------------------------------------------------------------
    async def count(self, env_id: str) -> int:
        return await self._run(
            lambda: self._db.execute(f"SELECT count(*) FROM {self.table} WHERE env_id = ?", (env_id,)).fetchone()[0])

    async def fetch_since(self, env_id: str, last_id: int, limit: int) -> tuple[int, Transitions]:
        return await self._run(self._fetch, f"WHERE env_id = ? AND id > ? ORDER BY id LIMIT ?",
                               (env_id, last_id, limit), last_id)

    async def fetch_newest(self, env_id: str, limit: int) -> tuple[int, Transitions]:
        return await self._run(
            self._fetch,
            f"WHERE id IN (SELECT id FROM {self.table} WHERE env_id = ? ORDER BY id DESC LIMIT ?) ORDER BY id",
            (env_id, limit), 0)

    def _fetch(self, where: str, params: tuple, last_id: int) -> tuple[int, Transitions]:
        rows = self._db.execute(
            f"SELECT id, game_id, ply, model_version, observation, legal_mask, policy, value,"
            f" {READ_ADDED} FROM {self.table} {where}", params).fetchall()
        if not rows:
            return last_id, decode_rows(self.game, [])
        return rows[-1][0], decode_rows(self.game, rows)
