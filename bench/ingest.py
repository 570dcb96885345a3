"""Ingest throughput against raw binary COPY of the same rows, in one run.

Prefills a fresh queue with >= 200k Connect4 transitions in game-sized messages, runs the
ingest service in burst mode and measures rows/s from the first delivery to the last
commit. Then it COPYs the same rows with asyncpg `copy_records_to_table` (10k-row
batches) into a scratch table with the same schema: the ceiling ingest works under.
Last line: a JSON object with `ingest_rows_per_s`, `raw_copy_rows_per_s`, `ratio`.

    python bench/ingest.py [--rows 200000] [--postgres postgresql://postgres@127.0.0.1:5432]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.ingest.service import IngestService  # noqa: E402
from shared.bus import RabbitBus  # noqa: E402
from shared.config import load_config  # noqa: E402
from shared.games import get_game  # noqa: E402
from shared.messages import encode_transitions  # noqa: E402
from shared.replay.postgres import COLUMNS, PostgresReplay, _records  # noqa: E402
from shared.transitions import Transitions, to_batch  # noqa: E402

GAME = get_game("connect4")


def random_game(rng: np.random.Generator) -> Transitions:
    """A game-sized block of valid rows (random contents, consistent shapes and sums)."""
    n = int(rng.integers(20, 41))
    cells = rng.integers(0, 3, size=(n, *GAME.board_shape))
    observation = np.stack([cells == 1, cells == 2], axis=1).astype(np.uint8)
    legal = rng.random((n, GAME.num_actions)) < 0.8
    legal[:, 3] = True
    policy = rng.random((n, GAME.num_actions)).astype(np.float32) * legal
    policy /= policy.sum(axis=1, keepdims=True)
    return Transitions(
        game_id=np.repeat(np.frombuffer(uuid.uuid4().bytes, np.uint8)[None], n, axis=0),
        ply=np.arange(n, dtype=np.int16), model_version=np.zeros(n, np.int32),
        observation=observation, legal_mask=legal, policy=policy.astype(np.float32),
        value=np.where(np.arange(n) % 2 == 0, 1.0, -1.0).astype(np.float32),
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    config = load_config(environ={}, overrides={
        "common": {"env_id": "connect4", "log_level": "WARNING"},
        "storage": {"postgres_url": f"{args.postgres}/bench_ingest_{run}"},
        "broker": {"url": args.amqp, "transitions_queue": f"bench.{run}.transitions",
                   "dead_letter_exchange": f"bench.{run}.dead", "dead_letter_queue": f"bench.{run}.dead"},
    })
    rng = np.random.default_rng(0)
    games, rows = [], 0
    while rows < args.rows:
        games.append(random_game(rng))
        rows += len(games[-1])
    batches = [to_batch(g, env_id="connect4", actor_id="bench") for g in games]

    start = time.perf_counter()
    async with RabbitBus(config.broker, name="bench publisher") as bus:
        for i in range(0, len(batches), 256):  # 256 publishes in flight
            await asyncio.gather(*(bus.publish_transitions(encode_transitions(b), message_id=b.batch_id)
                                   for b in batches[i:i + 256]))
    publish_s = time.perf_counter() - start
    print(f"prefilled {rows} rows in {len(batches)} messages ({len(batches) / publish_s:.0f} msg/s)")

    ingest = IngestService(config)
    await ingest.run(burst=True)
    s = ingest.stats
    assert s.rows == rows, f"stored {s.rows} of {rows} rows"
    ingest_s = s.last_commit_at - s.first_delivery_at
    ingest_rate = rows / ingest_s

    # Raw COPY of the same rows into a scratch copy of the table.
    records = _records([(b.batch_id, "connect4", "bench", g) for b, g in zip(batches, games)])
    conn = await asyncpg.connect(config.storage.postgres_url)
    try:
        await conn.execute("CREATE TABLE raw_copy (LIKE transitions INCLUDING ALL)")
        start = time.perf_counter()
        for i in range(0, len(records), 10_000):
            await conn.copy_records_to_table("raw_copy", records=records[i:i + 10_000], columns=COLUMNS)
        raw_s = time.perf_counter() - start
    finally:
        await conn.close()
        admin = await asyncpg.connect(f"{args.postgres}/postgres")
        await admin.execute(f'DROP DATABASE IF EXISTS "bench_ingest_{run}" WITH (FORCE)')
        await admin.close()
        async with RabbitBus(config.broker, name="bench cleanup") as bus:
            channel = await bus._confirming_channel()
            for queue in (config.broker.transitions_queue, config.broker.dead_letter_queue):
                await channel.queue_delete(queue)
            await channel.exchange_delete(config.broker.dead_letter_exchange)
    raw_rate = rows / raw_s
    result = {
        "rows": rows, "messages": len(batches), "flushes": s.flushes,
        "ingest_seconds": round(ingest_s, 2), "raw_copy_seconds": round(raw_s, 2),
        "ingest_rows_per_s": round(ingest_rate), "raw_copy_rows_per_s": round(raw_rate),
        "ratio": round(ingest_rate / raw_rate, 3),
    }
    print(f"ingest: {ingest_rate:.0f} rows/s over {s.flushes} flushes; raw COPY: {raw_rate:.0f} rows/s")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
