"""What a retention pass of `cartridge up`'s SQLite replay costs when nothing is due.

Ingest runs retention every few seconds. Fills a fresh SQLite replay with `--rows`
Connect4 positions (random games, 10k-row flushes, as ingest writes them), retention
keeping `--retain` in steps of `--partition` ids (the config's defaults: 1,000,000 and
100,000). Then measures, in CPU seconds of this process:
- baseline: the pass of before (find the row with `retain` newer rows by walking them,
  `ORDER BY id DESC LIMIT 1 OFFSET retain`, every pass);
- the first pass of a fresh process (counts each whole step once) and the pass after it
  with nothing due (two lookups on the primary key).
Last line: a JSON object, with the ratio of the baseline to a pass with nothing due.

    .venv/bin/python bench/sqlite_retention.py [--rows 1050000] [--retain 1000000] [--partition 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.config import load_config  # noqa: E402
from shared.games import get_game  # noqa: E402
from shared.games.random_play import random_games  # noqa: E402
from shared.replay.sqlite import SqliteReplay  # noqa: E402
from shared.transitions import Transitions  # noqa: E402

GAME = get_game("connect4")
REPEATS = 5


def flushes(rows: int):
    """Flushes of ~10k rows: 400 random games written again and again, every row under a
    fresh game id (the rows' contents do not matter here, only their size)."""
    games = Transitions.concat(random_games("connect4", games=400, seed=0, min_plies=20))
    written, rng = 0, np.random.default_rng(0)
    while written < rows:
        game_ids = rng.integers(0, 256, size=(len(games), 16), dtype=np.uint8)  # one "game" per row
        yield [(uuid.uuid4().hex, "connect4", "bench", dataclasses.replace(games, game_id=game_ids))]
        written += len(games)


async def cpu_seconds(call) -> float:
    start = time.process_time()
    await call()
    return time.process_time() - start


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_050_000)
    parser.add_argument("--retain", type=int, default=1_000_000)
    parser.add_argument("--partition", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(environ={}, overrides={
            "common": {"env_id": "connect4"}, "training": {"window_size": min(args.retain, 200_000)},
            "storage": {"replay_backend": "sqlite", "sqlite_path": f"{tmp}/replay.sqlite",
                        "retain_positions": args.retain, "partition_positions": args.partition}})
        async with SqliteReplay(config.storage, GAME) as replay:
            rows = 0
            for flush in flushes(args.rows):
                rows += (await replay.write(flush)).inserted_rows
            print(f"sqlite_retention: {rows} positions stored, retaining {args.retain} in steps of {args.partition}")

            def walk():
                return replay._db.execute(
                    f"SELECT id FROM {replay.table} ORDER BY id DESC LIMIT 1 OFFSET ?", (args.retain,)).fetchone()

            baseline = [await cpu_seconds(lambda: replay._run(walk)) for _ in range(REPEATS)]
            first = await cpu_seconds(replay.enforce_retention)
            idle = [await cpu_seconds(replay.enforce_retention) for _ in range(REPEATS)]
    result = {
        "rows": rows, "retain": args.retain, "partition": args.partition,
        "baseline_walk_cpu_s": round(min(baseline), 4), "first_pass_cpu_s": round(first, 4),
        "idle_pass_cpu_s": round(min(idle), 5),
        "ratio": round(min(baseline) / max(min(idle), 1e-6), 1),
    }
    print(f"baseline (walk over {args.retain} rows every pass): {result['baseline_walk_cpu_s']} CPU s; "
          f"first pass (each step counted once): {result['first_pass_cpu_s']} s; "
          f"a pass with nothing due: {result['idle_pass_cpu_s']} s ({result['ratio']}x less than the baseline)")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
