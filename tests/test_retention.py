"""Bounded storage on the real PostgreSQL (and the SQLite file of `cartridge up`):
retention drops whole partitions past `storage.retain_positions`, records each one's
counts first, and exactly-once (the batch ledger) and the trainer's window hold across
the drops; an unpartitioned table from an earlier version is partitioned in place; the
dead-letter queue is bounded on the real RabbitMQ."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import asyncpg
import numpy as np
import pytest

import services.ingest.service as ingest_module
import shared.replay.postgres as postgres_module
from services.ingest.service import IngestService
from services.trainer.window import ReplayWindow
from shared.bus import MemoryBus
from shared.bus.rabbitmq import connect, declare_topology
from shared.games import get_game
from shared.games.random_play import random_games
from shared.replay import open_replay
from shared.replay.postgres import COLUMNS
from shared.replay.rows import ADDED_COLUMNS
from shared.transitions import Transitions
from tests.helpers import message, wait_until

GAME = get_game("tictactoe")
ENV = "tictactoe"
PART = 100  # positions per partition
RETAIN = 300
WINDOW = 200


@pytest.fixture(params=["postgres", "sqlite"])
def config(request, make_config):
    return make_config(
        storage={"replay_backend": request.param, "retain_positions": RETAIN, "partition_positions": PART},
        training={"window_size": WINDOW})


def batches(first: int, count: int, seed: int) -> list[tuple[str, str, str, Transitions]]:
    """`count` one-game batches with ids `b<first>`, `b<first + 1>`, ..."""
    games = random_games(ENV, games=count, seed=seed)
    return [(f"b{first + i}", ENV, "test", g) for i, g in enumerate(games)]


async def _ids(config) -> list[int]:
    if config.storage.replay_backend == "sqlite":
        import sqlite3
        with sqlite3.connect(config.storage.sqlite_path) as db:
            return [r[0] for r in db.execute("SELECT id FROM transitions ORDER BY id")]
    conn = await asyncpg.connect(config.storage.postgres_url)
    try:
        return [r["id"] for r in await conn.fetch("SELECT id FROM transitions ORDER BY id")]
    finally:
        await conn.close()


async def partitions(config) -> list[str]:
    conn = await asyncpg.connect(config.storage.postgres_url)
    try:
        rows = await conn.fetch("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                                " WHERE i.inhparent = 'transitions'::regclass ORDER BY 1")
        return [r["relname"] for r in rows]
    finally:
        await conn.close()


async def test_whole_partitions_are_dropped_and_duplicates_still_caught(config):
    written = 0
    async with open_replay(config.storage, GAME) as replay:
        all_batches = batches(0, 400, seed=1)
        for i in range(0, len(all_batches), 20):
            written += (await replay.write(all_batches[i:i + 20])).inserted_rows
            await replay.enforce_retention()
        dropped = await replay.dropped()
        kept = await replay.count(ENV)

        # Bounded: at least the retention, at most about two partitions more.
        assert len(dropped) >= 3
        assert RETAIN <= kept <= RETAIN + 3 * PART
        # Every position is either in the table or counted in the record of a drop.
        assert sum(d.rows for d in dropped) + kept == written
        assert all(d.positions == d.rows for d in dropped)  # nothing doubled in them
        assert all(0 < d.games <= d.rows for d in dropped)
        # Whole ranges went: nothing below the newest drop's end is left.
        ids = await _ids(config)
        assert min(ids) >= dropped[-1].end_id
        assert [d.end_id for d in dropped[:-1]] == [d.first_id for d in dropped[1:]]
        if config.storage.replay_backend == "postgres":
            left = await partitions(config)
            assert not {d.name for d in dropped} & set(left)
            assert all(n.startswith("transitions_p") for n in left)

        # Exactly once across the drops: batches whose rows were dropped long ago, and
        # recent ones, delivered again, are recognised by the ledger and not stored.
        again = await replay.write([all_batches[0], all_batches[1], all_batches[-1]])
        assert again.inserted_rows == 0 and again.duplicate_batches == 3
        assert await replay.count(ENV) == kept

        # The trainer still finds a whole window: a fresh one (a restarted trainer) loads it.
        window = ReplayWindow(GAME, WINDOW)
        assert await window.refresh(replay) == (WINDOW, 0)  # all of it the first load: none new
        assert window.filled == WINDOW and window.last_id == ids[-1]
        newer = await replay.write(batches(10_000, 2, seed=9))
        assert await window.refresh(replay) == (0, newer.inserted_rows)


async def test_sqlite_retention_counts_each_step_once_and_keeps_the_retention_across_id_gaps(make_config):
    """A pass with nothing due must not walk the table (ingest runs it every few seconds,
    and the walk's cost grows with `retain_positions`: bench/sqlite_retention.py). A game
    stored again under a new batch id is skipped but uses up ids: the gaps must not let
    retention keep fewer than `retain_positions` rows."""
    config = make_config(storage={"replay_backend": "sqlite", "retain_positions": RETAIN,
                                  "partition_positions": PART}, training={"window_size": WINDOW})
    statements: list[str] = []
    step_counts: list[str] = []  # the statements that counted a step's rows, values filled in
    async with open_replay(config.storage, GAME) as replay:
        replay._db.set_trace_callback(statements.append)
        games = batches(0, 300, seed=5)
        for i in range(0, len(games), 20):
            # Each flush also carries five games already stored, under new batch ids.
            resent = [(f"again{i}-{j}", *games[j][1:]) for j in range(max(0, i - 5), i)]
            await replay.write(games[i:i + 20] + resent)
            statements.clear()
            await replay.enforce_retention()
            step_counts += [s for s in statements if s.startswith("SELECT count(*) FROM transitions WHERE id")]
            statements.clear()
            assert await replay.enforce_retention() == []  # nothing new: nothing due
            assert not [s for s in statements if "count(" in s or "OFFSET" in s], statements
            assert await replay.count(ENV) >= min(RETAIN, sum(len(g[3]) for g in games[:i + 20]))
        assert len(step_counts) >= 5 and len(set(step_counts)) == len(step_counts)  # each step once
        ids = await _ids(config)
        assert ids[-1] - ids[0] + 1 > len(ids)  # the resent games left gaps
        dropped = await replay.dropped()
        assert len(dropped) >= 2 and min(ids) == dropped[-1].end_id
        assert RETAIN <= len(ids) <= RETAIN + 3 * PART


async def test_the_ledger_forgets_only_what_is_older_than_its_horizon(make_config):
    config = make_config(storage={"ledger_retention_hours": 1.0})
    async with open_replay(config.storage, GAME) as replay:
        old, new = batches(0, 5, seed=2), batches(5, 5, seed=3)
        await replay.write(old)
        await replay.write(new)
        conn = await asyncpg.connect(config.storage.postgres_url)
        try:  # the old batches were stored two hours before the newest
            await conn.execute("UPDATE transitions_batches SET ingested_at = now() - interval '2 hours'"
                               " WHERE batch_id = ANY($1::text[])", [b[0] for b in old])
            await replay.enforce_retention()
            left = {r["batch_id"] for r in await conn.fetch("SELECT batch_id FROM transitions_batches")}
        finally:
            await conn.close()
        assert left == {b[0] for b in new}
        assert (await replay.write(new)).duplicate_batches == 5


async def test_without_autovacuum_retention_vacuums_the_ledger(make_config, monkeypatch):
    # The ledger is the one table retention DELETEs from: without autovacuum (this test
    # machine's PostgreSQL runs without it) its dead rows would pile up for ever.
    monkeypatch.setattr(postgres_module, "LEDGER_VACUUM_ROWS", 5)
    config = make_config(storage={"ledger_retention_hours": 1.0})
    conn = await asyncpg.connect(config.storage.postgres_url)

    async def age_and_prune(replay, first: int) -> None:
        old = batches(first, 5, seed=first)
        await replay.write(old)
        await replay.write(batches(first + 5, 1, seed=first + 1))
        await conn.execute("UPDATE transitions_batches SET ingested_at = now() - interval '2 hours'"
                           " WHERE batch_id = ANY($1::text[])", [b[0] for b in old])
        await replay.enforce_retention()

    async def last_vacuum():
        return await conn.fetchval("SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'transitions_batches'")

    try:
        async with open_replay(config.storage, GAME) as replay:
            assert replay.self_vacuum == (await conn.fetchval("SHOW autovacuum") == "off")
            replay.self_vacuum = False  # as with autovacuum on: retention leaves it to the server
            await age_and_prune(replay, 0)
            assert await last_vacuum() is None
            replay.self_vacuum = True  # as with autovacuum off
            await age_and_prune(replay, 10)
            for _ in range(100):  # statistics reach other sessions within moments
                if await last_vacuum() is not None:
                    break
                await asyncio.sleep(0.05)
            assert await last_vacuum() is not None
    finally:
        await conn.close()


async def test_without_autovacuum_retention_vacuums_the_catalogs_partitions_churn(make_config, monkeypatch):
    # Every partition created and dropped leaves dead rows in pg_class, pg_attribute, ...:
    # in a 90-minute soak (1,200 partitions) they had grown the database by 12 MB.
    monkeypatch.setattr(postgres_module, "CATALOG_VACUUM_PARTITIONS", 2)
    config = make_config(storage={"retain_positions": RETAIN, "partition_positions": PART},
                         training={"window_size": WINDOW})
    conn = await asyncpg.connect(config.storage.postgres_url)

    async def last_vacuum():
        return await conn.fetchval("SELECT last_vacuum FROM pg_stat_sys_tables WHERE relname = 'pg_attribute'")

    async def write_and_drop(replay, first: int) -> int:
        dropped = 0
        for i in range(first, first + 120, 10):
            await replay.write(batches(i, 10, seed=i))
            dropped += len(await replay.enforce_retention())
        return dropped

    try:
        async with open_replay(config.storage, GAME) as replay:
            replay.self_vacuum = False  # as with autovacuum on: left to the server
            before = await last_vacuum()
            assert await write_and_drop(replay, 0) >= 2
            assert await last_vacuum() == before
            replay.self_vacuum = True  # as with autovacuum off
            assert replay.may_vacuum_catalogs  # the test's login owns its database
            assert await write_and_drop(replay, 200) >= 2
            for _ in range(100):  # statistics reach other sessions within moments
                if await last_vacuum() != before:
                    break
                await asyncio.sleep(0.05)
            assert await last_vacuum() != before
    finally:
        await conn.close()


async def test_retention_drops_nothing_while_a_writer_lists_and_creates_partitions(make_config, monkeypatch):
    """A drop waits for the partition lock a writer holds while it lists and creates
    partitions: listing beside a drop once read a NULL bound (pg_get_expr of a relation
    dropped in between) and stopped ingest, 40 minutes into a soak."""
    monkeypatch.setattr(postgres_module, "DDL_LOCK_TIMEOUT", "100ms")
    config = make_config(storage={"retain_positions": RETAIN, "partition_positions": PART},
                         training={"window_size": WINDOW})
    conn = await asyncpg.connect(config.storage.postgres_url)
    try:
        async with open_replay(config.storage, GAME) as replay:
            for i in range(0, 120, 10):
                await replay.write(batches(i, 10, seed=i))
            async with conn.transaction():  # as `_make_room` holds it
                await conn.execute("SELECT pg_advisory_xact_lock($1)", postgres_module.PARTITION_LOCK)
                assert await replay.enforce_retention() == []
            assert len(await replay.enforce_retention()) >= 2
    finally:
        await conn.close()


async def test_retention_counts_a_partition_only_once_its_writer_has_committed(make_config):
    """The sequence hands out ids before their rows commit. A retention pass during a long
    commit must not count (and keep for good) partitions whose rows are not committed yet:
    it once did, counted them empty, and then never saw enough rows to drop anything."""
    config = make_config(storage={"retain_positions": RETAIN, "partition_positions": PART},
                         training={"window_size": WINDOW})
    data = batches(0, 80, seed=3)
    rows = sum(len(b[3]) for b in data)
    assert rows > RETAIN + 2 * PART
    async with open_replay(config.storage, GAME) as replay:
        await replay._make_room(rows)
        writer = await asyncpg.connect(config.storage.postgres_url)
        try:
            async with writer.transaction():
                await replay.copy(writer, "transitions", postgres_module.copy_data(data))  # ids taken, not committed
                assert await replay.enforce_retention() == []  # nothing settled to count yet
            dropped = await replay.enforce_retention()
        finally:
            await writer.close()
        assert [d.name for d in dropped][:1] == ["transitions_p0"]
        assert await replay.count(ENV) >= RETAIN


def test_a_partition_dropped_while_the_catalog_is_read_is_left_out():
    """The NULL bound of a just-dropped partition (another service's retention) is not
    an error: that partition is gone."""
    from shared.config import StorageConfig
    from shared.replay.postgres import PostgresReplay

    class Catalog:  # what the catalog query returns mid-drop
        async def fetch(self, *_):
            return [{"relname": "transitions_p200", "bound": "FOR VALUES FROM ('200') TO ('300')"},
                    {"relname": "transitions_p100", "bound": None},
                    {"relname": "transitions_p0", "bound": "FOR VALUES FROM (MINVALUE) TO ('100')"}]

    replay = PostgresReplay(StorageConfig(), GAME)
    parts = asyncio.run(replay._partitions(Catalog()))
    assert parts == [("transitions_p0", 0, 100), ("transitions_p200", 200, 300)]


async def test_the_trainer_window_keeps_sampling_while_partitions_drop(config):
    """A writer that enforces retention after every flush and a trainer window that
    refreshes and samples, at the same time on the same database."""
    rng = np.random.default_rng(0)
    done, turn = asyncio.Event(), asyncio.Event()
    samples = 0

    async def write() -> None:
        async with open_replay(config.storage, GAME) as replay:
            all_batches = batches(0, 600, seed=4)
            for i in range(0, len(all_batches), 10):
                await replay.write(all_batches[i:i + 10])
                await replay.enforce_retention()
                turn.clear()
                await turn.wait()  # the trainer refreshes and samples between any two writes
        done.set()

    async def train() -> ReplayWindow:
        nonlocal samples
        async with open_replay(config.storage, GAME) as replay:
            window = ReplayWindow(GAME, WINDOW)
            while True:
                finished = done.is_set()
                await window.refresh(replay)
                if window.filled:
                    obs, policy, value, _ = window.sample(32, rng)
                    assert obs.shape == (32, *GAME.obs_shape)
                    np.testing.assert_allclose(policy.sum(axis=1), 1, rtol=1e-5)
                    samples += 1
                turn.set()
                if finished:
                    return window
                await asyncio.sleep(0)

    _, window = await asyncio.gather(write(), train())
    async with open_replay(config.storage, GAME) as replay:
        dropped = await replay.dropped()
        last_id, newest = await replay.fetch_newest(ENV, WINDOW)
    assert len(dropped) >= 3 and samples > 10
    # The window caught up with every row written and holds exactly the newest ones.
    assert window.last_id == last_id and window.filled == WINDOW
    order = (window.write + np.arange(WINDOW)) % WINDOW  # ring order, oldest first
    np.testing.assert_array_equal(window.value[order], newest.value)
    np.testing.assert_array_equal(window.observation[order], newest.observation)


COLUMNS_BEFORE = [c for c in COLUMNS if c not in ADDED_COLUMNS]  # the first release's columns
INSERT_AS_BEFORE = (f"INSERT INTO transitions ({', '.join(COLUMNS_BEFORE)})"
                    f" VALUES ({', '.join(f'${i + 1}' for i in range(len(COLUMNS_BEFORE)))})")


def rows_as_before(parts) -> list[tuple]:
    """Rows of `(batch_id, env_id, actor_id, Transitions)` in the first release's columns."""
    return [(env_id, uuid.UUID(bytes=bytes(t.game_id[i])), int(t.ply[i]), actor_id, int(t.model_version[i]),
             t.observation[i].tobytes(), t.legal_mask[i].tobytes(), t.policy[i].tobytes(), float(t.value[i]))
            for _, env_id, actor_id, t in parts for i in range(len(t))]


async def test_a_table_from_the_first_release_gains_the_columns_added_since(config):
    """Rows stored before the columns existed read their result as their search value
    and a policy weight of 1 (every move was a full search then)."""
    old, new = batches(0, 10, seed=11), batches(10, 10, seed=12)
    async with open_replay(config.storage, GAME):
        pass  # today's schema, then made as the first release had it
    if config.storage.replay_backend == "postgres":
        conn = await asyncpg.connect(config.storage.postgres_url)
        try:
            for name in ADDED_COLUMNS:
                await conn.execute(f"ALTER TABLE transitions DROP COLUMN {name}")
            await conn.executemany(INSERT_AS_BEFORE, rows_as_before(old))
        finally:
            await conn.close()
    else:
        import sqlite3
        db = sqlite3.connect(config.storage.sqlite_path)
        with db:
            for name in ADDED_COLUMNS:
                db.execute(f"ALTER TABLE transitions DROP COLUMN {name}")
            db.executemany(f"INSERT INTO transitions ({', '.join(COLUMNS_BEFORE)}) VALUES ({', '.join('?' * 9)})",
                           [(*r[:1], r[1].bytes, *r[2:]) for r in rows_as_before(old)])
        db.close()

    for _ in range(2):  # opened twice: the second time there is nothing to add
        async with open_replay(config.storage, GAME) as replay:
            await replay.write(new)
    async with open_replay(config.storage, GAME) as replay:
        _, rows = await replay.fetch_since(ENV, 0, 10_000)
    stored_old, stored_new = len(rows_as_before(old)), sum(len(b[3]) for b in new)
    assert len(rows) == stored_old + stored_new
    np.testing.assert_array_equal(rows.search_value[:stored_old], rows.value[:stored_old])
    np.testing.assert_array_equal(rows.policy_weight[:stored_old], 1)
    for name in ADDED_COLUMNS:  # new rows keep their own
        np.testing.assert_array_equal(getattr(rows, name)[stored_old:],
                                      np.concatenate([getattr(b[3], name) for b in new]))
    assert not np.array_equal(rows.search_value[stored_old:], rows.value[stored_old:])
    assert 0 < rows.policy_weight[stored_old:].mean() < 1


async def test_an_unpartitioned_table_is_partitioned_in_place(make_config):
    config = make_config(storage={"retain_positions": RETAIN, "partition_positions": PART},
                         training={"window_size": WINDOW})
    old = batches(0, 60, seed=5)
    conn = await asyncpg.connect(config.storage.postgres_url)
    try:  # the schema and data of the version before partitioning
        await conn.execute("""
            CREATE TABLE transitions (
                id bigserial PRIMARY KEY, env_id text NOT NULL, game_id uuid NOT NULL, ply smallint NOT NULL,
                actor_id text NOT NULL, model_version integer NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(), observation bytea NOT NULL,
                legal_mask bytea NOT NULL, policy bytea NOT NULL, value real NOT NULL, UNIQUE (game_id, ply));
            CREATE TABLE transitions_batches (
                batch_id text PRIMARY KEY, rows integer NOT NULL, ingested_at timestamptz NOT NULL DEFAULT now());
        """)
        await conn.executemany("INSERT INTO transitions_batches (batch_id, rows) VALUES ($1, $2)",
                               [(b[0], len(b[3])) for b in old])
        await conn.executemany(INSERT_AS_BEFORE, rows_as_before(old))
        before = await conn.fetch(f"SELECT id, {', '.join(COLUMNS_BEFORE)} FROM transitions ORDER BY id")
    finally:
        await conn.close()

    for _ in range(2):  # opened twice: the second time there is nothing to do
        async with open_replay(config.storage, GAME) as replay:
            assert await replay.count(ENV) == len(before)
    conn = await asyncpg.connect(config.storage.postgres_url)
    try:
        kind = await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'transitions'")
        after = await conn.fetch(f"SELECT id, {', '.join(COLUMNS_BEFORE)} FROM transitions ORDER BY id")
        legacy = await conn.fetchval("SELECT count(*) FROM transitions_p0")
    finally:
        await conn.close()
    assert kind == "p"  # partitioned
    assert [tuple(r) for r in after] == [tuple(r) for r in before]  # every row as it was
    assert legacy == len(before)  # the old table is the first partition

    async with open_replay(config.storage, GAME) as replay:
        # The old ledger still catches a redelivery; new rows continue the ids.
        assert (await replay.write(old[:3])).duplicate_batches == 3
        new = batches(100, 200, seed=6)
        for i in range(0, len(new), 20):
            await replay.write(new[i:i + 20])
            await replay.enforce_retention()
        ids = await _ids(config)
        dropped = await replay.dropped()
    assert ids[0] > before[-1]["id"]
    # The old table went first, whole, once enough newer rows were there.
    assert dropped[0].name == "transitions_p0" and dropped[0].rows == len(before)
    assert "transitions_p0" not in await partitions(config)


async def test_ingest_drops_partitions_and_still_skips_redeliveries(config, monkeypatch):
    monkeypatch.setattr(ingest_module, "RETENTION_EVERY_S", 0.05)
    bus = MemoryBus()
    games = random_games(ENV, games=300, seed=7)
    bodies = [message(g, batch_id=f"m{i:05d}") for i, g in enumerate(games)]
    ingest = IngestService(config, bus=bus)
    stop = asyncio.Event()
    task = asyncio.create_task(ingest.run(stop))
    try:
        for batch_id, body in bodies:
            await bus.publish_transitions(body, message_id=batch_id)
        await wait_until(lambda: ingest.stats.dropped_partitions >= 3, "three partitions dropped", tasks=[task])
        rows = ingest.stats.rows
        for batch_id, body in bodies[:5]:  # redelivered after their rows were dropped
            await bus.publish_transitions(body, message_id=batch_id)
        await wait_until(lambda: ingest.stats.duplicates == 5, "the redeliveries skipped", tasks=[task])
        assert ingest.stats.rows == rows == sum(len(g) for g in games)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    # Stopped, so no retention pass runs between reading the status and the store.
    status = ingest.status()
    assert status.dropped_partitions == ingest.stats.dropped_partitions
    async with open_replay(config.storage, GAME) as replay:
        assert status.dropped_rows == sum(d.rows for d in await replay.dropped())
        assert await replay.count(ENV) + status.dropped_rows == rows


async def test_the_dead_letter_queue_is_bounded_and_counted(make_config, monkeypatch):
    monkeypatch.setattr(ingest_module, "RETENTION_EVERY_S", 0.05)
    bound = 4000
    config = make_config(broker={"max_dead_letter_bytes": bound})
    junk = [(f"junk-{i}", bytes([i]) * 1000) for i in range(10)]  # not msgpack: dead-lettered
    connection = await connect(config.broker, name="test publisher")
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel, config.broker)
        for batch_id, body in junk:
            await channel.default_exchange.publish(aio_pika.Message(body, message_id=batch_id),
                                                   routing_key=config.broker.transitions_queue)
    ingest = IngestService(config)
    stop = asyncio.Event()
    task = asyncio.create_task(ingest.run(stop))
    try:
        await wait_until(lambda: ingest.stats.dead_lettered == len(junk), "every message dead-lettered", tasks=[task])
        depth = await ingest.bus.dead_letter_depth()
        await wait_until(lambda: ingest.status().dead_letter_depth == depth, "the depth in the status", tasks=[task])
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    assert depth == bound // 1000  # the oldest were dropped at the bound
    connection = await aio_pika.connect(config.broker.url)
    async with connection:
        queue = await (await connection.channel()).declare_queue(config.broker.dead_letter_queue, passive=True)
        kept = []
        while (msg := await queue.get(no_ack=True, fail=False)) is not None:
            kept.append(msg.message_id)
    assert kept == [b[0] for b in junk[-depth:]]  # the newest stay
