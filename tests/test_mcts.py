"""Batched search: agrees with the reference search, finds tactics, keeps value signs,
reuses trees soundly."""

from __future__ import annotations

import numpy as np
import pytest

from shared.config import MCTSConfig
from shared.games import get_game
from shared.inference import UniformEvaluator
from shared.search.mcts import BatchedMCTS
from reference_mcts import reference_search

C4, TTT = get_game("connect4"), get_game("tictactoe")


class HashEvaluator:
    """Deterministic, non-uniform, row by row (so batch size cannot change a bit)."""

    version = 1

    def __init__(self, game, seed=0):
        rng = np.random.default_rng(seed)
        size = int(np.prod(game.obs_shape))
        self.wp = rng.normal(size=(size, game.num_actions)).astype(np.float32)
        self.wv = rng.normal(size=size).astype(np.float32) * 0.3

    def __call__(self, obs):
        x = obs.reshape(len(obs), -1).astype(np.float32)
        logits = np.stack([row @ self.wp for row in x]) if len(x) else np.zeros((0, self.wp.shape[1]), np.float32)
        value = np.array([np.tanh(row @ self.wv) for row in x], np.float32)
        return logits.astype(np.float32), value


class FixedNoise:
    """Stands in for the search's rng: the same Dirichlet sample every time."""

    def __init__(self, noise):
        self.noise = noise

    def gamma(self, alpha, size):
        return np.broadcast_to(self.noise, size).copy()


def run_batched(game, evaluator, positions, cfg, noise=None):
    boards = np.stack([game.position(p)[0] for p in positions])
    search = BatchedMCTS(game, cfg, len(boards), np.random.default_rng(0))
    if noise is not None:
        search.rng = FixedNoise(noise)
    slots = np.arange(len(boards))
    search.start(slots, boards)
    while not search.done().all():
        search.simulate(evaluator)
    return search


@pytest.mark.parametrize("game, positions", [
    (TTT, ["", "5", "15", "1593", "12"]),
    (C4, ["", "4453", "1352661757", "44444", "13526617576"]),
])
@pytest.mark.parametrize("sims", [10, 50])
@pytest.mark.parametrize("with_noise", [False, True])
def test_batched_search_matches_the_reference(game, positions, sims, with_noise):
    cfg = MCTSConfig(num_simulations=sims, dirichlet_epsilon=0.25 if with_noise else 0.0)
    evaluator = HashEvaluator(game)
    noise = np.linspace(1, 2, game.num_actions) if with_noise else None
    search = run_batched(game, evaluator, positions, cfg, noise)
    for slot, text in enumerate(positions):
        board = game.position(text)[0]
        root = reference_search(game, evaluator, board, cfg, noise)
        assert search.tree.edge_visits[slot, 0].tolist() == root.n.tolist(), text
        np.testing.assert_allclose(search.tree.edge_value[slot, 0], root.w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("game, position, best", [
    (C4, "112233", 3),  # win in one: complete the bottom row
    (C4, "11223", 3),   # block: the opponent threatens the bottom row
    (TTT, "1425", 2),   # win in one: 1-2-3
    (TTT, "152", 2),    # block: the opponent threatens 1-2-3
])
def test_takes_wins_and_blocks_losses(game, position, best):
    cfg = MCTSConfig(num_simulations=200, dirichlet_epsilon=0.0)
    search = run_batched(game, UniformEvaluator(game), [position], cfg)
    assert int(search.visit_policy(np.array([0]))[0].argmax()) == best


def test_value_signs_follow_the_side_to_move():
    cfg = MCTSConfig(num_simulations=200, dirichlet_epsilon=0.0)
    # TicTacToe "1425": the side to move wins at once. "12385": the side to move (second
    # player) faces two threats (7 and 9) and loses in every line.
    search = run_batched(TTT, UniformEvaluator(TTT), ["1425", "12385"], cfg)
    winning, losing = search.root_value(np.array([0, 1]))
    assert winning > 0.5 and losing < -0.3


def test_tree_reuse_keeps_the_subtree_and_leaves_other_slots_alone():
    cfg = MCTSConfig(num_simulations=50, dirichlet_epsilon=0.0)
    evaluator = HashEvaluator(C4)
    search = run_batched(C4, evaluator, ["", ""], cfg)
    t = search.tree
    action = int(t.edge_visits[0, 0].argmax())
    child = int(t.children[0, 0, action])
    kept_visits = t.edge_visits[0, child].copy()
    kept_values = t.edge_value[0, child].copy()
    other = {name: getattr(t, name)[1].copy() for name in t.node_arrays()}
    board = C4.position(str(action + 1))[0]

    search.advance(np.array([0]), np.array([action]), board[None], reuse=True)
    assert t.edge_visits[0, 0].tolist() == kept_visits.tolist()
    np.testing.assert_array_equal(t.edge_value[0, 0], kept_values)
    assert np.array_equal(t.boards[0, 0], board)
    n = int(t.next_free[0])
    assert 1 < n <= kept_visits.sum() + 1  # the root plus at most one node per visit
    assert t.depth[0, 0] == 0 and not t.expanded[0, n:].any()
    for node in range(n):  # every kept child points back at its parent
        for c in t.children[0, node][t.children[0, node] > 0]:
            assert t.parent[0, c] == node and t.depth[0, c] == t.depth[0, node] + 1
    for name, before in other.items():
        assert np.array_equal(getattr(t, name)[1], before), name

    # Topping up the reused root needs fewer steps than a fresh search.
    steps = 0
    while not search.done()[0]:
        search.simulate(evaluator)
        steps += 1
    assert steps == cfg.num_simulations - kept_visits.sum()
    assert search.root_visits()[0] == cfg.num_simulations


def test_reusing_a_move_never_visited_starts_fresh():
    cfg = MCTSConfig(num_simulations=3, dirichlet_epsilon=0.0)
    search = run_batched(C4, UniformEvaluator(C4), [""], cfg)
    unvisited = int(np.flatnonzero(search.tree.edge_visits[0, 0] == 0)[0])
    board = C4.position(str(unvisited + 1))[0]
    search.advance(np.array([0]), np.array([unvisited]), board[None], reuse=True)
    assert search.tree.next_free[0] == 1 and not search.tree.expanded[0, 0]
