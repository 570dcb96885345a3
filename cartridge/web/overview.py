"""What the web page's overview shows, gathered from where it is kept:

- ratings and accuracy per version: the evaluator's tables in the replay's database
  (PostgreSQL, or `cartridge up`'s SQLite file), via `cartridge ratings`' own rows;
- model versions with their step, time and the trainer's loss at publication: the model
  store (S3 or a directory); a version's record never changes, so each is read once;
- what is running now (each service's state, positions per second, the trainer's step
  and loss, the model every actor plays): a `LiveView`, fed by the heartbeats stream in a
  deployment and by the services' own status in `cartridge up`;
- queue depths, where known: RabbitMQ's management API, or the in-process bus.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from cartridge.ratings import rows_of
from shared.config import Config
from shared.evaluations import Evaluations
from shared.games import get_game
from shared.liveness import LiveView
from shared.model_store import ModelInfo, ModelNotFound, ModelStore
from shared.replay import ReplayUnavailable
from shared.retry import DependencyError

log = logging.getLogger(__name__)

QueueDepths = Callable[[], Awaitable[list[dict]]]


def _float(metadata: dict[str, str], key: str) -> float | None:
    try:
        return float(metadata[key])
    except (KeyError, ValueError):
        return None


def board_of(env_id: str) -> dict:
    """How the page draws the game: rows, columns, and whether stones drop (a move is a
    column) or go where clicked (a move is a cell)."""
    game = get_game(env_id)
    rows, cols = game.board_shape
    return {"rows": rows, "cols": cols, "gravity": game.num_actions == cols}


class Overview:
    def __init__(self, config: Config, store: ModelStore, results: Evaluations, live: LiveView,
                 queue_depths: QueueDepths | None = None, live_source: str = ""):
        self.config, self.store, self.results, self.live = config, store, results, live
        self.queue_depths = queue_depths
        self.live_source = live_source  # what feeds `live`, or why nothing does
        self._infos: dict[int, ModelInfo] = {}

    async def models(self) -> list[dict]:
        env = self.config.common.env_id
        for version in await self.store.list_versions(env):
            if version not in self._infos:
                try:
                    self._infos[version] = await self.store.get_info(env, version)
                except ModelNotFound:
                    continue
        return [{"version": i.version, "step": i.step, "created_at": i.created_at,
                 "loss": _float(i.metadata, "loss"), "policy_loss": _float(i.metadata, "policy_loss"),
                 "value_loss": _float(i.metadata, "value_loss")}
                for i in sorted(self._infos.values(), key=lambda i: i.version)]

    async def gather(self) -> dict:
        errors: list[str] = []
        ratings: list[dict] = []
        models: list[dict] = []
        try:
            ratings = await rows_of(self.results, self.config)
        except ReplayUnavailable as exc:
            errors.append(f"ratings: the replay database is unavailable ({exc})")
        try:
            models = await self.models()
        except ConnectionError as exc:  # StoreUnavailable
            errors.append(f"models: the model store is unavailable ({exc})")
        queues = None
        if self.queue_depths is not None:
            try:
                queues = await self.queue_depths()
            except DependencyError as exc:
                errors.append(f"queues: {exc}")
        now = time.time()
        return {"env_id": self.config.common.env_id, "generated_at": now, "ratings": ratings, "models": models,
                "newest": models[-1] if models else None, "served": next((r["version"] for r in ratings if r["served"]), None),
                "live": self.live.snapshot(now), "live_source": self.live_source, "queues": queues, "errors": errors,
                "board": board_of(self.config.common.env_id), "max_simulations": self.config.web.max_simulations,
                # Play starts at the search the accuracy figures were measured with, not self-play's cheaper one.
                "default_simulations": min(self.config.eval.simulations, self.config.web.max_simulations)}


async def follow_heartbeats(config: Config, live: LiveView, overview: Overview) -> None:
    """Keep `live` fed from the heartbeats stream (a deployment), from `lookback_s` ago on,
    until cancelled; while RabbitMQ is away, say so on the page and try again."""
    from shared.heartbeat import follow

    since = time.time() - config.status.lookback_s
    while True:
        try:
            overview.live_source = "heartbeats"
            async for beat in follow(config.broker, since, name="web page"):
                live.observe_beat(beat)
                since = max(since, beat.sent_at + 1e-6)
        except DependencyError as exc:
            overview.live_source = f"no heartbeats: {exc}"
        except (ConnectionError, OSError) as exc:
            overview.live_source = f"heartbeats interrupted: {exc}"
        await asyncio.sleep(5.0)
