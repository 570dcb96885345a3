"""Soak: the distributed pipeline for N minutes, memory and disk watched, every game counted.

Runs ingest, the trainer, the evaluator and `--actors` actors as processes (`python -m
services.<name>`) on the real RabbitMQ and PostgreSQL on 127.0.0.1 and an S3 server (moto)
started on loopback, with a small search so the machine keeps up and a small retention
(`--retain`, `--partition`) so that partitions are dropped during the run, and a short
ledger horizon (`--ledger-hours`) so that the batch ledger is pruned during it too. Every
`--sample-s` seconds it records each process's RSS and open sockets, the transitions and
dead-letter queue depths, the replay table's and the database's size.

Accounting: each actor writes the messages the broker confirmed (`actor.confirmed_log`);
this reads every stored row's (game, ply) as it arrives (every few seconds, long before
retention can drop it), so `stored`, `lost` and `duplicated` are exact; the counts that
retention recorded for each dropped partition (`transitions_dropped`) are checked against
what was read (`partition_counts_match`). A service that exits is restarted and counted in
`restarts`. At the end the actors stop (draining what they published), ingest stores the
backlog, then everything stops; the database, queues and bucket are deleted.

Last line: a JSON object with `minutes`, `produced`, `stored`, `lost`, `duplicated`,
`rss_mb_per_hour` (per service, least-squares slope after warm-up: the first third of the
run), `db_mb_per_hour`, `db_mb` (the replay database at the end), `db_mb_range` (its
least, mean and greatest sample after warm-up), `db_mb_implied` (the empty database plus
what the retention setting keeps, `--retain` plus one `--partition` of positions, at the
measured bytes per position, plus the batch ledger's `--ledger-hours` of messages at the
measured bytes per entry), `positions_kept`, `partitions_dropped` and `restarts`.

Retention drops whole partitions once the newer ones hold `--retain` positions, so the table
holds between `--retain` and `--retain` plus about two partitions (plus what arrives between
two retention passes): one partition over is the middle of that range. The defaults keep
the partition a tenth of the retention, as the service's own defaults do (1M and 100k): with
partitions far smaller than a flush (10k rows) and than what arrives between two passes
(~9k at this benchmark's rate), the granularity alone held the database 10-25 % above a
40k retention in the 90-minute run of stop 20. The run's clock starts once every
actor plays and games are being stored (start-up is not part of it).

    .venv/bin/python bench/soak.py [--minutes 30] [--actors 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import asyncpg
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scratch import delete_scratch  # noqa: E402
from shared.config import load_config  # noqa: E402
from shared.games import get_game  # noqa: E402
from shared.replay import open_replay  # noqa: E402

POSTGRES = "postgresql://postgres@127.0.0.1:5432"
AMQP = "amqp://guest:guest@127.0.0.1:5672/"
LEDGER_SIZE = "SELECT pg_total_relation_size('transitions_batches')"  # the batch ledger, indexes included
READ_EVERY_S = 3.0  # how often stored rows are read for the accounting
MB = 1024 * 1024


@dataclass
class Proc:
    name: str
    module: str
    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None
    rss: list[tuple[float, float]] = field(default_factory=list)  # (minutes, MB)
    sockets: list[int] = field(default_factory=list)

    async def start(self) -> None:
        with open(self.log, "a") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"services.{self.module}", cwd=ROOT, env=self.env,
                stdout=asyncio.subprocess.DEVNULL, stderr=out)

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, timeout: float = 60) -> int | None:
        if not self.alive():
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()

    def sample(self, minute: float) -> None:
        """RSS from /proc (no extra dependency) and the sockets among its open files."""
        pid = self.process.pid
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
            fds = os.listdir(f"/proc/{pid}/fd")
            sockets = 0
            for fd in fds:
                try:
                    sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
                except OSError:
                    pass
        except (OSError, StopIteration):
            return
        self.rss.append((minute, kb / 1024))
        self.sockets.append(sockets)


class Tally:
    """Per game: rows stored and the set of plies (a bit mask) seen, read as rows arrive."""

    def __init__(self):
        self.rows: dict[str, int] = {}
        self.plies: dict[str, int] = {}
        self.last_id = 0
        self.total = 0

    async def read(self, url: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            if not await conn.fetchval("SELECT to_regclass('transitions_dropped')"):  # ingest set it up
                return
            while True:
                rows = await conn.fetch(
                    "SELECT id, encode(uuid_send(game_id), 'hex') AS game, ply FROM transitions"
                    " WHERE id > $1 ORDER BY id LIMIT 100000", self.last_id)
                for r in rows:
                    g = r["game"]
                    self.rows[g] = self.rows.get(g, 0) + 1
                    self.plies[g] = self.plies.get(g, 0) | (1 << r["ply"])
                self.total += len(rows)
                if len(rows) < 100000:
                    if rows:
                        self.last_id = rows[-1]["id"]
                    return
                self.last_id = rows[-1]["id"]
        finally:
            await conn.close()


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (minutes, value) points, per hour."""
    if len(points) < 2:
        return None
    x, y = np.array(points).T
    return float(np.polyfit(x, y, 1)[0] * 60) if np.ptp(x) > 0 else None


def confirmed(logs: list[Path]) -> dict[str, int]:
    """Plies per game id over every actor's confirmed log."""
    games: dict[str, int] = {}
    for path in logs:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.endswith("}"):
                    games.update(json.loads(line)["games"])
    return games


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def queue_depth(name: str) -> int:
    connection = await aio_pika.connect(AMQP)
    async with connection:
        raw = await (await connection.channel()).get_underlay_channel()
        try:
            return (await raw.queue_declare(name, passive=True)).message_count
        except Exception:
            return 0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--actors", type=int, default=8)
    parser.add_argument("--env", default="connect4")
    parser.add_argument("--sims", type=int, default=8, help="search simulations per move")
    parser.add_argument("--games", type=int, default=16, help="games in parallel per actor")
    parser.add_argument("--retain", type=int, default=400_000, help="storage.retain_positions")
    parser.add_argument("--partition", type=int, default=40_000, help="storage.partition_positions")
    parser.add_argument("--ledger-hours", type=float, default=0.1,
                        help="storage.ledger_retention_hours: short, so the ledger too is pruned within the run")
    parser.add_argument("--window", type=int, default=20_000, help="training.window_size")
    parser.add_argument("--sample-s", type=float, default=60, help="seconds between samples")
    args = parser.parse_args()
    sample_s = min(args.sample_s, args.minutes * 60 / 8)  # a short run still gets 8 samples

    run = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix=f"soak-{run}-"))
    database = f"bench_soak_{run}"
    url = f"{POSTGRES}/{database}"
    port = free_port()
    s3 = await asyncio.create_subprocess_exec(
        Path(sys.executable).with_name("moto_server"), "-H", "127.0.0.1", "-p", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    names = {"transitions": f"bench.{run}.transitions", "dead": f"bench.{run}.dead"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTRIDGE_")}
    env.update({
        "PYTHONPATH": str(ROOT), "CARTRIDGE_COMMON_ENV_ID": args.env,
        "CARTRIDGE_MCTS_NUM_SIMULATIONS": str(args.sims), "CARTRIDGE_ACTOR_PARALLEL_GAMES": str(args.games),
        "CARTRIDGE_TRAINING_WINDOW_SIZE": str(args.window), "CARTRIDGE_TRAINING_MIN_TRANSITIONS": "2000",
        "CARTRIDGE_TRAINING_STEPS_PER_ITERATION": "50", "CARTRIDGE_TRAINING_DEVICE": "cpu",
        "CARTRIDGE_STORAGE_POSTGRES_URL": url,
        "CARTRIDGE_STORAGE_RETAIN_POSITIONS": str(args.retain),
        "CARTRIDGE_STORAGE_PARTITION_POSITIONS": str(args.partition),
        "CARTRIDGE_STORAGE_LEDGER_RETENTION_HOURS": str(args.ledger_hours),
        "CARTRIDGE_STORAGE_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "CARTRIDGE_STORAGE_S3_BUCKET": f"bench-soak-{run}",
        "CARTRIDGE_STORAGE_S3_ACCESS_KEY": "bench", "CARTRIDGE_STORAGE_S3_SECRET_KEY": "bench",
        "CARTRIDGE_BROKER_TRANSITIONS_QUEUE": names["transitions"],
        "CARTRIDGE_BROKER_DEAD_LETTER_EXCHANGE": f"bench.{run}.dlx",
        "CARTRIDGE_BROKER_DEAD_LETTER_QUEUE": names["dead"],
        "CARTRIDGE_BROKER_MODELS_EXCHANGE": f"bench.{run}.models",
        "CARTRIDGE_BROKER_EVALUATOR_QUEUE": f"bench.{run}.evaluator",
        # Evaluate cheaply: the soak is about the pipeline holding up, not ratings.
        "CARTRIDGE_EVAL_SIMULATIONS": "8", "CARTRIDGE_EVAL_POSITIONS": "8", "CARTRIDGE_EVAL_GAMES": "4",
        "CARTRIDGE_EVAL_GAME_SIMULATIONS": "4",
    })
    config = load_config(environ=env)  # fails here, not in every service, if a setting is wrong
    procs = [Proc("ingest", "ingest", env, work / "ingest.log"),
             Proc("trainer", "trainer", env, work / "trainer.log"),
             Proc("evaluator", "evaluator", env, work / "evaluator.log")]
    actor_logs = []
    for i in range(args.actors):
        actor_logs.append(work / f"actor-{i}.confirmed.jsonl")
        procs.append(Proc(f"actor-{i}", "actor", {**env, "CARTRIDGE_ACTOR_ACTOR_ID": f"soak-{i}",
                                                   "CARTRIDGE_ACTOR_CONFIRMED_LOG": str(actor_logs[-1])},
                          work / f"actor-{i}.log"))
    tally, restarts, samples = Tally(), 0, []
    print(f"soak {run}: {args.minutes} min, {args.actors} actors, logs in {work}", flush=True)
    try:
        admin = await asyncpg.connect(f"{POSTGRES}/postgres")
        try:  # created here, so that it can be watched from the first moment
            await admin.execute(f'CREATE DATABASE "{database}"')
            empty_db = await admin.fetchval("SELECT pg_database_size($1)", database) / MB
        finally:
            await admin.close()
        await asyncio.sleep(2)  # the S3 server
        for p in procs:
            await p.start()
        # The clock starts once every actor plays and games are being stored: start-up
        # (imports, connections) is not part of the soak.
        began = time.monotonic()
        while not (all(" playing " in p.log.read_text(errors="replace") for p in procs[3:]) and tally.total):
            await tally.read(url)
            await asyncio.sleep(1)
        print(f"every actor playing, games stored, after {time.monotonic() - began:.0f} s", flush=True)
        start = time.monotonic()
        next_sample = start
        while (elapsed := time.monotonic() - start) < args.minutes * 60:
            for p in procs:
                if not p.alive():
                    print(f"{p.name} exited with {p.process.returncode}; restarting", flush=True)
                    restarts += 1
                    await p.start()
            await tally.read(url)
            if time.monotonic() >= next_sample:
                next_sample += sample_s
                minute = elapsed / 60
                for p in procs:
                    p.sample(minute)
                conn = await asyncpg.connect(url)
                try:
                    db = await conn.fetchval("SELECT pg_database_size(current_database())")
                    table = await conn.fetchval(
                        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c"
                        " WHERE c.relkind = 'r' AND c.relname LIKE 'transitions_p%'")
                    ledger = await conn.fetchval(LEDGER_SIZE)
                finally:
                    await conn.close()
                sample = {"minute": round(minute, 2), "db_mb": round(db / MB, 1), "table_mb": round(table / MB, 1),
                          "ledger_mb": round(ledger / MB, 1),
                          "queue": await queue_depth(names["transitions"]), "dead": await queue_depth(names["dead"]),
                          "stored_rows": tally.total,
                          "rss_mb": {p.name: round(p.rss[-1][1]) for p in procs if p.rss},
                          "sockets": {p.name: p.sockets[-1] for p in procs if p.sockets}}
                samples.append(sample)
                print(json.dumps(sample), flush=True)
            await asyncio.sleep(READ_EVERY_S)

        # Stop the actors (they drain what they published), then let ingest store the rest.
        minutes = (time.monotonic() - start) / 60
        await asyncio.gather(*(p.stop() for p in procs[3:]))
        while await queue_depth(names["transitions"]) > 0:
            for p in procs[:3]:  # an ingest that ends itself (stalled) is restarted here too
                if not p.alive():
                    print(f"{p.name} exited with {p.process.returncode}; restarting", flush=True)
                    restarts += 1
                    await p.start()
            await asyncio.sleep(1)
        await asyncio.sleep(2)  # the last flush commits
        await tally.read(url)
        for p in procs[:3]:
            await p.stop()
        async with open_replay(config.storage, get_game(args.env)) as replay:
            dropped = await replay.dropped()
            in_table = await replay.count(args.env)
        conn = await asyncpg.connect(url)
        try:
            db_mb = await conn.fetchval("SELECT pg_database_size(current_database())") / MB
            # Bytes per position, from the full partitions still there.
            per_row = await conn.fetchval(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::float8 FROM pg_class c"
                " WHERE c.relkind = 'r' AND c.relname LIKE 'transitions_p%'") / max(in_table, 1)
            # Bytes per ledger entry (one per message), from the entries still there.
            per_entry = await conn.fetchval(LEDGER_SIZE) / max(await conn.fetchval("SELECT count(*) FROM transitions_batches"), 1)
        finally:
            await conn.close()
    finally:
        for p in procs:
            await p.stop(10)
        s3.terminate()
        await s3.wait()
        await delete_scratch(AMQP, [names["transitions"], names["dead"], f"bench.{run}.evaluator"],
                             [f"bench.{run}.dlx", f"bench.{run}.models"], POSTGRES, database)

    games = confirmed(actor_logs)
    messages = sum(line.endswith("}") for log_file in actor_logs if log_file.exists()
                   for line in log_file.read_text().splitlines())  # one line per confirmed message
    # The ledger holds the messages of the last `ledger_hours` (at the run's mean rate).
    ledger_implied = min(messages, messages / (minutes * 60) * args.ledger_hours * 3600) * per_entry / MB
    produced = sum(games.values())
    stored = sum(min(bin(tally.plies.get(g, 0)).count("1"), n) for g, n in games.items())
    duplicated = sum(n - bin(tally.plies[g]).count("1") for g, n in tally.rows.items())
    warm = minutes / 3
    rss = {}
    for p in procs:
        key = "actor" if p.module == "actor" else p.name
        s = slope_per_hour([pt for pt in p.rss if pt[0] >= warm])
        if s is not None:
            rss[key] = round(max(rss.get(key, s), s), 1)  # actors: the fastest-growing one
    db_points = [(s["minute"], s["db_mb"]) for s in samples if s["minute"] >= warm]
    db_slope = slope_per_hour(db_points)
    result = {
        "minutes": round(minutes, 1), "actors": args.actors, "produced": produced, "stored": stored,
        "lost": produced - stored, "duplicated": duplicated,
        "rss_mb_per_hour": rss, "db_mb_per_hour": None if db_slope is None else round(db_slope, 1),
        "db_mb": round(db_mb, 1),
        "db_mb_range": [round(min(v for _, v in db_points), 1), round(sum(v for _, v in db_points) / len(db_points), 1),
                        round(max(v for _, v in db_points), 1)] if db_points else None,
        # What the settings imply: the empty database plus `retain` and one partition of
        # positions (the middle of what retention keeps) at the bytes per position measured
        # in the table at the end, plus the ledger's horizon.
        "db_mb_implied": round(empty_db + (args.retain + args.partition) * per_row / MB + ledger_implied, 1)
        if in_table else None,
        "ledger_mb_implied": round(ledger_implied, 1),
        "positions_kept": in_table,
        "retain": args.retain, "partition": args.partition, "ledger_hours": args.ledger_hours,
        "partitions_dropped": len(dropped),
        "partition_counts_match": sum(d.rows for d in dropped) + in_table == tally.total,
        "restarts": restarts,
    }
    print(json.dumps(result))


async def until_terminated() -> None:
    """`main`, cancelled by SIGTERM as by Ctrl-C: its clean-up (the services, the scratch
    database, queues and bucket) runs either way."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    await main()


if __name__ == "__main__":
    asyncio.run(until_terminated())
