"""The self-play loop: many games in one process, one batched search, finished games out.

No I/O here. Whoever drives it (the actor service, a benchmark, a test) calls `step()`
and takes the games it returns; it may swap `evaluator` between steps (hot reload).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from shared.config import MCTSConfig
from shared.games import Game
from shared.inference import Evaluator
from shared.search.cache import EvaluationCache
from shared.search.mcts import BatchedMCTS
from shared.transitions import Transitions


@dataclass(frozen=True)
class FinishedGame:
    transitions: Transitions
    moves: str  # move-string notation of the whole game
    outcome: float  # from the first player's view: 1 win, 0 draw, -1 loss
    resigned: bool


@dataclass
class SelfPlayStats:
    simulations: int = 0
    evaluations: int = 0  # positions the search asked the network for
    evaluated: int = 0  # of those, the ones the network computed (the others came from the cache)
    positions: int = 0
    games: int = 0


class SelfPlay:
    """`num_games` games in parallel; a finished game's slot starts a new game at once,
    until `max_games` (if given) have been started."""

    def __init__(
        self,
        game: Game,
        config: MCTSConfig,
        evaluator: Evaluator,
        *,
        num_games: int,
        max_games: int | None = None,
        seed: int | None = None,
        cache_positions: int = 0,
    ):
        """`cache_positions` > 0: remember that many of the network's evaluations (see
        `shared/search/cache.py`), afresh for every model."""
        self.game, self.config, self.evaluator = game, config, evaluator
        self.cache_positions = cache_positions
        self._cache: EvaluationCache | None = None
        self.rng = np.random.default_rng(seed)
        self.search = BatchedMCTS(game, config, num_games, self.rng)
        self.max_games = max_games
        self.stats = SelfPlayStats()
        b, p = num_games, game.max_plies
        self._boards = game.initial_boards(b)
        self._ply = np.zeros(b, np.int32)
        self._game_id = np.zeros((b, 16), np.uint8)
        self._tree_version = np.zeros(b, np.int64)  # model that built each tree
        # Per-slot history, written one ply at a time, read out when a game ends.
        self._obs = np.zeros((b, p, *game.obs_shape), np.uint8)
        self._legal = np.zeros((b, p, game.num_actions), bool)
        self._policy = np.zeros((b, p, game.num_actions), np.float32)
        self._version = np.zeros((b, p), np.int32)
        self._search_value = np.zeros((b, p), np.float32)  # the root's value, side to move's view
        self._policy_weight = np.zeros((b, p), np.float32)  # 1: a full search's policy target
        self._full = np.ones(b, bool)  # each slot's current search is a full one
        self._actions = np.zeros((b, p), np.int8)
        self._started = 0
        self._new_games(np.arange(min(b, max_games) if max_games is not None else b))

    @property
    def running(self) -> int:
        return int(self.search.active.sum())

    def _new_games(self, slots: np.ndarray) -> None:
        if self.max_games is not None:
            room = max(self.max_games - self._started, 0)
            self.search.stop(slots[room:])
            slots = slots[:room]
        if not len(slots):
            return
        self._started += len(slots)
        self._boards[slots] = self.game.initial_boards(len(slots))
        self._ply[slots] = 0
        self._game_id[slots] = np.frombuffer(
            b"".join(uuid.uuid4().bytes for _ in slots), np.uint8
        ).reshape(-1, 16)
        self._tree_version[slots] = self.evaluator.version
        self._plan(slots)
        self.search.start(slots, self._boards[slots])

    def _plan(self, slots: np.ndarray) -> None:
        """Playout cap randomisation: which of the next searches are full (simulations,
        noise, a policy target) and which are fast (value target only)."""
        cfg = self.config
        full = np.ones(len(slots), bool)
        if cfg.full_search_fraction < 1:
            full = self.rng.random(len(slots)) < cfg.full_search_fraction
        self._full[slots] = full
        self.search.plan(slots, np.where(full, cfg.num_simulations, cfg.fast_simulations), full)

    def step(self) -> list[FinishedGame]:
        """One simulation in every running game; then every game whose search is
        complete plays its move. Returns the games that ended."""
        evaluator = self.evaluator  # one model for the whole step, even if swapped meanwhile
        network = self._network(evaluator)
        computed_before = network.evaluated if network is self._cache else None
        ran = self.search.simulate(network)
        self.stats.simulations += ran
        asked = self.search.evaluated - self.stats.evaluations
        self.stats.evaluations = self.search.evaluated
        self.stats.evaluated += asked if computed_before is None else network.evaluated - computed_before
        ready = np.flatnonzero(self.search.done())
        if not len(ready):
            return []
        return self._play(ready, evaluator.version)

    def _network(self, evaluator: Evaluator) -> Evaluator:
        """`evaluator`, behind this model's evaluation cache if there is one (none before
        the first model: the uniform evaluator costs less than a lookup)."""
        if not self.cache_positions or evaluator.version == 0:
            return evaluator
        if self._cache is None or self._cache.inner is not evaluator:
            self._cache = EvaluationCache(evaluator, self.cache_positions, self.game.num_actions)
        return self._cache

    def _play(self, slots: np.ndarray, version: int) -> list[FinishedGame]:
        cfg, game = self.config, self.game
        ply = self._ply[slots]
        policy = self.search.visit_policy(slots)
        boards = self._boards[slots]
        self._obs[slots, ply] = game.observe(boards)
        self._legal[slots, ply] = game.legal_mask(boards)
        self._policy[slots, ply] = policy
        self._version[slots, ply] = version
        self._search_value[slots, ply] = np.clip(self.search.root_value(slots), -1, 1)
        self._policy_weight[slots, ply] = self._full[slots]

        temperature = np.where(ply < cfg.temp_threshold, cfg.temperature, cfg.final_temperature)
        actions = choose_actions(policy, temperature, self.rng)
        self._actions[slots, ply] = actions

        resigned = np.zeros(len(slots), bool)
        if cfg.resign_enabled:
            resigned = self.search.root_q(slots) < cfg.resign_threshold
        next_boards, over, value = game.play(boards, actions)
        self._boards[slots] = next_boards
        self._ply[slots] = ply + 1
        self.stats.positions += len(slots)

        # Outcome from the view of the side to move at the last recorded position:
        # a finished game gives `-value` (value is the next side's view); resigning, -1.
        ended = over | resigned
        last_value = np.where(resigned, -1.0, -value)
        finished = [
            self._finish(s, int(n), float(v), bool(r))
            for s, n, v, r in zip(slots[ended], ply[ended] + 1, last_value[ended], resigned[ended])
        ]
        self.stats.games += len(finished)

        going, going_actions = slots[~ended], actions[~ended]
        self._plan(going)
        # Reuse a subtree only if the model playing now built it.
        reuse = cfg.tree_reuse & (self._tree_version[going] == version)
        self.search.advance(going[reuse], going_actions[reuse], self._boards[going[reuse]], reuse=True)
        fresh = going[~reuse]
        self._tree_version[fresh] = version
        self.search.start(fresh, self._boards[fresh])
        if ended.any():
            self._new_games(slots[ended])
        return finished

    def _finish(self, slot: int, plies: int, last_value: float, resigned: bool) -> FinishedGame:
        # Results alternate sign going back one ply at a time; the value target is the
        # result discounted by the plies to the end, as the search backs values up.
        back = plies - 1 - np.arange(plies)
        result = np.where(back % 2 == 0, last_value, -last_value)
        value = (result * self.config.discount ** (back + 1.0)).astype(np.float32)
        transitions = Transitions(
            game_id=np.repeat(self._game_id[slot][None], plies, axis=0),
            ply=np.arange(plies, dtype=np.int16),
            model_version=self._version[slot, :plies].copy(),
            observation=self._obs[slot, :plies].copy(),
            legal_mask=self._legal[slot, :plies].copy(),
            policy=self._policy[slot, :plies].copy(),
            value=value,
            search_value=self._search_value[slot, :plies].copy(),
            policy_weight=self._policy_weight[slot, :plies].copy(),
        )
        return FinishedGame(
            transitions=transitions,
            moves=self.game.format_moves(self._actions[slot, :plies - resigned]),  # a resigner's move is not played
            outcome=float(result[0]),
            resigned=resigned,
        )


def choose_actions(policy: np.ndarray, temperature: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sample from `policy ** (1 / T)` per row; T == 0 takes the most visited move
    (ties broken at random). A move with no probability is never chosen."""
    greedy = temperature <= 0
    actions = np.empty(len(policy), np.int64)
    if greedy.any():
        p = policy[greedy]
        best = p == p.max(axis=1, keepdims=True)
        actions[greedy] = (best * rng.random(best.shape)).argmax(axis=1)
    if (~greedy).any():
        # Relative to the row's largest entry, so a small T cannot underflow every move.
        p = policy[~greedy].astype(np.float64)
        p = (p / p.max(axis=1, keepdims=True)) ** (1.0 / temperature[~greedy][:, None])
        # The draw is scaled by the row's own total, not compared against 1: a rounded
        # cumulative sum that ends just below 1 would otherwise leave a gap that falls
        # on the last column, visited or not (a full column: IllegalMove).
        cdf = np.cumsum(p, axis=1)
        u = rng.random(len(p)) * cdf[:, -1]
        chosen = (cdf <= u[:, None]).sum(axis=1)  # the first column whose cdf passes u
        # u rounding up to the total itself: the last column that has any probability.
        last = p.shape[1] - 1 - (p[:, ::-1] > 0).argmax(axis=1)
        actions[~greedy] = np.minimum(chosen, last)
    return actions
