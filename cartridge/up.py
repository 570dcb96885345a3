"""`cartridge up`: the whole pipeline on one machine, with no services to install.

The same actor, ingest and trainer code as the distributed services, on three embedded
back ends: a SQLite replay file (`storage.replay_backend = "sqlite"`), a model directory
(`storage.model_store = "local"`), and an in-process bus in place of RabbitMQ. Actors run
in worker processes (one per core by default), each an ordinary `ActorService` whose bus
is a pipe to this process; ingest and the trainer run here.

Ctrl-C (or SIGTERM) stops it cleanly: actors publish the games they finished, ingest
stores everything published, the trainer keeps its last checkpoint. The next
`cartridge up` resumes from the same replay file and the newest checkpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time

import msgspec

from services.actor.service import ActorService
from services.ingest.service import IngestService
from services.trainer.service import TrainerService
from shared.bus import MemoryBus
from shared.bus.pipe import PipeBus, parent_pipe, serve_pipe
from shared.config import Config
from shared.service import base_parser, run_configured, run_service

log = logging.getLogger("cartridge.up")

CONFIG_ENV = "CARTRIDGE_UP_WORKER_CONFIG"
EMBEDDED = {"storage": {"replay_backend": "sqlite", "model_store": "local"}}
PROGRESS_EVERY_S = 10.0
WORKER_EXIT_S = 60.0


async def up(config: Config, args: argparse.Namespace, stop: asyncio.Event) -> None:
    bus = MemoryBus()
    ingest = IngestService(config, bus=bus)
    trainer = TrainerService(config, bus=bus)
    ingest_stop, trainer_stop = asyncio.Event(), asyncio.Event()
    workers = [await _spawn_worker(config, i) for i in range(args.actors)]
    log.info("cartridge up: %d actor processes, replay %s, models in %s (Ctrl-C stops cleanly)",
             len(workers), config.storage.sqlite_path, config.storage.local_model_dir)
    async with bus, asyncio.TaskGroup() as tasks:
        tasks.create_task(ingest.run(ingest_stop))
        tasks.create_task(trainer.run(trainer_stop))
        bridges = [tasks.create_task(serve_pipe(bus, w.stdout, w.stdin)) for w in workers]
        progress = tasks.create_task(_show_progress(ingest, trainer))

        await stop.wait()
        log.info("stopping: actors finish publishing, then ingest stores everything, then the trainer stops")
        for w in workers:
            if w.returncode is None:
                w.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*(w.wait() for w in workers)), WORKER_EXIT_S)
        await asyncio.gather(*bridges)
        while (stored := ingest.status()).state != "stopped" and stored.settled < bus.published:
            await asyncio.sleep(0.05)  # ingest is storing the last published games
        ingest_stop.set()
        trainer_stop.set()
        progress.cancel()
    stored, trained = ingest.status(), trainer.status()
    log.info("stopped: %d positions stored this run, model %d, step %d", stored.rows, trained.version, trained.step)


async def _spawn_worker(config: Config, index: int) -> asyncio.subprocess.Process:
    actor = msgspec.structs.replace(config.actor, actor_id=config.actor.actor_id or f"up-actor-{index}")
    env = {**os.environ, CONFIG_ENV: msgspec.json.encode(msgspec.structs.replace(config, actor=actor)).decode()}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cartridge.up", "--worker", env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26,
        start_new_session=True,  # Ctrl-C reaches this process, which stops workers in order
    )


async def _show_progress(ingest: IngestService, trainer: TrainerService) -> None:
    last, last_t = ingest.status(), time.monotonic()
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        now, i, t = time.monotonic(), ingest.status(), trainer.status()
        dt = now - last_t
        actors = ", ".join(f"{a}: v{v}" for a, v in sorted(i.actor_models.items())) or "none yet"
        loss = f"{t.loss:.3f} (policy {t.policy_loss:.3f}, value {t.value_loss:.3f})" if t.loss is not None else "-"
        log.info(
            "%.1f games/s, %.0f positions/s | replay %d positions | step %d, loss %s | model v%d | actors play %s",
            (i.messages - last.messages) / dt, (i.rows - last.rows) / dt, t.replay_size, t.step, loss,
            t.version, actors,
        )
        last, last_t = i, now


async def _worker(config: Config, args: argparse.Namespace, stop: asyncio.Event) -> None:
    reader, writer = await parent_pipe()
    # A parent that is gone cannot store anything more: stop then too.
    await ActorService(config, bus=PipeBus(reader, writer, closed=stop)).run(stop)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--worker"]:  # an actor process of ours: its config comes from us
        config = msgspec.json.decode(os.environ[CONFIG_ENV], type=Config)
        return run_configured(_worker, config, argparse.Namespace(), "cartridge up worker")
    parser = base_parser("cartridge up", "Run actors, ingest and trainer on this machine, no services needed.")
    parser.add_argument("--actors", type=int, default=os.cpu_count() or 1, help="actor processes (default: one per core)")
    return run_service(up, parser, argv, defaults=EMBEDDED)


if __name__ == "__main__":
    sys.exit(main())
