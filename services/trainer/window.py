"""The replay window: the newest `window_size` positions, held in memory.

Loaded once, then extended with only the rows added since (`id > last_id`), so a
training step's cost does not grow with the table. Sampling is uniform over the window
(optionally only its newest rows, a number that grows with the positions stored:
`Taper`; optionally only its rows played by a model, once there are enough of them:
`drop_uniform_after`), with a random left-right mirror per sample (both games are
symmetric that way). The value target is the game's result, mixed with the search's
root value as rows are loaded when `search_value_weight` is set. With
`average_duplicates`, sampling is uniform over the distinct positions instead of the rows,
each drawn with its targets averaged over every copy of it (`Merged`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from services.trainer.learner import Batch
from shared.games import Game
from shared.transitions import Transitions

FETCH_CHUNK = 50_000


class Loaded(NamedTuple):
    """What one `refresh` brought."""

    first: int
    """Rows of the first load (the newest window, which may be old data); 0 afterwards."""
    new: int
    """Rows stored since the cursor."""


class Taper(NamedTuple):
    """KataGo's growing window: every position up to `start` stored, then a power of the
    total (`training.window_taper_*`)."""

    start: int
    exponent: float
    growth: float

    def size(self, stored: int) -> int:
        """The window for `stored` positions stored so far (not capped)."""
        if stored <= self.start:
            return stored
        return int(self.start * (1 + self.growth * ((stored / self.start) ** self.exponent - 1) / self.exponent))


class Merged(NamedTuple):
    """The rows sampled from, one per distinct position, with averaged targets."""

    rows: np.ndarray  # int [u]: one row holding each distinct position
    policy: np.ndarray  # float32 [u, a]: the mean over its copies whose policy counts
    value: np.ndarray  # float32 [u]: the mean over all its copies
    policy_weight: np.ndarray  # float32 [u]: 1 if any copy's policy counts, else 0


def merge_duplicates(rows: np.ndarray, observation: np.ndarray, policy: np.ndarray, value: np.ndarray,
                     policy_weight: np.ndarray) -> Merged:
    """Group `rows` by identical observation (one sort of their bytes) and average the
    targets of each group, the policy over the copies whose policy counts."""
    flat = np.ascontiguousarray(observation[rows].reshape(len(rows), -1))
    keys = flat.view(np.dtype((np.void, flat.shape[1]))).ravel()
    _, first, group, copies = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    group = group.ravel()  # numpy 2 keeps the input's shape
    groups = len(first)
    weight = policy_weight[rows].astype(np.float64)
    counted = np.bincount(group, weights=weight, minlength=groups)
    targets = policy[rows]
    summed = np.stack([np.bincount(group, weights=targets[:, a] * weight, minlength=groups)
                       for a in range(policy.shape[1])], axis=1)
    return Merged(
        rows=rows[first],
        policy=(summed / np.maximum(counted, 1e-12)[:, None]).astype(np.float32),
        value=(np.bincount(group, weights=value[rows], minlength=groups) / copies).astype(np.float32),
        policy_weight=(counted > 0).astype(np.float32),
    )


class ReplayWindow:
    def __init__(self, game: Game, size: int, drop_uniform_after: int = 0, search_value_weight: float = 0.0,
                 taper: Taper | None = None, average_duplicates: bool = False):
        """`drop_uniform_after` > 0: once that many rows held were played by a model
        (version >= 1), sample only those, never the uniform evaluator's (version 0).
        `search_value_weight`: the value target is `(1 - w) * value + w * search_value`.
        `taper`: sample only the newest `taper.size(positions stored)` rows held (ids
        count the rows stored, so the newest id is that number). `average_duplicates`:
        draw distinct positions, each with its copies' mean targets."""
        self.game, self.size = game, size
        self.search_value_weight = search_value_weight
        self.drop_uniform_after = drop_uniform_after
        self.taper = taper
        self.span = 0  # the newest rows held that sampling draws from (all held, unless tapered)
        self._eligible: np.ndarray | None = None  # row indices sampled from; None: all held
        self.average_duplicates = average_duplicates
        self._merged: Merged | None = None  # with average_duplicates: built at the first sample after a load
        a = game.num_actions
        self.observation = np.zeros((size, *game.obs_shape), np.uint8)
        self.policy = np.zeros((size, a), np.float32)
        self.value = np.zeros(size, np.float32)  # the value target, mixed as it is loaded
        self.policy_weight = np.zeros(size, np.float32)
        self.model_version = np.zeros(size, np.int32)  # the model that played each position
        self.oldest_version = self.newest_version = 0  # over the rows held
        self.filled = 0  # rows held (<= size)
        self.write = 0  # ring position of the next row
        self.last_id = 0  # replay cursor: newest row id loaded
        self.total_loaded = 0  # rows ever appended (new positions seen, for samples per position)
        self._mirror = game.mirror_actions()

    async def refresh(self, replay) -> Loaded:
        """Load rows newer than the cursor; the first call loads the newest window."""
        env_id, first, new = self.game.env_id, 0, 0
        if self.last_id == 0 and self.filled == 0:
            self.last_id, rows = await replay.fetch_newest(env_id, self.size)
            self._append(rows)
            first = len(rows)
        while True:
            last_id, rows = await replay.fetch_since(env_id, self.last_id, FETCH_CHUNK)
            if not len(rows):
                return Loaded(first, new)
            self.last_id = last_id
            self._append(rows)
            new += len(rows)

    def _append(self, rows: Transitions) -> None:
        n = len(rows)
        if n == 0:
            return
        if n >= self.size:  # only the newest rows fit
            rows = Transitions(**{k: v[-self.size:] for k, v in rows.__dict__.items()})
            n = self.size
        idx = (self.write + np.arange(n)) % self.size
        self.observation[idx] = rows.observation
        self.policy[idx] = rows.policy
        w = self.search_value_weight
        self.value[idx] = (1 - w) * rows.value + w * rows.search_value if w else rows.value
        self.policy_weight[idx] = rows.policy_weight
        self.model_version[idx] = rows.model_version
        self.write = int((self.write + n) % self.size)
        self.filled = min(self.filled + n, self.size)
        self.total_loaded += n
        # Once per refresh, not per sample: which rows sampling draws from.
        stored = max(self.last_id, self.total_loaded)  # ids count the rows stored
        self.span = self.filled if self.taper is None else min(self.filled, max(1, self.taper.size(stored)))
        rows = None if self.span == self.filled else (self.write - 1 - np.arange(self.span)) % self.size
        versions = self.model_version[:self.filled] if rows is None else self.model_version[rows]
        self.oldest_version, self.newest_version = int(versions.min()), int(versions.max())
        self._eligible = rows
        self._merged = None
        if self.drop_uniform_after and self.oldest_version == 0:
            played = np.flatnonzero(versions > 0)
            if len(played) >= self.drop_uniform_after:
                self._eligible = played if rows is None else rows[played]

    @property
    def sampled_positions(self) -> int:
        """Rows sampling draws from."""
        return self.filled if self._eligible is None else len(self._eligible)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """A batch of `batch_size` rows (or distinct positions, with `average_duplicates`),
        uniformly drawn (observations as float32). Called off the event loop: the merge
        of duplicates is done here, once per load."""
        if self.average_duplicates:
            if self._merged is None:
                rows = np.arange(self.filled) if self._eligible is None else self._eligible
                self._merged = merge_duplicates(rows, self.observation, self.policy, self.value, self.policy_weight)
            merged = self._merged
            pick = rng.integers(0, len(merged.rows), size=batch_size)
            idx, policy = merged.rows[pick], merged.policy[pick]
            value, weight = merged.value[pick], merged.policy_weight[pick]
        else:
            idx = rng.integers(0, self.sampled_positions, size=batch_size)
            if self._eligible is not None:
                idx = self._eligible[idx]
            policy, value, weight = self.policy[idx], self.value[idx], self.policy_weight[idx]
        obs = self.observation[idx].astype(np.float32)
        flip = rng.random(batch_size) < 0.5
        obs[flip] = obs[flip][..., ::-1]
        policy[flip] = policy[flip][:, self._mirror]
        return Batch(obs, policy, value, weight)
