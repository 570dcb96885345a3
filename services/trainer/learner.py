"""One training step, read top to bottom, and the checkpoint that lets training resume."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from services.trainer.network import PolicyValueNet


class Batch(NamedTuple):
    """One training batch, as numpy arrays with the batch first."""

    observation: np.ndarray  # float32 [b, 2, H, W]
    policy: np.ndarray  # float32 [b, A]: the search's visit distribution
    value: np.ndarray  # float32 [b]: the value target
    policy_weight: np.ndarray  # float32 [b]: how much each row's policy counts (0: a fast search's)


@dataclass
class StepLosses:
    policy: float
    value: float
    total: float


def train_step(model: PolicyValueNet, optimizer: torch.optim.Optimizer, batch: Batch,
               device: torch.device) -> StepLosses:
    obs, policy_target, value_target, policy_weight = (torch.from_numpy(a).to(device) for a in batch)
    model.train()
    logits, value = model(obs)
    # Cross-entropy against the search's visit distribution, averaged over the rows whose
    # policy is a target (all of them without playout cap randomisation); squared error
    # against the value target on every row. Weight decay is the optimizer's.
    cross_entropy = -(policy_target * F.log_softmax(logits, dim=1)).sum(dim=1)
    policy_loss = (policy_weight * cross_entropy).sum() / policy_weight.sum().clamp(min=1.0)
    value_loss = F.mse_loss(value, value_target)
    loss = policy_loss + value_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return StepLosses(policy_loss.item(), value_loss.item(), loss.item())


@dataclass
class Checkpoint:
    """The training state to continue from: weights, optimizer, step, version, the
    weights' average if one is kept (the window is not in it: a resumed trainer loads the
    newest positions)."""

    model: dict
    optimizer: dict
    step: int
    version: int  # the model version published with these weights
    # Replay id up to which the window had loaded. Informational: a resumed trainer loads
    # the newest window afresh (see the trainer service).
    data_cursor: int
    # The published weights' average (`training.average_decay`); None: not averaged.
    average: dict | None = None

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(
            {"model": self.model, "optimizer": self.optimizer, "step": self.step,
             "version": self.version, "data_cursor": self.data_cursor, "average": self.average},
            buffer,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Checkpoint":
        # weights_only: a checkpoint is data, never code to run.
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return cls(**state)
