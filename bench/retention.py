"""Disk held by the replay with and without retention, and what a drop costs.

Writes `--rows` Connect4 positions (random games of 20-42 plies, 10k-row flushes, as
ingest writes them) into two fresh databases: one with retention off (`retain_positions`
= every row), one keeping `--retain` positions in partitions of `--partition`, running
retention after every flush as ingest does. Reports the replay's disk per million
positions without retention, the disk held at the end with it, and the time of the
partition drops against a DELETE of as many rows from the unbounded table.
Last line: a JSON object.

    .venv/bin/python bench/retention.py [--rows 600000] [--retain 200000] [--partition 50000]
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
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import flushes as group_flushes  # noqa: E402  (as ingest groups them)
from shared.config import load_config  # noqa: E402
from shared.games import get_game  # noqa: E402
from shared.games.random_play import random_games  # noqa: E402
from shared.replay.postgres import PostgresReplay  # noqa: E402

GAME = get_game("connect4")
MB = 1024 * 1024


async def replay_bytes(conn: asyncpg.Connection) -> int:
    """Disk of the replay: the transitions partitions (with indexes and TOAST) and the ledger."""
    return await conn.fetchval(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c"
        " WHERE c.relkind = 'r' AND (c.relname LIKE 'transitions_p%' OR c.relname = 'transitions_batches')")


async def fill(url: str, retain: int, partition: int, flushes: list) -> tuple[int, list[float]]:
    """Write every flush; returns (rows kept, seconds of each retention pass that dropped)."""
    config = load_config(environ={}, overrides={
        "common": {"env_id": "connect4"}, "training": {"window_size": min(retain, 200_000)},
        "storage": {"postgres_url": url, "retain_positions": retain, "partition_positions": partition}})
    drops = []
    async with PostgresReplay(config.storage, GAME) as replay:
        for flush in flushes:
            await replay.write(flush)
            start = time.perf_counter()
            if await replay.enforce_retention():
                drops.append(time.perf_counter() - start)
        return await replay.count("connect4"), drops


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=600_000)
    parser.add_argument("--retain", type=int, default=200_000)
    parser.add_argument("--partition", type=int, default=50_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    args = parser.parse_args()

    batches, rows = [], 0
    while rows < args.rows:
        for g in random_games("connect4", games=500, seed=len(batches), min_plies=20):
            batches.append((uuid.uuid4().hex, "connect4", "bench", g))
            rows += len(g)
    flushes = group_flushes(batches)

    run = uuid.uuid4().hex[:8]
    names = {"unbounded": f"bench_retention_{run}_off", "bounded": f"bench_retention_{run}_on"}
    admin = await asyncpg.connect(f"{args.postgres}/postgres")
    result = {"rows_written": rows, "retain": args.retain, "partition": args.partition}
    try:
        for name in names.values():
            await admin.execute(f'CREATE DATABASE "{name}"')
        for label, name in names.items():
            url = f"{args.postgres}/{name}"
            retain = rows if label == "unbounded" else args.retain
            kept, drops = await fill(url, retain, args.partition, flushes)
            conn = await asyncpg.connect(url)
            try:
                held = await replay_bytes(conn)
                if label == "unbounded":  # what the same rows cost to delete
                    start = time.perf_counter()
                    await conn.execute("DELETE FROM transitions WHERE id < $1", args.partition)
                    result["delete_partition_rows_s"] = round(time.perf_counter() - start, 3)
            finally:
                await conn.close()
            result[f"{label}_rows"] = kept
            result[f"{label}_mb"] = round(held / MB, 1)
            if label == "unbounded":
                result["mb_per_million_positions"] = round(held / MB / (kept / 1e6), 1)
            else:
                result["drops"] = len(drops)
                result["drop_pass_s_max"] = round(max(drops), 3) if drops else None
            print(f"{label}: {kept} positions kept, {held / MB:.1f} MB"
                  + (f", {len(drops)} retention passes dropped partitions (slowest {max(drops):.3f} s)"
                     if drops else ""))
    finally:
        for name in names.values():
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    result["bounded_mb_per_retained_million"] = round(result["bounded_mb"] / (args.retain / 1e6), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
