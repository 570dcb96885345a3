"""The actor service: self-play that never stops, games out to RabbitMQ, models in from
model events.

Lifecycle, in order: open the bus (RabbitMQ: connect with retries, declare the topology)
and the model store, load the newest model, then run two tasks until stopped:
- self-play: `SelfPlay.step()` in a low-priority worker thread (the event loop stays
  free and wins the CPU when a model arrives), finished games published with confirms;
- events: this actor's own queue on the models exchange; every event may swap the model
  between two search steps. When the bus restores the subscription after a lost
  connection, the events sent meanwhile are gone: the actor then asks the store which
  model to serve (`ModelReloader.catch_up`), one event or catch-up at a time. The
  trainer's pace announcements go to `TrainerPace` instead: self-play waits while the
  trainer says stored positions run ahead of it.
On stop (SIGTERM/SIGINT) games in progress are dropped whole, and what was published is
waited for until confirmed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

from services.actor.pace import TrainerPace
from services.actor.publisher import GamePublisher
from services.actor.reloader import ModelReloader
from services.actor.selfplay import SelfPlay
from shared.bus import ActorBus, open_bus
from shared.config import Config
from shared.games import get_game
from shared.inference import Evaluator
from shared.metrics.export import exported
from shared.messages import trainer_progress
from shared.metrics.families import recorder
from shared.model_store import ModelStore, open_model_store
from shared.status import ActorStatus, Lifecycle, instance_name
from shared.transitions import Transitions, to_batch

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0
DRAIN_TIMEOUT_S = 30.0
SELFPLAY_NICENESS = 10  # self-play is background work: control-plane threads go first


def _lower_thread_priority() -> None:
    """Make the calling thread (and only it) yield the CPU to other work: on Linux each
    thread has its own nice value, and raising it needs no privileges."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SELFPLAY_NICENESS)
    except (AttributeError, OSError):  # not Linux: run at normal priority
        pass


class ActorService:
    def __init__(self, config: Config, *, bus: ActorBus | None = None, store: ModelStore | None = None):
        """`bus` and `store` default to what `config` names (RabbitMQ, S3 or a directory)."""
        self.config = config
        self.game = get_game(config.common.env_id)
        self.actor_id = config.actor.actor_id or instance_name()
        self.selfplay: SelfPlay | None = None
        self.reloader: ModelReloader | None = None
        self.publisher: GamePublisher | None = None
        self.bus = bus or open_bus(config.broker, name=f"actor {self.actor_id}")
        self.store = store or open_model_store(config.storage)
        self.ready = asyncio.Event()  # set once the first model is loaded and play begins
        self._lifecycle = Lifecycle()
        # Cleared while a control event is handled: self-play yields the CPU so the new
        # model is downloaded and swapped in as fast as the machine allows.
        self._may_play = asyncio.Event()
        self._may_play.set()
        self._reconnected = asyncio.Event()  # the event subscription was restored: catch up
        self.pace = TrainerPace(self.game.env_id)

    @property
    def model_version(self) -> int:
        return self.reloader.current.version if self.reloader else 0

    def status(self) -> ActorStatus:
        sp, publisher, reloader = self.selfplay, self.publisher, self.reloader
        return ActorStatus(
            name=self.actor_id, state=self._lifecycle.state,
            games=sp.stats.games if sp else 0, positions=sp.stats.positions if sp else 0,
            simulations=sp.stats.simulations if sp else 0, model_version=self.model_version,
            published_positions=publisher.confirmed_rows if publisher else 0,
            unconfirmed=publisher.unconfirmed if publisher else 0,
            publish_retries=publisher.retries if publisher else 0,
            reload_latency_ms=reloader.updates[-1][1] if reloader and reloader.updates else None,
            evaluations=sp.stats.evaluations if sp else 0, paused=self.pace.paused,
        )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        cfg = self.config
        async with self._lifecycle, exported(self), self.bus, self.store as store:
            self.publisher = GamePublisher(self.bus, cfg.actor.max_unconfirmed, cfg.actor.confirmed_log)
            self.reloader = ModelReloader(store, self.game, cfg, self._swap)
            await self.reloader.load_initial()
            max_games = cfg.actor.max_episodes if cfg.actor.max_episodes >= 0 else None
            self.selfplay = SelfPlay(self.game, cfg.mcts, self.reloader.current,
                                     num_games=cfg.actor.parallel_games, max_games=max_games,
                                     cache_positions=cfg.actor.eval_cache_positions)
            events = await self.bus.subscribe_events()
            self.bus.on_events_restored(self._reconnected.set)
            log.info("actor %s playing %s with model %d, %d games in parallel",
                     self.actor_id, self.game.env_id, self.model_version, cfg.actor.parallel_games)
            self.ready.set()
            self._lifecycle.started(stop)
            async with asyncio.TaskGroup() as tasks:
                updates = asyncio.Queue()  # event bodies, or None: catch up
                helpers = [tasks.create_task(self._receive(events, updates)),
                           tasks.create_task(self._on_reconnect(updates)),
                           tasks.create_task(self._update(updates))]
                await self._play(stop)
                for task in helpers:
                    task.cancel()
            drained = await self.publisher.drain(DRAIN_TIMEOUT_S)
            self.publisher.close()
            s = self.status()
            log.info("actor %s stopped: %d games, %d positions published and confirmed%s; %d publishes retried",
                     self.actor_id, s.games, s.published_positions,
                     "" if drained else " (some unconfirmed at shutdown)", s.publish_retries)

    def _swap(self, evaluator: Evaluator) -> None:
        # Read once per step by SelfPlay, so the switch lands between two search steps.
        if self.selfplay is not None:
            self.selfplay.evaluator = evaluator

    async def _play(self, stop: asyncio.Event) -> None:
        sp = self.selfplay
        assert sp is not None and self.publisher is not None
        pending: list[Transitions] = []
        self._last_log, self._last_positions = time.monotonic(), 0
        self._last_evaluations = (0, 0)  # (asked, computed) at the last progress line
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1, "selfplay", initializer=_lower_thread_priority) as selfplay_thread:
            while not stop.is_set() and sp.running:
                await self._may_play.wait()
                await self.pace.wait(stop)
                if stop.is_set():
                    break
                finished = await loop.run_in_executor(selfplay_thread, sp.step)
                pending.extend(g.transitions for g in finished)
                await self._publish_finished(pending, closing=stop.is_set() or not sp.running)
                self._log_progress()

    async def _publish_finished(self, pending: list[Transitions], closing: bool) -> None:
        """Publish finished games in groups of `games_per_message`; when closing, the
        remainder goes out too (games are always published whole)."""
        per_message = self.config.actor.games_per_message
        while len(pending) >= per_message or (pending and closing):
            group = pending[:per_message]
            del pending[:per_message]
            batch = to_batch(Transitions.concat(group), env_id=self.game.env_id, actor_id=self.actor_id)
            await self.publisher.publish(batch)

    def _log_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_log < PROGRESS_EVERY_S:
            return
        s = self.status()
        rate = (s.positions - self._last_positions) / (now - self._last_log)
        stats = self.selfplay.stats
        asked, computed = stats.evaluations - self._last_evaluations[0], stats.evaluated - self._last_evaluations[1]
        cached = f", {1 - computed / asked:.0%} of evaluations from the cache" if (
            self.selfplay.cache_positions and asked) else ""  # since the last line
        log.info("actor %s: %d games, %.1f positions/s, model %d, %d unconfirmed%s",
                 self.actor_id, s.games, rate, s.model_version, s.unconfirmed, cached)
        self._last_log, self._last_positions = now, s.positions
        self._last_evaluations = (stats.evaluations, stats.evaluated)

    async def _receive(self, events: AsyncIterator[bytes], updates: asyncio.Queue) -> None:
        async for body in events:
            if (progress := trainer_progress(body)) is not None:
                self.pace.observe(progress)  # at once: never queued behind a model download
            else:
                updates.put_nowait(body)

    async def _on_reconnect(self, updates: asyncio.Queue) -> None:
        while True:
            await self._reconnected.wait()
            self._reconnected.clear()
            updates.put_nowait(None)

    async def _update(self, updates: asyncio.Queue) -> None:
        """Events and catch-ups in the order they came, one at a time."""
        assert self.reloader is not None
        while True:
            body = await updates.get()
            self._may_play.clear()
            seen = len(self.reloader.updates)
            try:
                if body is None:
                    await self.reloader.catch_up()
                else:
                    await self.reloader.handle(body)
            finally:
                self._may_play.set()
            if (metrics := recorder()) is not None:
                for _, latency_ms in self.reloader.updates[seen:]:
                    if latency_ms is not None:
                        metrics.actor.reload_latency.labels(actor=self.actor_id).observe(latency_ms / 1000)
