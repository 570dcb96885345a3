"""`cartridge up`: the whole pipeline on one machine, with no services to install.

The same actor, ingest and trainer code as the distributed services, on three embedded
back ends: a SQLite replay file (`storage.replay_backend = "sqlite"`), a model directory
(`storage.model_store = "local"`), and an in-process bus in place of RabbitMQ. Actors run
in worker processes (one per core by default), each an ordinary `ActorService` whose bus
is a pipe to this process; ingest and the trainer run here. With `eval.enabled` the
evaluator runs in a worker process too (its games and searches must not share this
process's GIL with ingest and the trainer), storing its results in the same SQLite file;
the progress line shows the newest rating and accuracy it announced. The web page is
served from this process (`cartridge.web.embedded`), its URL printed at start.

Ctrl-C (or SIGTERM, or the end of `--minutes N`) stops it cleanly: actors publish the
games they finished, ingest stores everything published, the trainer keeps its last checkpoint. The next
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

from cartridge.up_metrics import DEFAULT_PORT, TreeMetrics
from cartridge.web.embedded import web_page
from services.actor.service import ActorService
from services.evaluator.service import EvaluatorService
from services.ingest.service import IngestService
from services.trainer.service import TrainerService
from shared.bus import MemoryBus
from shared.bus.pipe import PipeBus, parent_pipe, serve_pipe
from shared.config import Config
from shared.messages import MessageError, ModelEvaluated, decode_event
from shared.priority import lower_priority
from shared.service import base_parser, run_configured, run_service

log = logging.getLogger("cartridge.up")

CONFIG_ENV = "CARTRIDGE_UP_WORKER_CONFIG"
EMBEDDED = {"storage": {"replay_backend": "sqlite", "model_store": "local"}, "metrics": {"port": DEFAULT_PORT}}
PROGRESS_EVERY_S = 10.0
WORKER_EXIT_S = 60.0
EVALUATOR_EXIT_S = 10.0  # then it is killed: a half-done evaluation is simply done again next time


async def up(config: Config, args: argparse.Namespace, stop: asyncio.Event) -> None:
    metrics = TreeMetrics.start(config)  # first: the workers inherit where to record
    bus = MemoryBus()
    ingest = IngestService(config, bus=bus)
    trainer = TrainerService(config, bus=bus)
    async with web_page(config, lambda: [ingest.status(), trainer.status()], bus):  # prints its URL
        await _pipeline(config, args, stop, metrics, bus, ingest, trainer)


async def _pipeline(config: Config, args: argparse.Namespace, stop: asyncio.Event, metrics: TreeMetrics,
                    bus: MemoryBus, ingest: IngestService, trainer: TrainerService) -> None:
    ingest_stop, trainer_stop = asyncio.Event(), asyncio.Event()
    workers = [await _spawn_worker(config, i) for i in range(args.actors)]
    evaluator = await _spawn_worker(config, "evaluator") if config.eval.enabled else None
    log.info("cartridge up: %d actor processes%s, replay %s, models in %s (Ctrl-C stops cleanly)",
             len(workers), " and the evaluator" if evaluator else "", config.storage.sqlite_path,
             config.storage.local_model_dir)
    async with bus, metrics.watching(workers + ([evaluator] if evaluator else [])), asyncio.TaskGroup() as tasks:
        tasks.create_task(ingest.run(ingest_stop))
        tasks.create_task(trainer.run(trainer_stop))
        bridges = [tasks.create_task(serve_pipe(bus, w.stdout, w.stdin))
                   for w in workers + ([evaluator] if evaluator else [])]
        evaluated = _LastEvaluation()
        listen = tasks.create_task(evaluated.follow(await bus.subscribe_events()))
        progress = tasks.create_task(_show_progress(ingest, trainer, evaluated))

        try:
            await asyncio.wait_for(stop.wait(), args.minutes * 60 if args.minutes else None)
        except TimeoutError:
            log.info("ran for %g minutes (--minutes)", args.minutes)
        log.info("stopping: actors finish publishing, then ingest stores everything, then the trainer stops")
        for w in workers + ([evaluator] if evaluator else []):
            if w.returncode is None:
                w.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*(w.wait() for w in workers)), WORKER_EXIT_S)
        if evaluator is not None:
            try:
                await asyncio.wait_for(evaluator.wait(), EVALUATOR_EXIT_S)
            except TimeoutError:
                evaluator.kill()
                await evaluator.wait()
        await asyncio.gather(*bridges)
        while (stored := ingest.status()).state != "stopped" and stored.settled < bus.published:
            await asyncio.sleep(0.05)  # ingest is storing the last published games
        ingest_stop.set()
        trainer_stop.set()
        progress.cancel()
        listen.cancel()
    stored, trained = ingest.status(), trainer.status()
    log.info("stopped: %d positions stored this run, model %d, step %d", stored.rows, trained.version, trained.step)


async def _spawn_worker(config: Config, index: int | str) -> asyncio.subprocess.Process:
    """Actor `index` (a number), or the evaluator (`"evaluator"`), in a process of its own."""
    actor = msgspec.structs.replace(config.actor, actor_id=config.actor.actor_id or f"up-actor-{index}")
    env = {**os.environ, CONFIG_ENV: msgspec.json.encode(msgspec.structs.replace(config, actor=actor)).decode()}
    role = ["evaluator"] if index == "evaluator" else []
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cartridge.up", "--worker", *role, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26,
        start_new_session=True,  # Ctrl-C reaches this process, which stops workers in order
    )


class _LastEvaluation:
    """The newest model_evaluated event on the bus (the evaluator's status, as announced)."""

    def __init__(self) -> None:
        self.event: ModelEvaluated | None = None

    async def follow(self, events) -> None:
        async for body in events:
            try:
                event = decode_event(body)
            except MessageError:
                continue
            if isinstance(event, ModelEvaluated):
                self.event = event

    def describe(self) -> str:
        e = self.event
        if e is None:
            return "not rated yet"
        stages = "/".join(f"{e.optimal_pct.get(s, float('nan')):.0f}" for s in ("early", "mid", "late"))
        return f"v{e.version} rated {e.rating:.0f} ± {e.rating_error:.0f}, optimal {stages} %"


async def _show_progress(ingest: IngestService, trainer: TrainerService, evaluated: _LastEvaluation) -> None:
    last, last_t = ingest.status(), time.monotonic()
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        now, i, t = time.monotonic(), ingest.status(), trainer.status()
        dt = now - last_t
        actors = ", ".join(f"{a}: v{v}" for a, v in sorted(i.actor_models.items())) or "none yet"
        loss = f"{t.loss:.3f} (policy {t.policy_loss:.3f}, value {t.value_loss:.3f})" if t.loss is not None else "-"
        paced = " (waits for positions)" if t.waiting_for_positions else " (actors asked to wait)" if t.actors_paused else ""
        log.info(
            "%.1f games/s, %.0f positions/s | replay %d positions | step %d%s, loss %s | model v%d | actors play %s"
            " | %s",
            (i.messages - last.messages) / dt, (i.rows - last.rows) / dt, t.replay_size, t.step, paced, loss,
            t.version, actors, evaluated.describe(),
        )
        last, last_t = i, now


async def _worker(config: Config, args: argparse.Namespace, stop: asyncio.Event) -> None:
    reader, writer = await parent_pipe()
    # A parent that is gone cannot store anything more: stop then too.
    bus = PipeBus(reader, writer, closed=stop)
    if args.role == "evaluator":
        lower_priority(config.eval.niceness, "the evaluator")  # this worker leads its own session
        service = EvaluatorService(config, bus=bus)
    else:
        service = ActorService(config, bus=bus)
    await service.run(stop)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # an actor or evaluator process of ours: its config comes from us
        config = msgspec.json.decode(os.environ[CONFIG_ENV], type=Config)
        role = argv[1] if len(argv) > 1 else "actor"
        return run_configured(_worker, config, argparse.Namespace(role=role), f"cartridge up {role}")
    parser = base_parser("cartridge up", "Run actors, ingest and trainer on this machine, no services needed.")
    parser.add_argument("--actors", type=int, default=os.cpu_count() or 1, help="actor processes (default: one per core)")
    parser.add_argument("--minutes", type=positive_minutes, default=None,
                        help="stop cleanly by itself after this many minutes (default: run until Ctrl-C)")
    return run_service(up, parser, argv, defaults=EMBEDDED)


def positive_minutes(text: str) -> float:
    try:
        minutes = float(text)
    except ValueError:
        minutes = float("nan")
    if not minutes > 0:
        raise argparse.ArgumentTypeError(f"expected a number of minutes > 0, got {text!r}")
    return minutes


if __name__ == "__main__":
    sys.exit(main())
