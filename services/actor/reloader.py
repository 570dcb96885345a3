"""Turning control events into the model an actor plays with.

A model-published event or a reload request names a version (or "the served one"); the
model is downloaded, its sha256 checked, its onnxruntime session built in a worker
thread, and only then swapped in. Anything wrong (unknown version, corrupt or foreign
model, store down, malformed event) is logged and the current model stays.

Which model to serve: the store's serving pointer's version while it holds (a rollback),
else the newest. A reload with `hold` starts holding: model-published events are then
ignored until a reload without it. Events of other types (the evaluator's
model_evaluated, the trainer's pace, or a type newer than this code) are not for actors: ignored quietly.

Events published while an actor's broker connection was down are missed (its queue lives
and dies with the connection): after a reconnect `catch_up` asks the store what it should
serve (the pointer's held version, else the newest) and loads it if it differs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from shared.config import Config
from shared.games import Game
from shared.inference import Evaluator, ModelError, OnnxEvaluator, UniformEvaluator
from shared.messages import MessageError, ModelEvaluated, ModelPublished, ReloadRequest, TrainerProgress, read_event
from shared.model_store import ModelCorrupt, ModelInfo, ModelNotFound, ModelStore, StoreUnavailable

log = logging.getLogger(__name__)


class ModelReloader:
    def __init__(self, store: ModelStore, game: Game, config: Config, swap: Callable[[Evaluator], None]):
        self.store, self.game, self.config = store, game, config
        self._swap = swap
        self.current: Evaluator = UniformEvaluator(game)
        self.updates: list[tuple[int, float | None]] = []  # (version, ms since its event)
        self.failures: list[str] = []  # why events could not be acted on
        self.events_handled = 0
        self._received_at = 0.0  # wall clock when the event being handled arrived
        self.holding = False  # serving a held version: newer models wait for a reload
        self.catch_ups = 0  # catch-ups done (the served model checked against the store after a reconnect)

    async def load_initial(self) -> None:
        """Start with the served model (held or newest), or the uniform evaluator if none
        exists."""
        held = await self._held_version()
        if held is not None:
            self.holding = True
            await self._load(held, published_at=None, why="start-up, held by the serving pointer")
            return
        info = await self.store.latest(self.game.env_id)
        if info is None:
            log.info("no model stored yet for %s: playing with the uniform evaluator", self.game.env_id)
            return
        await self._load(info.version, published_at=None, why="start-up")

    async def _held_version(self) -> int | None:
        """The serving pointer's version if it holds one; None otherwise (or unreadable:
        then the newest is served, and the reason logged)."""
        try:
            pointer = await self.store.serving(self.game.env_id)
        except (ModelCorrupt, StoreUnavailable) as exc:
            log.warning("cannot read the serving pointer (%s); serving the newest model", exc)
            return None
        return pointer.version if pointer is not None and pointer.hold else None

    async def catch_up(self) -> None:
        """Serve what the store says should be served now: the serving pointer's version
        while it holds (a rollback decided while this actor was not listening), else the
        newest model (one published meanwhile; a hold that ended meanwhile ends here too)."""
        try:
            await self._catch_up()
        finally:
            self.catch_ups += 1

    async def _catch_up(self) -> None:
        held = await self._held_version()
        self.holding = held is not None
        if held is None:
            try:
                info = await self.store.latest(self.game.env_id)
            except (ModelCorrupt, StoreUnavailable) as exc:
                self._fail(f"catching up after a reconnect: cannot read the newest model ({exc}); "
                           f"keeping model {self.current.version}")
                return
            if info is None:
                return
            target, why = info.version, "caught up after a reconnect: newest"
        else:
            target, why = held, "caught up after a reconnect: held by the serving pointer"
        if target == self.current.version:
            log.info("reconnected: model %d is still the one to serve", target)
            return
        await self._load(target, published_at=None, why=why)

    async def handle(self, body: bytes) -> None:
        """Act on one control event's raw body."""
        self._received_at = time.time()
        try:
            await self._handle(body)
        finally:
            self.events_handled += 1

    async def _handle(self, body: bytes) -> None:
        try:
            event = read_event(body, "actors", log)
        except MessageError as exc:
            self._fail(f"ignored control event: {exc}")
            return
        if event is None:
            return
        if isinstance(event, ModelEvaluated):
            log.debug("ignored model_evaluated for model %d (not for actors)", event.version)
            return
        if isinstance(event, TrainerProgress):
            return  # the actor's pace gate reads these (`pace.py`)
        if event.env_id is not None and event.env_id != self.game.env_id:
            log.debug("ignored event for %s (this actor plays %s)", event.env_id, self.game.env_id)
            return
        if isinstance(event, ModelPublished):
            if self.holding:
                log.info("model %d published; holding model %d until a reload without hold",
                         event.version, self.current.version)
                return
            if event.version <= self.current.version:
                log.debug("model %d published; already serving %d", event.version, self.current.version)
                return
            expected = ModelInfo(env_id=event.env_id, version=event.version, key=event.key,
                                 sha256=event.sha256, size=event.size, step=event.step)
            await self._load(event.version, event.published_at, why="model published", expected=expected)
        elif isinstance(event, ReloadRequest):
            version = event.version
            if version is None:
                version = await self._held_version()  # None: the newest
            self.holding = event.hold
            why = "reload requested" + (", holding it" if event.hold else "")
            await self._load(version, event.published_at, why=why)

    def _fail(self, message: str) -> None:
        self.failures.append(message)
        log.error("%s", message)

    async def _load(self, version: int | None, published_at: float | None, why: str,
                    expected: ModelInfo | None = None) -> None:
        wanted = "newest" if version is None else str(version)
        started = time.perf_counter()
        try:
            info, data = await self.store.get_model(
                self.game.env_id, version, max_bytes=self.config.storage.max_model_bytes, expected=expected
            )
            if info.version == self.current.version:
                log.info("%s: already serving model %d", why, info.version)
                return
            fetched = time.perf_counter()
            # Building a session takes milliseconds of CPU: keep it off the event loop.
            evaluator = await asyncio.to_thread(
                OnnxEvaluator.from_bytes, data, self.game,
                version=info.version, threads=self.config.actor.onnx_threads,
            )
        except (ModelNotFound, ModelCorrupt, ModelError, StoreUnavailable) as exc:
            self._fail(f"{why}: cannot load model {wanted} ({exc}); keeping model {self.current.version}")
            return
        self.current = evaluator
        self._swap(evaluator)
        latency_ms = 1000 * (time.time() - published_at) if published_at else None
        self.updates.append((info.version, latency_ms))
        since = ""
        if published_at:  # where the time went: the way here (broker, this event loop), then the work
            since = f", {latency_ms:.0f} ms after the event, arrived after {1000 * (self._received_at - published_at):.0f} ms"
        log.info("Model updated to version %d (%s%s; download %.0f ms, load %.0f ms)", info.version, why, since,
                 1000 * (fetched - started), 1000 * (time.perf_counter() - fetched))
