"""The learning rate as a function of the training step alone, so that a resumed trainer
carries on along the same schedule and a changed config takes effect at once."""

from __future__ import annotations

import math

import torch

from shared.config import TrainingConfig


def learning_rate(step: int, t: TrainingConfig) -> float:
    """`learning_rate`, or with `learning_rate_decay_steps` a half cosine from it down to
    `learning_rate * learning_rate_floor` at that step, and the floor from then on."""
    if not t.learning_rate_decay_steps:
        return t.learning_rate
    progress = min(step / t.learning_rate_decay_steps, 1.0)
    floor = t.learning_rate * t.learning_rate_floor
    return floor + (t.learning_rate - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = rate
