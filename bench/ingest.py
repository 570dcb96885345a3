"""Ingest throughput against raw binary COPY of the same rows, in one run.

1. Prefill a fresh queue (`bench.<run>.*`) with >= 200k Connect4 transitions, one random
   game of 20-42 plies per message, published with confirms and 256 in flight.
2. Run the ingest service in burst mode in this process; rows/s from its first delivery
   to its last commit.
3. COPY the same rows with asyncpg `copy_records_to_table` (10k-row batches, records
   built beforehand) into a scratch table of the same schema: the ceiling ingest works
   under.
4. The two exactly-once write paths on their own (no broker), 10k-row flushes into a
   fresh table each: the batch ledger + one COPY (what `PostgresReplay.write` does) vs
   COPY into a temporary staging table + `INSERT ... SELECT ... ON CONFLICT DO NOTHING`.
The queues, exchanges and database are deleted afterwards. Last line: a JSON object with
`ingest_rows_per_s`, `raw_copy_rows_per_s` and `ratio` (and the other figures).

    .venv/bin/python bench/ingest.py [--rows 200000] [--postgres postgresql://postgres@127.0.0.1:5432]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import asyncpg
import msgspec
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scratch import delete_scratch  # noqa: E402
from services.ingest.service import IngestService  # noqa: E402
from shared.bus.rabbitmq import CONTENT_TYPE_MSGPACK, connect, declare_topology  # noqa: E402
from shared.config import Config, load_config  # noqa: E402
from shared.games import get_game  # noqa: E402
from shared.messages import encode_transitions  # noqa: E402
from shared.games.random_play import random_games  # noqa: E402
from shared.replay.postgres import COLUMNS, PostgresReplay, copy_data  # noqa: E402
from shared.replay.rows import row_bytes  # noqa: E402
from shared.transitions import Transitions, to_batch  # noqa: E402

GAME = get_game("connect4")
IN_FLIGHT = 256
FLUSH_ROWS = 10_000


async def prefill(config: Config, batches) -> float:
    """Publish every batch (persistent, confirmed, IN_FLIGHT at a time); msg/s."""
    start = time.perf_counter()
    connection = await connect(config.broker, name="bench publisher")
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel, config.broker)
        for i in range(0, len(batches), IN_FLIGHT):
            await asyncio.gather(*(
                channel.default_exchange.publish(
                    aio_pika.Message(encode_transitions(b), message_id=b.batch_id,
                                     content_type=CONTENT_TYPE_MSGPACK,
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=config.broker.transitions_queue)
                for b in batches[i:i + IN_FLIGHT]))
    return len(batches) / (time.perf_counter() - start)


def copy_records(batches: list[tuple[str, str, str, Transitions]]) -> list[tuple]:
    """asyncpg COPY records for all rows of `batches`, built column by column (each byte
    column one `tobytes()` sliced per row, each game's uuid made once): the raw
    baseline's input, built before its clock starts."""
    t = Transitions.concat([b[3] for b in batches]) if len(batches) > 1 else batches[0][3]
    env_ids = [env for _, env, _, rows in batches for _ in range(len(rows))]
    actor_ids = [actor for _, _, actor, rows in batches for _ in range(len(rows))]
    raw_ids = row_bytes(t.game_id)
    uuids = {g: uuid.UUID(bytes=g) for g in set(raw_ids)}
    return list(zip(
        env_ids, [uuids[g] for g in raw_ids], t.ply.tolist(), actor_ids, t.model_version.tolist(),
        row_bytes(t.observation), row_bytes(t.legal_mask), row_bytes(t.policy), t.value.tolist(),
    ))


async def raw_copy(conn: asyncpg.Connection, table: str, records: list[tuple]) -> float:
    """rows/s of plain COPY of prebuilt records, FLUSH_ROWS per statement."""
    start = time.perf_counter()
    for i in range(0, len(records), FLUSH_ROWS):
        await conn.copy_records_to_table(table, records=records[i:i + FLUSH_ROWS], columns=COLUMNS)
    return len(records) / (time.perf_counter() - start)


def flushes(batches: list[tuple[str, str, str, Transitions]]) -> list[list]:
    """The batches grouped into flushes of about FLUSH_ROWS rows, as ingest makes them."""
    out, current, rows = [], [], 0
    for b in batches:
        current.append(b)
        rows += len(b[3])
        if rows >= FLUSH_ROWS:
            out.append(current)
            current, rows = [], 0
    return out + ([current] if current else [])


async def ledger_copy(config: Config, batches, table: str) -> float:
    """rows/s of `PostgresReplay.write` (ledger insert + one COPY per flush)."""
    storage = msgspec.structs.replace(config.storage, replay_table=table)
    async with PostgresReplay(storage, GAME) as replay:
        start = time.perf_counter()
        for flush in flushes(batches):
            await replay.write(flush)
        return sum(len(b[3]) for b in batches) / (time.perf_counter() - start)


async def staging_upsert(conn: asyncpg.Connection, batches, table: str) -> float:
    """rows/s of the alternative: COPY into a temporary table, then INSERT ... SELECT ...
    ON CONFLICT (game_id, ply) DO NOTHING, one transaction per flush."""
    cols = ", ".join(COLUMNS)
    await conn.execute(f"CREATE TEMP TABLE staging (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    start = time.perf_counter()
    for flush in flushes(batches):
        async with conn.transaction():
            await PostgresReplay.copy(conn, "staging", copy_data(flush))  # as write() builds it
            await conn.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM staging"
                               " ON CONFLICT (game_id, ply) DO NOTHING")
    return sum(len(b[3]) for b in batches) / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    database = f"bench_ingest_{run}"
    config = load_config(environ={}, overrides={
        "common": {"env_id": "connect4", "log_level": "WARNING"},
        "storage": {"replay_backend": "postgres", "postgres_url": f"{args.postgres}/{database}"},
        "broker": {"url": args.amqp, "transitions_queue": f"bench.{run}.transitions",
                   "dead_letter_exchange": f"bench.{run}.dead", "dead_letter_queue": f"bench.{run}.dead",
                   "models_exchange": f"bench.{run}.models"},
    })
    games, rows = [], 0
    while rows < args.rows:
        games += random_games("connect4", 500, seed=len(games), min_plies=20)
        rows = sum(len(g) for g in games)
    batches = [to_batch(g, env_id="connect4", actor_id="bench") for g in games]
    try:
        rate = await prefill(config, batches)
        print(f"prefilled {rows} rows in {len(batches)} messages ({rows / len(batches):.1f} rows each, "
              f"{rate:.0f} msg/s published)")

        # The bench's own data (hundreds of MB of objects) would otherwise make every
        # garbage collection inside the service slower than in a real ingest process.
        gc.collect()
        gc.freeze()
        ingest = IngestService(config)
        await ingest.run(burst=True)
        s = ingest.stats
        assert s.rows == rows and s.dead_lettered == 0, f"stored {s.rows} of {rows} rows"
        ingest_s = s.last_commit_at - s.first_delivery_at
        ingest_rate = rows / ingest_s
        print(f"ingest: {ingest_rate:.0f} rows/s ({len(batches) / ingest_s:.0f} msg/s) over {s.flushes} "
              f"flushes, {ingest_s:.2f} s from first delivery to last commit")

        rows_by_batch = [(b.batch_id, "connect4", "bench", g) for b, g in zip(batches, games)]
        conn = await asyncpg.connect(config.storage.postgres_url)
        try:
            # Plain tables with the indexes of one replay partition (the parent has only the
            # primary key; each partition has its own UNIQUE (game_id, ply)).
            await conn.execute("CREATE TABLE raw_copy (LIKE transitions INCLUDING ALL, UNIQUE (game_id, ply))")
            raw_rate = await raw_copy(conn, "raw_copy", copy_records(rows_by_batch))
            print(f"raw copy_records_to_table: {raw_rate:.0f} rows/s; ingest reaches {ingest_rate / raw_rate:.2f} of it")

            ledger_rate = await ledger_copy(config, rows_by_batch, "ledger_path")
            await conn.execute("CREATE TABLE staging_path (LIKE transitions INCLUDING ALL, UNIQUE (game_id, ply))")
            staging_rate = await staging_upsert(conn, rows_by_batch, "staging_path")
            print(f"exactly-once write paths, {FLUSH_ROWS}-row flushes with records built inside: "
                  f"ledger + COPY {ledger_rate:.0f} rows/s, staging COPY + INSERT ON CONFLICT "
                  f"{staging_rate:.0f} rows/s")
        finally:
            await conn.close()
    finally:
        b = config.broker
        await delete_scratch(b.url, [b.transitions_queue, b.dead_letter_queue],
                             [b.dead_letter_exchange, b.models_exchange], args.postgres, database)

    print(json.dumps({
        "rows": rows, "messages": len(batches), "flushes": s.flushes,
        "ingest_seconds": round(ingest_s, 3),
        "ledger_copy_rows_per_s": round(ledger_rate), "staging_upsert_rows_per_s": round(staging_rate),
        "ingest_rows_per_s": round(ingest_rate), "raw_copy_rows_per_s": round(raw_rate),
        "ratio": round(ingest_rate / raw_rate, 3),
    }))


if __name__ == "__main__":
    uvloop.run(main())  # as the services run
