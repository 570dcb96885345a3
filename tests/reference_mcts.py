"""A deliberately plain single-game PUCT search, one Python object per node.

It follows BatchedMCTS's rules exactly (root evaluated first and not counted as a
simulation; first-play urgency; sqrt(n + 1) exploration; ties to the lowest action;
values backed up with alternating signs), using the same numpy arithmetic per node, so
the two must agree visit for visit.
"""

from __future__ import annotations

import numpy as np

from shared.config import MCTSConfig
from shared.search.mcts import masked_softmax


class Node:
    def __init__(self, board: np.ndarray):
        self.board = board
        self.children: dict[int, Node] = {}
        self.terminal = False
        self.terminal_value = np.float32(0)
        self.value = np.float32(0)
        self.prior = self.legal = None
        self.n = self.w = None


def evaluate(game, evaluator, node: Node) -> np.float32:
    logits, value = evaluator(game.observe(node.board[None]))
    node.legal = game.legal_mask(node.board[None])[0]
    node.prior = masked_softmax(logits, node.legal[None])[0].astype(np.float32)
    node.value = np.float32(value[0])
    node.n = np.zeros(game.num_actions, np.int32)
    node.w = np.zeros(game.num_actions, np.float32)
    return node.value


def select(node: Node, cfg: MCTSConfig) -> int:
    n, w = node.n[None], node.w[None]
    n_total = n.sum(axis=1)
    parent_q = (np.array([node.value], np.float32) + w.sum(axis=1)) / (n_total + 1)
    q = np.where(n > 0, w / np.maximum(n, 1), (parent_q - cfg.fpu_reduction)[:, None])
    u = cfg.c_puct * node.prior[None] * (np.sqrt(n_total + 1)[:, None] / (1 + n))
    return int(np.where(node.legal[None], q + u, -np.inf).argmax(axis=1)[0])


def reference_search(game, evaluator, board: np.ndarray, cfg: MCTSConfig, noise: np.ndarray | None = None) -> Node:
    root = Node(board)
    evaluate(game, evaluator, root)
    if noise is not None:
        legal = root.legal[None]
        mixed = noise[None] * legal
        mixed = mixed / mixed.sum(axis=1, keepdims=True)
        prior = root.prior[None].copy()
        prior[:] = (1 - cfg.dirichlet_epsilon) * prior + cfg.dirichlet_epsilon * mixed
        root.prior = prior[0]
    for _ in range(cfg.num_simulations):
        node, path = root, []
        while True:
            a = select(node, cfg)
            path.append((node, a))
            child = node.children.get(a)
            if child is None:
                board, done, value = game.play(node.board[None], np.array([a]))
                child = node.children[a] = Node(board[0])
                if done[0]:
                    child.terminal, child.terminal_value = True, np.float32(value[0])
                    leaf_value = child.terminal_value
                else:
                    leaf_value = evaluate(game, evaluator, child)
                break
            if child.terminal:
                leaf_value = child.terminal_value
                break
            node = child
        for k, (node, a) in enumerate(path):
            sign = np.float32(-1.0 if (len(path) - k) % 2 == 1 else 1.0)
            node.n[a] += 1
            node.w[a] += sign * leaf_value
    return root
