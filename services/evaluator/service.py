"""The evaluator service: every published model gets an accuracy and a rating, stored,
announced, and guarded against regressions.

Lifecycle: open the bus (its own durable queue on the models exchange, so events sent
while it is down wait for it), the model store and the results store (the replay's
database); then, until stopped:
  catch up -> wait for a model_published event -> catch up -> ...
Catching up: every stored version with no result yet, newest first; beyond `max_behind`
waiting the older ones are recorded as skipped. The results store, not the queue, says
what is done, so a restart evaluates what it missed, once. Per version:
  download (sha256 checked) -> accuracy (worker thread) -> rating games (worker thread)
  -> store the row and its games (one transaction) -> publish model_evaluated
  -> the regression guard (`rollback.decide`): pointer, serving row, reload event.
A corrupt, foreign or missing model is recorded as failed with the reason; the service
goes on. A dependency away (store, database, broker) is waited for with backoff. On stop,
a version being evaluated is dropped (the next start evaluates it again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Protocol

from services.evaluator.match import anchor_player, model_player, play_against
from services.evaluator.measure import measure
from services.evaluator.ratings import (
    PairRecord, Rating, Ratings, connected, fit_ratings, rank_opponents, tally,
)
from services.evaluator.rollback import decide
from shared.bus import BusUnavailable, EventPublisher, EventSubscriber, open_bus
from shared.config import Config, EvalConfig
from shared.evaluations import Evaluation, Evaluations, RatingGame, open_evaluations
from shared.games import get_game
from shared.inference import ModelError, OnnxEvaluator
from shared.messages import (
    MessageError, ModelEvaluated, ModelPublished, ReloadRequest, encode_event, read_event,
)
from shared.metrics.export import exported
from shared.model_store import (
    ModelCorrupt, ModelNotFound, ModelStore, ServingPointer, StoreUnavailable, open_model_store,
)
from shared.replay import ReplayUnavailable
from shared.retry import Stopped, pause
from shared.status import EvaluatorStatus, Lifecycle, instance_name

log = logging.getLogger(__name__)

ANCHOR = "random"  # rated 0: every rating reads "Elo above random play"
OPPONENTS = 2  # a version's games in each round are split over its most informative opponents
ROUNDS = 2  # rounds of rating games: the second plays where the first placed the version
FIRST_GUESS = Rating(rating=0.0, stderr=1000.0, games=0)  # a first version's rating, before any game
GUESS_ERROR = 300.0  # a later version's guess: the previous one's rating, this uncertain
AWAY_PAUSE_S = 5.0  # a dependency is away: look again after this long
UNUSABLE = (ModelNotFound, ModelCorrupt, ModelError)


class EvaluatorBus(EventPublisher, EventSubscriber, Protocol):
    """What the evaluator uses of a bus."""


def version_name(version: int) -> str:
    return f"v{version}"


def version_of_name(name: str) -> int | None:
    return int(name[1:]) if name.startswith("v") and name[1:].isdecimal() else None


def records_of(games: Iterable[RatingGame]) -> list[PairRecord]:
    """Games counted per pair of players."""
    return tally((g.player_a, g.player_b, g.score_a) for g in games)


def in_window(name: str, since: int) -> bool:
    """An anchor, or a version `since` or newer."""
    version = version_of_name(name)
    return version is None or version >= since


def fit(records: Iterable[PairRecord], prior_draws: float, since: int = 1) -> Ratings:
    """Ratings of the anchors and the versions `since` and newer, from their games among
    each other (those games connect to `random`, which is at 0)."""
    records = connected([r for r in records if in_window(r.a, since) and in_window(r.b, since)], ANCHOR)
    return fit_ratings(records, ANCHOR, prior_draws) if records else Ratings({})


def window_start(newest: int, window: int) -> int:
    """The oldest version of the rating window ending at `newest`."""
    return max(1, newest - window + 1)


async def stored_records(results: Evaluations, env_id: str, since: int) -> list[PairRecord]:
    """The stored games' counts per pair: the anchors' ladder and the versions `since` and
    newer (tallied by the database)."""
    return [PairRecord(*row) for row in await results.tallies(env_id, since)]


def choose_opponents(ratings: dict[str, Rating], version: int) -> list[str]:
    """Every player `version` may meet, most informative first (`rank_opponents`), judged
    at its own fitted rating once it has played, else at a guess: the newest earlier
    version's rating (uncertain by `GUESS_ERROR`), or `FIRST_GUESS`."""
    me = version_name(version)
    if me in ratings:
        guess = ratings[me]
    else:
        earlier = [v for n in ratings if (v := version_of_name(n)) is not None and v < version]
        guess = Rating(ratings[version_name(max(earlier))].rating, GUESS_ERROR, 0) if earlier else FIRST_GUESS
    candidates = {n: r for n, r in ratings.items() if n != me and (version_of_name(n) or 0) < version}
    return [name for name, _ in rank_opponents(guess.rating, guess.stderr, candidates)]


def play_ladder(game, cfg: EvalConfig) -> list[RatingGame]:
    """The anchors against their neighbours in `anchors` order, `games / 2` games each:
    what ties the anchors' ratings to `random`. Played once and kept."""
    anchors, games = cfg.anchors, []
    for weaker, stronger in zip(anchors, anchors[1:]):
        (records,) = play_against(game, anchor_player(game, stronger, seed=1), [anchor_player(game, weaker, seed=2)],
                                  max(1, cfg.games // 4), opening_plies=cfg.opening_plies, seed=0)
        games += [RatingGame(version=0, player_a=stronger, player_b=weaker, score_a=r.score_a, moves=r.moves,
                             a_first=r.a_first) for r in records]
    log.info("anchor ladder played: %d games between %s", len(games), ", ".join(anchors))
    return games


class EvaluatorService:
    def __init__(self, config: Config, *, bus: EvaluatorBus | None = None, store: ModelStore | None = None,
                 results: Evaluations | None = None):
        """`bus`, `store` and `results` default to what `config` names."""
        self.config = config
        self.game = get_game(config.common.env_id)
        self.name = instance_name()
        self.bus = bus or open_bus(config.broker, name="evaluator")
        self.store = store or open_model_store(config.storage)
        self.results = results or open_evaluations(config.storage)
        self._lifecycle = Lifecycle()
        self._wake = asyncio.Event()
        self.evaluated = self.failed = self.skipped = self.rollbacks = 0
        self.last: ModelEvaluated | None = None
        self.serving: ServingPointer | None = None
        self.cpu_seconds = 0.0
        self.games = 0  # rating games played since start
        self.last_cost: float | None = None  # CPU seconds of the version evaluated last

    def status(self) -> EvaluatorStatus:
        last = self.last
        return EvaluatorStatus(
            name=self.name, state=self._lifecycle.state, evaluated=self.evaluated, failed=self.failed,
            skipped=self.skipped, version=last.version if last else 0, rating=last.rating if last else None,
            rating_error=last.rating_error if last else None, optimal_pct=last.optimal_pct if last else {},
            policy_optimal_pct=last.policy_optimal_pct if last else {},
            serving=self.serving.version if self.serving and self.serving.hold else None,
            rollbacks=self.rollbacks, cpu_seconds=round(self.cpu_seconds, 1), games=self.games,
            last_cost_cpu_s=self.last_cost,
        )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        async with self._lifecycle, exported(self), self.bus, self.store, self.results:
            events = await self.bus.subscribe_events(durable_queue=self.config.broker.evaluator_queue)
            self.serving = await self.store.serving(self.game.env_id)
            self._lifecycle.started(stop)
            log.info("evaluator for %s started (durable queue %s)", self.game.env_id,
                     self.config.broker.evaluator_queue)
            async with asyncio.TaskGroup() as tasks:
                listen = tasks.create_task(self._listen(events))
                try:
                    await self._work(stop)
                finally:
                    listen.cancel()

    async def _listen(self, events) -> None:
        async for body in events:
            try:
                event = read_event(body, "the evaluator", log)
            except MessageError as exc:
                log.error("ignored control event: %s", exc)
                continue
            if event is None:
                continue
            if isinstance(event, ModelPublished) and event.env_id == self.game.env_id:
                self._wake.set()
            else:
                log.debug("ignored %s event (not for the evaluator)", type(event).__name__)

    async def _work(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            try:
                await self._catch_up(stop)
            except (StoreUnavailable, ReplayUnavailable, BusUnavailable) as exc:
                log.warning("evaluation paused: %s; trying again in %.0f s", exc, AWAY_PAUSE_S)
                self._wake.set()
                try:
                    await pause(AWAY_PAUSE_S, stop)
                except Stopped:
                    return
                continue
            if not stop.is_set():
                await _first_of(self._wake, stop)

    async def waiting(self) -> list[int]:
        """Stored versions without a result, newest first. Versions above the store's
        newest (`latest.json`, written once a model file is stored) are still being
        uploaded: they come with their event, and are not failed for a missing file."""
        env = self.game.env_id
        done = {e.version for e in await self.results.evaluations(env)}
        newest = await self.store.latest(env)
        if newest is None:
            return []
        return sorted((v for v in await self.store.list_versions(env) if v not in done and v <= newest.version),
                      reverse=True)

    async def _catch_up(self, stop: asyncio.Event) -> None:
        env, limit = self.game.env_id, self.config.eval.max_behind
        while not stop.is_set() and (waiting := await self.waiting()):
            for version in waiting[limit:]:
                reason = f"{len(waiting)} versions waiting, more than max_behind ({limit}); newer ones first"
                await self.results.record(env, Evaluation(env_id=env, version=version, status="skipped",
                                                          reason=reason))
                self.skipped += 1
                log.info("model %d skipped: %s", version, reason)
            await self.evaluate(waiting[0], stop)

    async def evaluate(self, version: int, stop: asyncio.Event) -> None:
        """Evaluate one version and act on the result (see the module docstring)."""
        env, cfg = self.game.env_id, self.config
        cpu = time.process_time()
        try:
            info, evaluator = await self._load(version)
        except UNUSABLE as exc:
            await self.results.record(env, Evaluation(env_id=env, version=version, status="failed", reason=str(exc)))
            self.failed += 1
            log.error("model %d recorded as failed: %s", version, exc)
            return
        accuracy = await asyncio.to_thread(measure, self.game, evaluator, cfg.eval, cfg.mcts)
        if stop.is_set():
            return
        games = await self._rating_games(version, evaluator)
        if stop.is_set():
            return
        # Fitted before storing, with this version's games added to the stored ones: its
        # rating is kept with its evaluation (what views show once it leaves the window).
        since = window_start(version, cfg.eval.rating_window)
        ratings = await asyncio.to_thread(fit, await stored_records(self.results, env, since) + records_of(games),
                                          cfg.eval.prior_draws, since)
        mine = ratings[version_name(version)]
        cost = time.process_time() - cpu
        self.cpu_seconds += cost
        self.last_cost = round(cost, 2)
        await self.results.record(env, Evaluation(
            env_id=env, version=version, step=info.step, status="ok", accuracy=accuracy.as_dict(),
            sims=cfg.eval.simulations, positions=cfg.eval.positions, cost_cpu_s=round(cost, 2),
            published_at=info.created_at, rating=round(mine.rating, 1), rating_error=round(mine.stderr, 1)), games)
        self.evaluated += 1
        self.last = event = ModelEvaluated(
            env_id=env, version=version, step=info.step, rating=round(mine.rating, 1),
            rating_error=round(mine.stderr, 1), games=int(mine.games), optimal_pct=accuracy.optimal_pct("search"),
            policy_optimal_pct=accuracy.optimal_pct("policy"))
        await self.bus.publish_event(encode_event(event))
        log.info("model %d: rating %.0f +- %.0f (%d games), optimal %% search %s, policy %s; %.1f CPU-s",
                 version, mine.rating, mine.stderr, mine.games, event.optimal_pct, event.policy_optimal_pct, cost)
        if cfg.eval.rollback:
            await self._guard(version, ratings)

    async def _load(self, version: int):
        info, data = await self.store.get_model(self.game.env_id, version,
                                                max_bytes=self.config.storage.max_model_bytes)
        evaluator = await asyncio.to_thread(OnnxEvaluator.from_bytes, data, self.game, version=version,
                                            threads=self.config.eval.onnx_threads)
        return info, evaluator

    async def _rating_games(self, version: int, evaluator) -> list[RatingGame]:
        """Play this version's games against its most informative opponents (anchors and
        earlier versions), in rounds: each round's opponents are chosen from the ratings
        refitted with the rounds before, so a first version whose strength is a guess
        spends the second half of its games where the first half placed it (the anchors'
        ladder first if it was never played)."""
        env, cfg = self.game.env_id, self.config.eval
        since = window_start(version, cfg.rating_window)
        stored = await stored_records(self.results, env, since)
        if not any(version_of_name(r.a) is None and version_of_name(r.b) is None for r in stored):
            ladder = await asyncio.to_thread(play_ladder, self.game, cfg)
            await self.results.record(env, None, ladder)
            self.games += len(ladder)
            stored += records_of(ladder)
        me = model_player(self.game, evaluator, cfg.game_simulations, self.config.mcts)
        rounds = ROUNDS if cfg.games >= ROUNDS * 2 * OPPONENTS else 1
        players: dict[str, object] = {}
        played: list[RatingGame] = []
        for round_ in range(rounds):
            opponents: list[tuple[str, object]] = []
            ratings = await asyncio.to_thread(fit, stored + records_of(played), cfg.prior_draws, since)
            for name in choose_opponents(ratings, version):
                if name not in players:
                    players[name] = await self._opponent(name, version)
                if players[name] is not None:
                    opponents.append((name, players[name]))
                if len(opponents) == OPPONENTS:
                    break
            openings = max(1, cfg.games // (rounds * 2 * len(opponents)))
            results = await asyncio.to_thread(play_against, self.game, me, [p for _, p in opponents], openings,
                                              opening_plies=cfg.opening_plies, seed=version * ROUNDS + round_)
            played += [RatingGame(version=version, player_a=version_name(version), player_b=name,
                                  score_a=r.score_a, moves=r.moves, a_first=r.a_first)
                       for (name, _), records in zip(opponents, results) for r in records]
            self.games += sum(len(records) for records in results)
        return played

    async def _opponent(self, name: str, version: int):
        """The player `name` stands for; None for a version whose model cannot be used."""
        other = version_of_name(name)
        if other is None:
            return anchor_player(self.game, name, seed=version)
        try:
            _, evaluator = await self._load(other)
        except UNUSABLE as exc:
            log.warning("model %d cannot be an opponent: %s", other, exc)
            return None
        return model_player(self.game, evaluator, self.config.eval.game_simulations, self.config.mcts)

    async def _guard(self, version: int, ratings: dict[str, Rating]) -> None:
        """The regression guard, decided by the newest stored version only."""
        env = self.game.env_id
        if version != max(await self.store.list_versions(env), default=0):
            return
        versions = {v: r for n, r in ratings.items() if (v := version_of_name(n)) is not None}
        self.serving = await self.store.serving(env)
        decision = decide(versions, version, self.serving, self.config.eval.rollback_min_games)
        if decision is None:
            return
        pointer = ServingPointer(version=decision.version, hold=decision.hold, reason=decision.reason)
        await self.store.put_serving(env, pointer)
        await self.results.record_serving(env, pointer)
        await self.bus.publish_event(encode_event(
            ReloadRequest(env_id=env, version=decision.version, hold=decision.hold)))
        self.serving = pointer
        if decision.hold:
            self.rollbacks += 1
            log.warning("rollback: %s", decision.reason)
        else:
            log.info("serving the newest again: %s", decision.reason)


async def _first_of(*events: asyncio.Event) -> None:
    """Return once any of `events` is set."""
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
