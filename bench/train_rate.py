"""Training steps/s of a network on one random batch: the yardstick the benchmarks share
(`learning.py`'s host speed, `denormals.py`)."""

from __future__ import annotations

import time

import numpy as np
import torch

from services.trainer.learner import Batch, train_step
from shared.games import Game


def random_batch(game: Game, size: int, seed: int = 0) -> Batch:
    """`size` rows of random stones, policy targets, values, all policies weighted."""
    rng = np.random.default_rng(seed)
    a = game.num_actions
    return Batch(rng.integers(0, 2, (size, *game.obs_shape)).astype(np.float32),
                 rng.dirichlet(np.ones(a), size).astype(np.float32), rng.uniform(-1, 1, size).astype(np.float32),
                 np.ones(size, np.float32))


def train_rate(net: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, steps: int) -> float:
    """Training steps/s over `steps` steps on `batch`, after one untimed warm-up step."""
    cpu = torch.device("cpu")
    train_step(net, optimizer, batch, cpu)
    started = time.perf_counter()
    for _ in range(steps):
        train_step(net, optimizer, batch, cpu)
    return steps / (time.perf_counter() - started)
