"""An evaluation cache: a network's outputs for positions it has already evaluated.

Self-play's parallel games meet the same positions over and over (every game starts from
the same board, openings are played at temperature, Connect4 is full of transpositions):
in an actor's search about 45 % of the positions sent to the network had been sent
before. The cache wraps the network (the same `Evaluator` interface) and evaluates only
what it has not seen, each position once per call.

Keys are the observations' bytes, which are all the network sees, so a hit returns
exactly what the network returned. Entries live in a ring of `capacity` slots: the
oldest is overwritten first. A cache belongs to one network: a new model needs a new
cache (self-play makes one when its evaluator is swapped).
"""

from __future__ import annotations

import numpy as np


class EvaluationCache:
    def __init__(self, evaluator, capacity: int, num_actions: int):
        self.inner = evaluator
        self.version = evaluator.version
        self.num_actions = num_actions
        self.capacity = capacity
        self._slot: dict[bytes, int] = {}  # key -> ring slot
        self._keys: list[bytes | None] = [None] * capacity
        self._logits = np.zeros((capacity, num_actions), np.float32)
        self._value = np.zeros(capacity, np.float32)
        self._next = 0  # the ring slot written next
        self.asked = 0  # positions asked for
        self.evaluated = 0  # positions the network evaluated

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(obs)
        if n == 0:
            return self.inner(obs)
        # One bytes object per row (a fixed-width view: trailing zero bytes are dropped,
        # which keeps rows of equal width distinct).
        rows = np.ascontiguousarray(obs).reshape(n, -1)
        keys = rows.view(f"S{rows.shape[1] * rows.itemsize}").ravel().tolist()
        found = np.fromiter((self._slot.get(k, -1) for k in keys), np.int64, n)
        logits = np.empty((n, self.num_actions), np.float32)
        value = np.empty(n, np.float32)
        hit = found >= 0
        logits[hit], value[hit] = self._logits[found[hit]], self._value[found[hit]]
        self.asked += n
        missing = np.flatnonzero(~hit)
        if len(missing):
            first: dict[bytes, int] = {}  # each new position evaluated once, even if repeated here
            for i in missing.tolist():
                first.setdefault(keys[i], len(first))
            unique = np.fromiter((first[keys[i]] for i in missing.tolist()), np.int64, len(missing))
            rows_to_evaluate = np.empty(len(first), np.int64)
            rows_to_evaluate[unique] = missing
            new_logits, new_value = self.inner(obs[rows_to_evaluate])
            logits[missing], value[missing] = new_logits[unique], new_value[unique]
            self.evaluated += len(first)
            self._store(list(first), new_logits, new_value)
        return logits, value

    def _store(self, keys: list[bytes], logits: np.ndarray, value: np.ndarray) -> None:
        keys, logits, value = keys[-self.capacity:], logits[-self.capacity:], value[-self.capacity:]
        slots = (self._next + np.arange(len(keys))) % self.capacity
        for slot, key in zip(slots.tolist(), keys):
            old = self._keys[slot]
            if old is not None:
                del self._slot[old]
            self._keys[slot] = key
            self._slot[key] = slot
        self._logits[slots], self._value[slots] = logits, value
        self._next = int((self._next + len(keys)) % self.capacity)

    @property
    def saved(self) -> float:
        """The fraction of positions asked for that the network did not have to evaluate."""
        return 1 - self.evaluated / self.asked if self.asked else 0.0
