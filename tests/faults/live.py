"""A small live pipeline for fault injection: real service processes (`python -m
services.<name>`) talking to RabbitMQ, PostgreSQL and an S3 server through `TcpProxy`s,
plus the accounting that says whether anything was lost or doubled.

Every actor writes the messages the broker confirmed to its `confirmed_log`
(services/actor/publisher.py); the audit compares those games with the rows in
PostgreSQL: `produced` = positions in confirmed messages, `stored` = those found in the
table, `lost` = the difference, `duplicated` = rows beyond one per (game_id, ply), and
`half_stored` = games in the table whose plies are not a complete 0..n-1 run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from shared.config import Config
from tests.faults.proxy import TcpProxy

STOP_TIMEOUT_S = 45.0


@dataclass
class Audit:
    produced: int  # positions in messages the broker confirmed to an actor
    stored: int  # of those, positions found in the replay table
    lost: int
    duplicated: int
    half_stored: int  # games in the table with a gap in their plies
    rows: int  # every row in the table (games confirmed after the audit's read included)

    def line(self, fault: str, recovery_s: float) -> str:
        return (f"FAULT {fault}: produced {self.produced}, stored {self.stored}, lost {self.lost}, "
                f"duplicated {self.duplicated}, recovery {recovery_s:.1f} s")


@dataclass
class Service:
    name: str
    module: str
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    exit_codes: list[int] = field(default_factory=list)
    stopped: bool = False  # the test ended its current process on purpose

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class LivePipeline:
    """Start, kill, restart and stop the services of one test; audit what they stored."""

    def __init__(self, config: Config, tmp_path: Path, proxies: dict[str, TcpProxy], base_env: dict[str, str]):
        self.config = config
        self.tmp_path = tmp_path
        self.proxies = proxies
        self.base_env = base_env
        self.services: dict[str, Service] = {}

    # -- processes --------------------------------------------------------------------

    def add(self, name: str, module: str, **env: str) -> Service:
        service = Service(name, module, {**self.base_env, **env}, self.tmp_path / f"{name}.log")
        if module == "actor":
            service.env.setdefault("CARTRIDGE_ACTOR_ACTOR_ID", name)
            service.env["CARTRIDGE_ACTOR_CONFIRMED_LOG"] = str(self.confirmed_log(name))
        self.services[name] = service
        return service

    def confirmed_log(self, name: str) -> Path:
        return self.tmp_path / f"{name}.confirmed.jsonl"

    async def start(self, name: str) -> None:
        service = self.services[name]
        log = open(service.log_path, "a")
        service.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{service.module}", env=service.env,
            cwd=self.tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=log)
        log.close()
        service.stopped = False

    async def start_all(self) -> None:
        for name in self.services:
            await self.start(name)

    def running(self, name: str) -> bool:
        p = self.services[name].process
        return p is not None and p.returncode is None

    async def kill(self, name: str) -> None:
        await self.signal(name, signal.SIGKILL)

    async def signal(self, name: str, sig: int, timeout: float = STOP_TIMEOUT_S) -> tuple[int, float]:
        """Send `sig` and wait for the exit: (exit code, seconds it took)."""
        service = self.services[name]
        assert service.process is not None and service.process.returncode is None, f"{name} is not running"
        start = time.monotonic()
        service.stopped = True
        service.process.send_signal(sig)
        code = await asyncio.wait_for(service.process.wait(), timeout)
        service.exit_codes.append(code)
        return code, time.monotonic() - start

    async def stop_all(self) -> dict[str, int]:
        """SIGTERM everything still running, actors first (their confirmed games reach
        the queue), then ingest after the queue drained, then the rest."""
        codes = {}
        order = sorted(self.services, key=lambda n: self.services[n].module != "actor")
        for name in order:
            if self.running(name):
                codes[name], _ = await self.signal(name, signal.SIGTERM)
        return codes

    def assert_alive(self) -> None:
        dead = {n: s.log()[-3000:] for n, s in self.services.items()
                if s.process is not None and s.process.returncode is not None and not s.stopped}
        assert not dead, f"services exited: {dead}"

    # -- observing progress -----------------------------------------------------------

    async def rows(self) -> int:
        conn = await asyncpg.connect(self.config.storage.postgres_url)
        try:
            if not await conn.fetchval("SELECT to_regclass($1)", self.config.storage.replay_table):
                return 0
            return await conn.fetchval(f"SELECT count(*) FROM {self.config.storage.replay_table}")
        finally:
            await conn.close()

    async def wait_for(self, what: str, predicate, timeout: float = 90.0, every: float = 0.25) -> float:
        """Poll `predicate` (sync or async) until true: seconds it took. Services run in
        other processes, so looking at their effects is the only way to know."""
        start = time.monotonic()
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                logs = {n: s.log()[-2500:] for n, s in self.services.items()}
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; logs: {logs}")
            await asyncio.sleep(every)

    async def wait_for_more_rows(self, than: int, timeout: float = 90.0) -> float:
        async def more() -> bool:
            return await self.rows() > than
        return await self.wait_for(f"more than {than} rows", more, timeout)

    def confirmed(self) -> dict[str, int]:
        """Plies per game id over every actor's confirmed log."""
        games: dict[str, int] = {}
        for name, service in self.services.items():
            path = self.confirmed_log(name)
            if service.module != "actor" or not path.exists():
                continue
            for line in path.read_text().splitlines():
                if line.endswith("}"):  # a line cut by SIGKILL is not a confirmation
                    games.update(json.loads(line)["games"])
        return games

    def confirmed_rows(self) -> int:
        return sum(self.confirmed().values())

    # -- accounting -------------------------------------------------------------------

    async def audit(self) -> Audit:
        confirmed = self.confirmed()
        conn = await asyncpg.connect(self.config.storage.postgres_url)
        try:
            table = self.config.storage.replay_table
            per_game = await conn.fetch(
                f"SELECT encode(uuid_send(game_id), 'hex') AS game, count(*) AS n,"
                f" count(DISTINCT ply) AS plies, min(ply) AS first, max(ply) AS last"
                f" FROM {table} GROUP BY game_id")
        finally:
            await conn.close()
        in_table = {r["game"]: r for r in per_game}
        stored = sum(min(in_table[g]["plies"], n) for g, n in confirmed.items() if g in in_table)
        produced = sum(confirmed.values())
        return Audit(
            produced=produced, stored=stored, lost=produced - stored,
            duplicated=sum(r["n"] - r["plies"] for r in per_game),
            half_stored=sum(1 for r in per_game if r["first"] != 0 or r["last"] + 1 != r["plies"]),
            rows=sum(r["n"] for r in per_game),
        )

    async def settle_and_audit(self, timeout: float = 90.0) -> Audit:
        """Stop the actors (they drain what they published), wait until ingest has
        stored every confirmed game, then audit."""
        for name, service in self.services.items():
            if service.module == "actor" and self.running(name):
                code, _ = await self.signal(name, signal.SIGTERM)
                assert code == 0, f"{name} exited {code} on SIGTERM: {service.log()[-2000:]}"
        produced = self.confirmed_rows()

        async def all_stored() -> bool:
            return (await self.audit()).stored >= produced
        try:
            await self.wait_for("every confirmed position in PostgreSQL", all_stored, timeout)
        except AssertionError:
            pass  # the audit below reports what is missing
        return await self.audit()


def env_for(config: Config, proxies: dict[str, TcpProxy], **overrides: str) -> dict[str, str]:
    """The environment of every service: the test's names, the servers behind proxies."""
    s, b = config.storage, config.broker
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTRIDGE_")}
    pg = s.postgres_url.replace("127.0.0.1:5432", proxies["postgres"].address)
    env.update({
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "CARTRIDGE_COMMON_ENV_ID": config.common.env_id,
        "CARTRIDGE_COMMON_LOG_LEVEL": "INFO",
        "CARTRIDGE_NETWORK_BLOCKS": str(config.network.blocks),
        "CARTRIDGE_NETWORK_CHANNELS": str(config.network.channels),
        "CARTRIDGE_MCTS_NUM_SIMULATIONS": str(config.mcts.num_simulations),
        "CARTRIDGE_ACTOR_PARALLEL_GAMES": str(config.actor.parallel_games),
        "CARTRIDGE_TRAINING_STEPS_PER_ITERATION": str(config.training.steps_per_iteration),
        "CARTRIDGE_TRAINING_BATCH_SIZE": str(config.training.batch_size),
        "CARTRIDGE_TRAINING_MIN_TRANSITIONS": str(config.training.min_transitions),
        "CARTRIDGE_TRAINING_DEVICE": "cpu",
        "CARTRIDGE_STORAGE_POSTGRES_URL": pg,
        "CARTRIDGE_STORAGE_MODEL_STORE": "s3",
        "CARTRIDGE_STORAGE_S3_ENDPOINT_URL": f"http://{proxies['s3'].address}",
        "CARTRIDGE_STORAGE_S3_BUCKET": s.s3_bucket,
        "CARTRIDGE_STORAGE_S3_ACCESS_KEY": s.s3_access_key,
        "CARTRIDGE_STORAGE_S3_SECRET_KEY": s.s3_secret_key,
        "CARTRIDGE_BROKER_URL": f"amqp://guest:guest@{proxies['rabbitmq'].address}/",
        "CARTRIDGE_BROKER_TRANSITIONS_QUEUE": b.transitions_queue,
        "CARTRIDGE_BROKER_DEAD_LETTER_EXCHANGE": b.dead_letter_exchange,
        "CARTRIDGE_BROKER_DEAD_LETTER_QUEUE": b.dead_letter_queue,
        "CARTRIDGE_BROKER_MODELS_EXCHANGE": b.models_exchange,
        "CARTRIDGE_BROKER_HEARTBEATS": b.heartbeats,
        "CARTRIDGE_INGEST_FLUSH_MS": str(config.ingest.flush_ms),
    })
    env.update(overrides)
    return env
