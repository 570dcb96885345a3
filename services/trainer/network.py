"""The policy-value network: a small AlphaZero-style residual tower with two heads."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from shared.config import NetworkConfig
from shared.games.base import Game


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the input, then ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        # Convs feed straight into BatchNorm, whose shift makes a conv bias redundant.
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(x + y)


class PolicyValueNet(nn.Module):
    """Maps `float32[B, 2, H, W]` ("my stones", "their stones") to
    `(policy_logits[B, A], value[B])`, the value in [-1, 1] from the side to move's view."""

    def __init__(
        self,
        obs_shape: tuple[int, int, int],
        num_actions: int,
        blocks: int = 4,
        channels: int = 64,
    ):
        super().__init__()
        in_planes, height, width = obs_shape
        self.obs_shape = tuple(obs_shape)
        self.num_actions = num_actions
        cells = height * width

        self.stem = nn.Sequential(
            nn.Conv2d(in_planes, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )
        self.tower = nn.Sequential(*(ResidualBlock(channels) for _ in range(blocks)))
        self.policy_head = nn.Sequential(
            nn.Conv2d(channels, 2, 1, bias=False),
            nn.BatchNorm2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * cells, num_actions),
        )
        self.value_head = nn.Sequential(
            nn.Conv2d(channels, 1, 1, bias=False),
            nn.BatchNorm2d(1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(cells, 64),
            nn.ReLU(),
            nn.Linear(64, 1),
            nn.Tanh(),
        )

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.tower(self.stem(obs))
        # squeeze(-1), not squeeze(): a batch of one must stay shape [1].
        return self.policy_head(x), self.value_head(x).squeeze(-1)


def build_network(game: Game, network_config: NetworkConfig) -> PolicyValueNet:
    """The network for `game`, sized by the `[network]` config section."""
    return PolicyValueNet(
        game.obs_shape,
        game.num_actions,
        blocks=network_config.blocks,
        channels=network_config.channels,
    )
