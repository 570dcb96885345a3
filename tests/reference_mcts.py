"""A deliberately plain single-game PUCT search: one Python object per node, no batching.

It follows `BatchedMCTS`'s rules exactly, so the two can be compared visit for visit:

- a fresh root is evaluated first, and that evaluation is not a simulation; then each
  simulation adds one visit to a root edge, descending from the root while the chosen
  child exists and is not terminal;
- PUCT at a node (edge statistics from the side to move at that node):
  `parent_q = (node_value + sum w) / (sum n + 1)`; `q = w / n`, or `parent_q -
  fpu_reduction` for an unvisited edge (no reduction at a root that got noise when
  `fpu_at_noisy_root` is off); `u = c_puct * prior * sqrt(sum n + 1) / (1 + n)`;
  illegal moves score -inf; ties go to the lowest action (numpy argmax);
- a new leaf gets `priors = softmax(logits)` over its legal moves and `node_value` = the
  network's value; a new child that ends the game is terminal, worth -1 (its side to move
  lost) or 0 (draw), and is never evaluated;
- backup: the leaf's value `v` is from its side to move; the edge just above it gets
  `-d * v`, the next `+d**2 * v`, alternating up to the root (`d`: `discount`);
- root noise: `prior = (1 - eps) * prior + eps * noise`, the noise multiplied by the
  legal mask and normalised; the caller passes the noise (no random numbers in here).

Per node the arithmetic uses numpy arrays of the node's edges with the same dtypes as
`BatchedMCTS` (int32 visits, float32 values and priors) so float rounding, and therefore
tie breaking, is identical. Nothing is imported from `shared.search`.
"""

from __future__ import annotations

import numpy as np

from shared.config import MCTSConfig


class Node:
    def __init__(self, board: np.ndarray):
        self.board = board  # int8 [H, W], side to move relative
        self.children: dict[int, Node] = {}
        self.expanded = False
        self.terminal = False
        self.terminal_value = np.float32(0)
        self.value = np.float32(0)  # network value, the node's side to move's view
        self.legal: np.ndarray | None = None  # bool [A]
        self.prior: np.ndarray | None = None  # float32 [A]
        self.n: np.ndarray | None = None  # int32 [A] edge visits
        self.w: np.ndarray | None = None  # float32 [A] edge value sums

    def size(self) -> int:
        """Nodes in this subtree, this one included."""
        return 1 + sum(c.size() for c in self.children.values())


def softmax_over_legal(logits: np.ndarray, legal: np.ndarray) -> np.ndarray:
    z = np.where(legal, logits, -np.inf)
    z = z - z.max()
    p = np.exp(z)
    return p / p.sum()


def mix_noise(prior: np.ndarray, legal: np.ndarray, noise: np.ndarray, eps: float) -> np.ndarray:
    noise = noise * legal
    noise = noise / noise.sum()
    return ((1 - eps) * prior + eps * noise).astype(np.float32)


def puct_choice(node: Node, cfg: MCTSConfig, fpu_reduction: float) -> int:
    n, w = node.n, node.w
    n_total = n.sum()
    parent_q = (node.value + w.sum()) / (n_total + 1)
    q = np.where(n > 0, w / np.maximum(n, 1), parent_q - fpu_reduction)
    u = cfg.c_puct * node.prior * (np.sqrt(n_total + 1) / (1 + n))
    score = np.where(node.legal, q + u, -np.inf)
    return int(np.argmax(score))


class ReferenceMCTS:
    """One game's search tree. `start` a position, `run` to `num_simulations`,
    `advance` to a child (tree reuse) and `run` again to top it up."""

    def __init__(self, game, cfg: MCTSConfig, evaluator):
        self.game, self.cfg, self.evaluator = game, cfg, evaluator
        self.root: Node | None = None
        self.root_noised = False
        self.evaluations = 0

    # -- tree ---------------------------------------------------------------------
    def start(self, board: np.ndarray, noise: np.ndarray | None = None) -> Node:
        self.root = Node(np.array(board, np.int8))
        self._evaluate(self.root)
        self._noise(noise)
        return self.root

    def advance(self, action: int, noise: np.ndarray | None = None) -> bool:
        """Play `action` at the root; keep its subtree if it exists (returns whether it
        did), else start a fresh tree from the position after it."""
        child = self.root.children.get(action)
        if child is not None and child.expanded:
            self.root = child
            self._noise(noise)
            return True
        board, _, _ = self.game.play(self.root.board[None], np.array([action]))
        self.start(board[0], noise)
        return False

    # -- search -------------------------------------------------------------------
    def run(self) -> Node:
        while self.root.n.sum() < self.cfg.num_simulations:
            self.simulate()
        return self.root

    def simulate(self) -> None:
        node, path = self.root, []
        while True:
            plain = node is not self.root or not self.root_noised or self.cfg.fpu_at_noisy_root
            a = puct_choice(node, self.cfg, self.cfg.fpu_reduction if plain else 0.0)
            path.append((node, a))
            child = node.children.get(a)
            if child is None:
                board, done, value = self.game.play(node.board[None], np.array([a]))
                child = node.children[a] = Node(board[0])
                if done[0]:
                    child.terminal = True
                    child.terminal_value = np.float32(value[0])
                    leaf_value = child.terminal_value
                else:
                    leaf_value = self._evaluate(child)
                break
            if child.terminal:
                leaf_value = child.terminal_value
                break
            node = child
        # The edge just above the leaf belongs to the leaf's opponent: -v, then +v, ...,
        # each k + 1 plies above the leaf discounted by discount ** (k + 1).
        for k, (node, a) in enumerate(reversed(path)):
            sign = np.float32(-1.0 if k % 2 == 0 else 1.0)
            node.n[a] += 1
            node.w[a] += sign * np.float32(self.cfg.discount ** (k + 1)) * leaf_value

    # -- results ------------------------------------------------------------------
    def root_value(self) -> float:
        r = self.root
        return float((r.w.sum() + r.value) / (r.n.sum() + 1))

    def _evaluate(self, node: Node) -> np.float32:
        logits, value = self.evaluator(self.game.observe(node.board[None]))
        self.evaluations += 1
        node.legal = self.game.legal_mask(node.board[None])[0]
        node.prior = softmax_over_legal(np.asarray(logits)[0], node.legal).astype(np.float32)
        node.value = np.float32(np.asarray(value)[0])
        node.n = np.zeros(self.game.num_actions, np.int32)
        node.w = np.zeros(self.game.num_actions, np.float32)
        node.expanded = True
        return node.value

    def _noise(self, noise: np.ndarray | None) -> None:
        self.root_noised = noise is not None and self.cfg.dirichlet_epsilon > 0
        if self.root_noised:
            r = self.root
            r.prior = mix_noise(r.prior, r.legal, noise, self.cfg.dirichlet_epsilon)

