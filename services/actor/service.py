"""The actor service: self-play that never stops, games out to RabbitMQ, models in from
model events.

Lifecycle, in order: connect to the broker and model store (with retries), declare the
topology, load the newest model, then run two tasks until stopped:
- self-play: `SelfPlay.step()` in a worker thread (the event loop stays free), finished
  games published with confirms;
- events: this actor's own queue on the models exchange; every event may swap the model
  between two search steps.
On stop (SIGTERM/SIGINT) games in progress are dropped whole, and what was published is
waited for until confirmed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import AsyncIterator

from services.actor.publisher import GamePublisher
from services.actor.reloader import ModelReloader
from services.actor.selfplay import SelfPlay
from shared.bus import Bus, RabbitBus
from shared.config import Config
from shared.games import get_game
from shared.inference import Evaluator
from shared.model_store import ModelStore, open_model_store
from shared.transitions import Transitions, to_batch

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0
DRAIN_TIMEOUT_S = 30.0


def default_actor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ActorService:
    def __init__(self, config: Config, *, bus: Bus | None = None, store: ModelStore | None = None):
        """`bus` and `store` default to what `config` names (RabbitMQ, S3 or a directory)."""
        self.config = config
        self.game = get_game(config.common.env_id)
        self.actor_id = config.actor.actor_id or default_actor_id()
        self.selfplay: SelfPlay | None = None
        self.reloader: ModelReloader | None = None
        self.publisher: GamePublisher | None = None
        self.bus = bus or RabbitBus(config.broker, name=f"actor {self.actor_id}")
        self.store = store or open_model_store(config.storage)
        self.ready = asyncio.Event()  # set once the first model is loaded and play begins

    @property
    def model_version(self) -> int:
        return self.reloader.current.version if self.reloader else 0

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        cfg = self.config
        async with self.bus, self.store as store:
            self.publisher = GamePublisher(self.bus, cfg.actor.max_unconfirmed)
            self.reloader = ModelReloader(store, self.game, cfg, self._swap)
            await self.reloader.load_initial()
            max_games = cfg.actor.max_episodes if cfg.actor.max_episodes >= 0 else None
            self.selfplay = SelfPlay(self.game, cfg.mcts, self.reloader.current,
                                     num_games=cfg.actor.parallel_games, max_games=max_games)
            events = await self.bus.subscribe_events()
            log.info("actor %s playing %s with model %d, %d games in parallel",
                     self.actor_id, self.game.env_id, self.model_version, cfg.actor.parallel_games)
            self.ready.set()
            async with asyncio.TaskGroup() as tasks:
                listen = tasks.create_task(self._listen(events))
                await self._play(stop)
                listen.cancel()
            drained = await self.publisher.drain(DRAIN_TIMEOUT_S)
            log.info("actor %s stopped: %d games, %d positions published and confirmed%s",
                     self.actor_id, self.selfplay.stats.games, self.publisher.confirmed_rows,
                     "" if drained else " (some unconfirmed at shutdown)")

    def _swap(self, evaluator: Evaluator) -> None:
        # Read once per step by SelfPlay, so the switch lands between two search steps.
        if self.selfplay is not None:
            self.selfplay.evaluator = evaluator

    async def _play(self, stop: asyncio.Event) -> None:
        cfg, sp = self.config, self.selfplay
        assert sp is not None and self.publisher is not None
        pending: list[Transitions] = []
        last_log, last_positions = time.monotonic(), 0
        while not stop.is_set() and sp.running:
            finished = await asyncio.to_thread(sp.step)
            pending.extend(g.transitions for g in finished)
            # Publish in groups of games_per_message; the last game goes out alone.
            closing = stop.is_set() or not sp.running  # finished games still go out whole
            while len(pending) >= cfg.actor.games_per_message or (pending and closing):
                group, pending = pending[: cfg.actor.games_per_message], pending[cfg.actor.games_per_message:]
                batch = to_batch(Transitions.concat(group), env_id=self.game.env_id, actor_id=self.actor_id)
                await self.publisher.publish(batch)
            now = time.monotonic()
            if now - last_log >= PROGRESS_EVERY_S:
                rate = (sp.stats.positions - last_positions) / (now - last_log)
                log.info("actor %s: %d games, %.1f positions/s, model %d, %d unconfirmed",
                         self.actor_id, sp.stats.games, rate, self.model_version, self.publisher.unconfirmed)
                last_log, last_positions = now, sp.stats.positions

    async def _listen(self, events: AsyncIterator[bytes]) -> None:
        assert self.reloader is not None
        async for body in events:
            await self.reloader.handle(body)
