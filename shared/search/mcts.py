"""Batched PUCT search: one simulation in every tree per step, all leaves evaluated by
one network call.

The network is injected (`Evaluator`: observations -> logits, values) and the game is
injected (`Game`: batched rules), so the search knows neither onnxruntime nor Connect4.
Each step: select a path in every tree (vectorised over the trees still descending),
create the leaf nodes, evaluate the non-terminal ones in one batch, back the values up
(with `discount` below 1, shrunk by `discount` per ply they travel).
"""

from __future__ import annotations

import numpy as np

from shared.config import MCTSConfig
from shared.games import Game
from shared.search.tree import NO_CHILD, Tree


def masked_softmax(logits: np.ndarray, legal: np.ndarray) -> np.ndarray:
    z = np.where(legal, logits, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


class BatchedMCTS:
    """Search trees for `batch` games at once, `num_simulations` per move.

    Counting follows mctx: a fresh root is evaluated once, then `num_simulations`
    simulations each add one visit to a root edge. With tree reuse a root keeps the
    visits it had as a child, and the search only tops them up to `num_simulations`.
    """

    def __init__(self, game: Game, config: MCTSConfig, batch: int, rng: np.random.Generator):
        self.game, self.config, self.batch, self.rng = game, config, batch, rng
        self.nodes = config.num_simulations + 2  # a top-up search never needs more
        self.tree = Tree.allocate(batch, self.nodes, game.num_actions, game.board_shape)
        self.active = np.zeros(batch, bool)  # slots that take part in simulations
        self.add_noise = config.dirichlet_epsilon > 0
        # Per slot, for its next search (see `plan`): simulations, and noise at the root.
        self.budget = np.full(batch, config.num_simulations, np.int64)
        self.noise = np.full(batch, self.add_noise)
        self._noise_pending = np.zeros(batch, bool)
        self._all = np.arange(batch)
        self.evaluated = 0  # positions sent to the network, ever
        # Per step: the edges walked, for the backup.
        self._path_nodes = np.zeros((batch, self.nodes), np.int32)
        self._path_actions = np.zeros((batch, self.nodes), np.int32)
        # A leaf's value seen k plies above it is worth discount**k of it.
        self._discount = (config.discount ** np.arange(self.nodes + 1)).astype(np.float32)

    # -- trees --------------------------------------------------------------------
    def plan(self, slots: np.ndarray, simulations: np.ndarray, noise: np.ndarray) -> None:
        """The next search in `slots` (set before `start` or `advance`): how many
        simulations (at most `num_simulations`), and whether its root gets noise."""
        self.budget[slots] = simulations
        self.noise[slots] = noise & self.add_noise

    def start(self, slots: np.ndarray, boards: np.ndarray) -> None:
        """New searches from `boards` (fresh trees) in `slots`."""
        self.tree.reset(slots, boards)
        self.active[slots] = True
        self._noise_pending[slots] = self.noise[slots]

    def advance(self, slots: np.ndarray, actions: np.ndarray, next_boards: np.ndarray, reuse: bool) -> None:
        """The games in `slots` played `actions`; continue from `next_boards`, keeping the
        subtree of the move played when `reuse` and it exists."""
        if reuse:
            children = self.tree.children[slots, 0, actions]
            kept = children != NO_CHILD
            if kept.any():
                self.tree.reroot(slots[kept], children[kept])
                self._noise_pending[slots[kept]] = self.noise[slots[kept]]
                self._apply_pending_noise(slots[kept])
            slots, next_boards = slots[~kept], next_boards[~kept]
        if len(slots):
            self.start(slots, next_boards)

    def stop(self, slots: np.ndarray) -> None:
        self.active[slots] = False

    # -- what a search found -----------------------------------------------------------
    def root_visits(self) -> np.ndarray:
        """`int[B]`: simulations done from each root (visits of its edges)."""
        return self.tree.edge_visits[:, 0].sum(axis=1)

    def done(self) -> np.ndarray:
        """Slots whose search has its simulations (`num_simulations` unless planned)."""
        return self.active & (self.root_visits() >= self.budget)

    def visit_policy(self, slots: np.ndarray) -> np.ndarray:
        """Root visit distribution (the policy target), `float32[len(slots), A]`."""
        visits = self.tree.edge_visits[slots, 0].astype(np.float32)
        return visits / visits.sum(axis=1, keepdims=True)

    def root_q(self, slots: np.ndarray) -> np.ndarray:
        """Best root edge value for the side to move (used for resignation)."""
        n = self.tree.edge_visits[slots, 0]
        q = np.where(n > 0, self.tree.edge_value[slots, 0] / np.maximum(n, 1), -np.inf)
        return q.max(axis=1)

    def root_value(self, slots: np.ndarray) -> np.ndarray:
        """Mean value of the root from the side to move's view."""
        t = self.tree
        n = t.edge_visits[slots, 0].sum(axis=1)
        w = t.edge_value[slots, 0].sum(axis=1) + t.node_value[slots, 0]
        return w / (n + 1)

    # -- one simulation in every active tree -------------------------------------------
    def simulate(self, evaluator) -> int:
        """Run one simulation in each active tree whose search is not complete yet;
        returns how many ran."""
        t = self.tree
        slots = np.flatnonzero(self.active & (self.root_visits() < self.budget))
        if not len(slots):
            return 0
        fresh = ~t.expanded[slots, 0]
        leaf_slots = [slots[fresh]]  # fresh roots are their own leaves
        leaf_nodes = [np.zeros(fresh.sum(), np.int32)]
        path_len = np.zeros(self.batch, np.int32)

        # Selection: descend while the chosen child exists and is not terminal.
        idx = slots[~fresh]
        node = np.zeros(len(idx), np.int32)
        empty = np.zeros(0, np.int32)
        new_slots, new_parents, new_actions = [empty], [empty], [empty]
        term_slots, term_nodes = [empty], [empty]
        depth = 0
        while len(idx):
            action = self._select(idx, node)
            self._path_nodes[idx, depth] = node
            self._path_actions[idx, depth] = action
            path_len[idx] = depth + 1
            child = t.children[idx, node, action]
            missing = child == NO_CHILD
            new_slots.append(idx[missing])
            new_parents.append(node[missing])
            new_actions.append(action[missing])
            ends = ~missing & t.terminal[idx, child]
            term_slots.append(idx[ends])
            term_nodes.append(child[ends])
            go = ~missing & ~ends
            idx, node = idx[go], child[go]
            depth += 1

        # Expansion: create the new children and find which of them end the game.
        new_slots = np.concatenate(new_slots)
        if len(new_slots):
            parents = np.concatenate(new_parents)
            actions = np.concatenate(new_actions)
            child = t.next_free[new_slots]
            t.next_free[new_slots] += 1
            t.children[new_slots, parents, actions] = child
            t.parent[new_slots, child] = parents
            t.depth[new_slots, child] = t.depth[new_slots, parents] + 1
            boards, over, value = self.game.play(t.boards[new_slots, parents], actions)
            t.boards[new_slots, child] = boards
            t.terminal[new_slots, child] = over
            t.terminal_value[new_slots, child] = value
            leaf_slots.append(new_slots[~over])
            leaf_nodes.append(child[~over])
            term_slots.append(new_slots[over])
            term_nodes.append(child[over])

        # Evaluation: every non-terminal leaf of every tree in one network call.
        leaf_slots, leaf_nodes = np.concatenate(leaf_slots), np.concatenate(leaf_nodes)
        values = np.zeros(self.batch, np.float32)
        if len(leaf_slots):
            boards = t.boards[leaf_slots, leaf_nodes]
            logits, v = evaluator(self.game.observe(boards))
            self.evaluated += len(leaf_slots)
            legal = self.game.legal_mask(boards)
            t.legal[leaf_slots, leaf_nodes] = legal
            t.prior[leaf_slots, leaf_nodes] = masked_softmax(logits, legal)
            t.node_value[leaf_slots, leaf_nodes] = v
            t.expanded[leaf_slots, leaf_nodes] = True
            values[leaf_slots] = v
            self._apply_pending_noise(leaf_slots[leaf_nodes == 0])
        term_slots, term_nodes = np.concatenate(term_slots), np.concatenate(term_nodes)
        values[term_slots] = t.terminal_value[term_slots, term_nodes]

        self._backup(slots, path_len, values)
        return len(slots)

    def _select(self, idx: np.ndarray, node: np.ndarray) -> np.ndarray:
        """PUCT choice at `node` of each tree in `idx`."""
        t, cfg = self.tree, self.config
        n = t.edge_visits[idx, node]
        w = t.edge_value[idx, node]
        n_total = n.sum(axis=1)
        # First-play urgency: an unvisited move is worth the node's own value, less a bit
        # (at a noisy root, with `fpu_at_noisy_root` off, nothing less).
        parent_q = (t.node_value[idx, node] + w.sum(axis=1)) / (n_total + 1)
        reduction = cfg.fpu_reduction
        if not cfg.fpu_at_noisy_root:
            reduction = np.where((node == 0) & self.noise[idx], 0.0, reduction)
        q = np.where(n > 0, w / np.maximum(n, 1), (parent_q - reduction)[:, None])
        u = cfg.c_puct * t.prior[idx, node] * (np.sqrt(n_total + 1)[:, None] / (1 + n))
        score = np.where(t.legal[idx, node], q + u, -np.inf)
        return score.argmax(axis=1).astype(np.int32)

    def _backup(self, slots: np.ndarray, path_len: np.ndarray, values: np.ndarray) -> None:
        """Add each leaf's value to the edges of its path, from each chooser's view,
        discounted by the plies between them (`discount`)."""
        lengths = path_len[slots]
        depth = np.arange(lengths.max(initial=0))
        on_path = depth[None, :] < lengths[:, None]
        rows, cols = np.nonzero(on_path)
        s = slots[rows]
        # The leaf's value is from its side to move; the chooser one edge above is the
        # opponent, so signs alternate from the leaf upwards.
        above = lengths[rows] - cols  # plies from the edge's chooser down to the leaf
        sign = np.where(above % 2 == 1, -1.0, 1.0).astype(np.float32)
        nodes, actions = self._path_nodes[s, cols], self._path_actions[s, cols]
        # (slot, node, action) is unique within one step: plain fancy += is exact.
        self.tree.edge_visits[s, nodes, actions] += 1
        self.tree.edge_value[s, nodes, actions] += sign * self._discount[above] * values[s]

    def _apply_pending_noise(self, slots: np.ndarray) -> None:
        """Mix Dirichlet noise into the priors of roots that just got them."""
        slots = slots[self._noise_pending[slots]]
        if not len(slots):
            return
        self._noise_pending[slots] = False
        legal = self.tree.legal[slots, 0]
        noise = self.rng.gamma(self.config.dirichlet_alpha, size=legal.shape) * legal
        noise /= noise.sum(axis=1, keepdims=True)
        eps = self.config.dirichlet_epsilon
        self.tree.prior[slots, 0] = (1 - eps) * self.tree.prior[slots, 0] + eps * noise
