"""The published weights: an exponential moving average of the trained ones.

Each optimizer step moves the weights by a noisy estimate of the gradient; the average
of the last few hundred steps' weights sits nearer what they circle (KataGo publishes
such averages of its training weights for the same reason). The trainer keeps training
its own weights and exports the average. BatchNorm's running statistics are averaged
alongside (`use_buffers`), so the average is a network whose normalisation matches it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

WARMUP = 10  # after n updates the decay is at most (1 + n) / (WARMUP + n)


def warmed_up_decay(decay: float, updates: int) -> float:
    """The decay of the `updates`-th update: `decay`, but at most `(1 + n) / (10 + n)`,
    so that an average started from random weights forgets them within ~10 % of the
    steps taken (as TensorFlow's ExponentialMovingAverage with `num_updates`)."""
    return min(decay, (1 + updates) / (WARMUP + updates))


class WeightAverage:
    """`decay` per step (0 < decay < 1); `module` is the averaged network to export."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"weight average decay must be in (0, 1), got {decay}")

        def blend(averaged: list[Tensor], current: list[Tensor], updates: Tensor) -> None:
            weight = 1.0 - warmed_up_decay(decay, int(updates))
            if averaged[0].is_floating_point():
                torch._foreach_lerp_(averaged, current, weight)
            else:  # BatchNorm's batch counters: not a quantity to average
                torch._foreach_copy_(averaged, current)

        self._averaged = AveragedModel(model, multi_avg_fn=blend, use_buffers=True)

    @property
    def module(self) -> nn.Module:
        return self._averaged.module

    @property
    def updates(self) -> int:
        return int(self._averaged.n_averaged)

    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (after an optimizer step)."""
        self._averaged.update_parameters(model)

    def state_dict(self) -> dict:
        return self._averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._averaged.load_state_dict(state)
