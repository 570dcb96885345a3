"""Batched PUCT search against the plain reference search, tactics, value signs, tree
reuse, and an effect of every search option. The self-play loop is in test_selfplay.py."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import HashEvaluator
from reference_mcts import ReferenceMCTS
from shared.config import MCTSConfig
from shared.games import get_game
from shared.inference import UniformEvaluator
from shared.search.cache import EvaluationCache
from shared.search.mcts import BatchedMCTS
from shared.search.tree import Tree

C4 = get_game("connect4")
TTT = get_game("tictactoe")


class FixedNoise:
    """Stands in for `search.rng`: each `gamma` call returns the next given table (the
    search multiplies it by the legal mask and normalises it)."""

    def __init__(self, *tables: np.ndarray):
        self.tables = list(tables)
        self.alphas: list[float] = []

    def gamma(self, alpha, size=None):
        self.alphas.append(alpha)
        table = self.tables.pop(0)
        assert tuple(size) == table.shape, (size, table.shape)
        return table.copy()


def noise_table(rows: int, actions: int, seed: int) -> np.ndarray:
    # Positive everywhere, also on illegal moves: the search must mask those out.
    return np.random.default_rng(seed).gamma(0.5, size=(rows, actions)) + 1e-3


def boards_of(game, positions):
    return np.stack([game.position(p)[0] for p in positions])


def run(search: BatchedMCTS, evaluator) -> int:
    """Simulate until every active search is complete; returns the number of steps."""
    steps = 0
    while search.simulate(evaluator):
        steps += 1
        assert steps < 10_000
    return steps


def assert_same_tree(tree: Tree, slot: int, node: int, ref, *, root: bool = True):
    """The batched subtree at (slot, node) equals the reference subtree, node by node."""
    assert tree.expanded[slot, node]
    assert np.array_equal(tree.boards[slot, node], ref.board)
    assert tree.edge_visits[slot, node].tolist() == ref.n.tolist()
    np.testing.assert_array_equal(tree.edge_value[slot, node], ref.w)
    np.testing.assert_array_equal(tree.prior[slot, node], ref.prior)
    assert tree.legal[slot, node].tolist() == ref.legal.tolist()
    assert tree.node_value[slot, node] == ref.value
    made = np.flatnonzero(tree.children[slot, node])
    assert sorted(ref.children) == made.tolist()
    for a, child in ref.children.items():
        c = int(tree.children[slot, node, a])
        assert tree.parent[slot, c] == node and c > node
        assert bool(tree.terminal[slot, c]) == child.terminal
        if child.terminal:
            assert tree.terminal_value[slot, c] == child.terminal_value
            assert not tree.expanded[slot, c]
        else:
            assert_same_tree(tree, slot, c, child, root=False)


def assert_consistent(tree: Tree, slot: int):
    """Structure of one tree: nodes 0..next_free-1 in use, each non-root node the child
    of exactly one edge of its parent, depths from 0 at the root, nothing beyond."""
    nf = int(tree.next_free[slot])
    assert nf >= 1 and tree.depth[slot, 0] == 0 and tree.parent[slot, 0] == 0
    children = tree.children[slot, :nf]
    listed = children[children > 0]
    assert sorted(listed.tolist()) == list(range(1, nf))  # each node once, none missing
    for i in range(1, nf):
        p = int(tree.parent[slot, i])
        assert p < i
        assert (tree.children[slot, p] == i).sum() == 1
        assert tree.depth[slot, i] == tree.depth[slot, p] + 1
    # Edge visits into a node are at least the visits below it (+1 for its creation).
    for i in range(1, nf):
        p = int(tree.parent[slot, i])
        a = int(np.flatnonzero(tree.children[slot, p] == i)[0])
        assert tree.edge_visits[slot, p, a] >= 1
        if tree.expanded[slot, i]:
            assert tree.edge_visits[slot, p, a] == 1 + tree.edge_visits[slot, i].sum()
        else:
            assert tree.terminal[slot, i]
    for name in tree.node_arrays():  # nothing left behind in unused nodes
        assert not getattr(tree, name)[slot, nf:].any(), name


# -- batched search == reference search ------------------------------------------------------
TTT_POSITIONS = ["", "5", "15", "1529", "152", "15397", "1234", "95"]
C4_POSITIONS = ["", "4", "4453", "112233", "717263", "727364", "135564772", "4525455135342172", "1111112"]


def test_without_fpu_at_a_noisy_root_its_unvisited_moves_get_tried_sooner():
    def root_visits(**params):
        cfg = MCTSConfig(num_simulations=50, dirichlet_epsilon=0.25, fpu_reduction=0.5, **params)
        search = BatchedMCTS(C4, cfg, len(C4_POSITIONS), np.random.default_rng(0))
        search.rng = FixedNoise(noise_table(len(C4_POSITIONS), C4.num_actions, seed=3))
        search.start(np.arange(len(C4_POSITIONS)), boards_of(C4, C4_POSITIONS))
        run(search, HashEvaluator(C4, seed=3))
        return search.tree.edge_visits[:, 0]

    reduced, plain = root_visits(), root_visits(fpu_at_noisy_root=False)
    # More root moves tried at least once, in every position, and more in some.
    tried = lambda visits: (visits > 0).sum(axis=1)
    assert (tried(plain) >= tried(reduced)).all() and (tried(plain) > tried(reduced)).any()


@pytest.mark.parametrize("game, positions", [(TTT, TTT_POSITIONS), (C4, C4_POSITIONS)], ids=["tictactoe", "connect4"])
@pytest.mark.parametrize("sims", [10, 23, 50])
@pytest.mark.parametrize("noise", [False, True], ids=["no-noise", "noise"])
@pytest.mark.parametrize("params", [{}, {"c_puct": 0.6, "fpu_reduction": 0.0}, {"fpu_at_noisy_root": False},
                                    {"discount": 0.9}],
                         ids=["default", "c0.6-fpu0", "no-fpu-at-noisy-root", "discount0.9"])
def test_batched_search_matches_reference(game, positions, sims, noise, params):
    cfg = MCTSConfig(num_simulations=sims, dirichlet_epsilon=0.25 if noise else 0.0, **params)
    evaluator = HashEvaluator(game, seed=sims)
    boards = boards_of(game, positions)
    b = len(positions)
    search = BatchedMCTS(game, cfg, b, np.random.default_rng(0))
    table = noise_table(b, game.num_actions, seed=sims)
    fixed = FixedNoise(table)
    search.rng = fixed
    search.start(np.arange(b), boards)  # every position in its own slot of one batch
    steps = run(search, evaluator)
    assert steps == sims + 1  # the root evaluation, then one simulation per step
    assert search.root_visits().tolist() == [sims] * b
    if noise:
        assert fixed.alphas == [cfg.dirichlet_alpha] and not fixed.tables
    else:
        assert fixed.alphas == []
    for slot, text in enumerate(positions):
        ref = ReferenceMCTS(game, cfg, evaluator)
        root = ref.start(boards[slot], table[slot] if noise else None)
        ref.run()
        assert search.tree.edge_visits[slot, 0].tolist() == root.n.tolist(), text
        assert_same_tree(search.tree, slot, 0, root)
        assert search.tree.next_free[slot] == root.size()
        assert search.root_value(np.array([slot]))[0] == pytest.approx(ref.root_value(), abs=1e-6)
        assert_consistent(search.tree, slot)
        # Noise reached the root priors only, and only legal moves.
        legal = game.legal_mask(boards[slot][None])[0]
        assert not search.tree.prior[slot, 0][~legal].any()
        np.testing.assert_allclose(search.tree.prior[slot, 0].sum(), 1, atol=1e-6)


def test_a_planned_search_runs_its_own_simulations_with_noise_only_where_planned():
    # Playout cap randomisation: per slot, a full search (noise) or a fast one (none).
    cfg = MCTSConfig(num_simulations=30, dirichlet_epsilon=0.5)
    evaluator = HashEvaluator(C4, seed=2)
    boards = boards_of(C4, ["", "44", "", "1234"])
    search = BatchedMCTS(C4, cfg, 4, np.random.default_rng(0))
    slots = np.arange(4)
    search.plan(slots, np.array([30, 8, 8, 30]), np.array([True, False, False, True]))
    search.start(slots, boards)
    run(search, evaluator)
    assert search.root_visits().tolist() == [30, 8, 8, 30] and search.done().all()
    logits, _ = evaluator(C4.observe(boards))
    plain = np.exp(logits - logits.max(1, keepdims=True))
    plain /= plain.sum(1, keepdims=True)
    for slot, noised in enumerate([True, False, False, True]):
        same = np.allclose(search.tree.prior[slot, 0], plain[slot], atol=1e-6)
        assert same != noised, slot
    # Nothing planned: every search is full.
    again = BatchedMCTS(C4, cfg, 2, np.random.default_rng(0))
    again.start(np.arange(2), boards[:2])
    run(again, evaluator)
    assert again.root_visits().tolist() == [30, 30] and again.noise.all()


def test_the_cache_answers_repeated_positions_exactly_and_evaluates_each_new_one_once():
    network = HashEvaluator(C4, seed=5)
    cache = EvaluationCache(network, capacity=4, num_actions=C4.num_actions)
    boards = boards_of(C4, ["", "4", "44", "", "4", "1"])  # two repeats inside the batch
    obs = C4.observe(boards)
    logits, value = cache(obs)
    want_logits, want_value = HashEvaluator(C4, seed=5)(obs)
    np.testing.assert_array_equal(logits, want_logits)
    np.testing.assert_array_equal(value, want_value)
    assert network.rows == 4 and cache.evaluated == 4  # "", "4", "44", "1": once each
    cache(obs[[2, 3]])  # both held: nothing evaluated
    assert network.rows == 4 and cache.asked == 8
    cache(C4.observe(boards_of(C4, ["7", "77"])))  # a full ring: the two oldest ("", "4") go
    cache(obs[[0, 2]])
    assert network.rows == 7  # "" evaluated again, "44" still held
    assert cache.saved == pytest.approx(1 - 7 / 12)


def test_noise_changes_the_root_priors_exactly_as_specified():
    cfg = MCTSConfig(num_simulations=1, dirichlet_epsilon=0.4)
    evaluator = HashEvaluator(C4, seed=1)
    board = C4.position("1111112")[0]  # column 1 is full
    table = noise_table(1, 7, seed=3)
    search = BatchedMCTS(C4, cfg, 1, np.random.default_rng(0))
    search.rng = FixedNoise(table)
    search.start(np.array([0]), board[None])
    search.simulate(evaluator)  # evaluates the root only
    logits, _ = evaluator(C4.observe(board[None]))
    legal = np.arange(7) != 0
    p = np.exp(logits[0][legal] - logits[0][legal].max())
    p /= p.sum()
    noise = table[0][legal] / table[0][legal].sum()
    expected = np.zeros(7)
    expected[legal] = 0.6 * p + 0.4 * noise
    np.testing.assert_allclose(search.tree.prior[0, 0], expected, rtol=1e-5)
    assert search.tree.prior[0, 0, 0] == 0
    assert search.root_visits()[0] == 0  # the root evaluation is not a simulation


# -- tactics and value signs with a uniform evaluator ----------------------------------------
def uniform_search(game, positions, sims=200, **params):
    cfg = MCTSConfig(num_simulations=sims, dirichlet_epsilon=0.0, **params)
    search = BatchedMCTS(game, cfg, len(positions), np.random.default_rng(0))
    search.start(np.arange(len(positions)), boards_of(game, positions))
    run(search, UniformEvaluator(game))
    return search


@pytest.mark.parametrize(
    "game, cases",
    [
        # (position, the one move that wins or saves the game, 1-based)
        (C4, [("112233", 4), ("121212", 1), ("717263", 4), ("716171", 1), ("727364", None)]),
        (TTT, [("1529", 3), ("152", 3), ("5127", 8), ("15397", None)]),
    ],
    ids=["connect4", "tictactoe"],
)
def test_uniform_search_wins_and_blocks_in_one(game, cases):
    positions = [p for p, _ in cases]
    search = uniform_search(game, positions)
    policy = search.visit_policy(np.arange(len(positions)))
    for slot, (position, move) in enumerate(cases):
        if move is not None:
            assert int(policy[slot].argmax()) + 1 == move, (position, policy[slot])


@pytest.mark.parametrize(
    "game, won, lost",
    [
        (C4, ["112233", "121212"], ["727364", "22334"]),  # the opponent threatens two columns
        (TTT, ["1529", "5127"], ["15397"]),  # 15397: X threatens 2 and 4, O to move
    ],
    ids=["connect4", "tictactoe"],
)
def test_root_value_sign(game, won, lost):
    search = uniform_search(game, won + lost)
    values = search.root_value(np.arange(len(won) + len(lost)))
    q = search.root_q(np.arange(len(won) + len(lost)))
    for i, position in enumerate(won):
        assert values[i] > 0.5, (position, values[i])
        assert q[i] == pytest.approx(1.0)  # the winning edge is a sure win
    for i, position in enumerate(lost, start=len(won)):
        assert values[i] < -0.5, (position, values[i])
        assert q[i] < -0.5


def test_a_discounted_search_values_a_win_by_the_plies_to_it():
    # 112233: four in a row is one move away (undiscounted, that edge is worth exactly 1).
    search = uniform_search(C4, ["112233"], discount=0.9)
    assert search.root_q(np.arange(1))[0] == pytest.approx(0.9)  # the terminal seen one ply above


# -- tree reuse --------------------------------------------------------------------------------
def test_reuse_keeps_the_subtree_and_leaves_other_slots_alone():
    cfg = MCTSConfig(num_simulations=40, dirichlet_epsilon=0.0)
    evaluator = HashEvaluator(C4, seed=5)
    positions = ["4453", "135564772"]
    boards = boards_of(C4, positions)
    search = BatchedMCTS(C4, cfg, 2, np.random.default_rng(0))
    search.start(np.arange(2), boards)
    run(search, evaluator)
    t = search.tree

    action = int(t.edge_visits[0, 0].argmax())
    old_child = int(t.children[0, 0, action])
    old_visits_into_child = int(t.edge_visits[0, 0, action])
    old_edges = t.edge_visits[0, old_child].copy(), t.edge_value[0, old_child].copy(), t.prior[0, old_child].copy()
    subtree, stack = [], [old_child]
    while stack:
        node = stack.pop()
        subtree.append(node)
        stack.extend(int(c) for c in t.children[0, node] if c)
    old = {name: getattr(t, name)[0].copy() for name in t.node_arrays()}
    slot1 = {name: getattr(t, name)[1].copy() for name in t.node_arrays()}

    next_board, _, _ = C4.play(boards[:1], np.array([action]))
    search.advance(np.array([0]), np.array([action]), next_board, reuse=True)

    assert t.edge_visits[0, 0].tolist() == old_edges[0].tolist()
    np.testing.assert_array_equal(t.edge_value[0, 0], old_edges[1])
    np.testing.assert_array_equal(t.prior[0, 0], old_edges[2])
    assert np.array_equal(t.boards[0, 0], next_board[0])
    assert t.next_free[0] == len(subtree)
    assert search.root_visits()[0] == t.edge_visits[0, 0].sum() == old_visits_into_child - 1
    assert_consistent(t, 0)
    # Every kept node carries its old data: follow the same action paths in both trees.
    pairs = [(old_child, 0)]
    while pairs:
        o, n = pairs.pop()
        for name in ("boards", "edge_visits", "edge_value", "node_value", "expanded", "terminal", "legal"):
            assert np.array_equal(getattr(t, name)[0, n], old[name][o]), name
        for a in np.flatnonzero(old["children"][o]):
            pairs.append((int(old["children"][o, a]), int(t.children[0, n, a])))
    for name, value in slot1.items():
        assert np.array_equal(getattr(t, name)[1], value), name

    # Topping up takes one step per missing visit: fewer than a fresh search's sims + 1.
    steps = run(search, evaluator)
    assert steps == cfg.num_simulations - (old_visits_into_child - 1) < cfg.num_simulations + 1
    assert search.root_visits().tolist() == [40, 40]
    assert_consistent(t, 0)
    for name, value in slot1.items():
        assert np.array_equal(getattr(t, name)[1], value), name

    # And the topped-up tree is what the reference search grows with reuse.
    ref = ReferenceMCTS(C4, cfg, evaluator)
    ref.start(boards[0])
    ref.run()
    assert ref.advance(action)
    ref.run()
    assert_same_tree(t, 0, 0, ref.root)


def test_reuse_in_several_slots_at_once_with_noise_matches_reference():
    """One `advance` call: two slots keep a subtree (most and second most visited move),
    one plays an unvisited move and starts afresh; noise is mixed into every new root."""
    cfg = MCTSConfig(num_simulations=12, dirichlet_epsilon=0.3)
    evaluator = HashEvaluator(C4, seed=11)
    positions = ["", "4453", "135564772"]
    boards = boards_of(C4, positions)
    first, kept, fresh = noise_table(3, 7, 1), noise_table(2, 7, 2), noise_table(1, 7, 3)
    search = BatchedMCTS(C4, cfg, 3, np.random.default_rng(0))
    search.rng = FixedNoise(first, kept, fresh)
    search.start(np.arange(3), boards)
    run(search, evaluator)
    t = search.tree
    order = [np.argsort(-t.edge_visits[s, 0], kind="stable") for s in range(3)]
    unvisited = np.flatnonzero(t.legal[2, 0] & (t.edge_visits[2, 0] == 0))
    assert len(unvisited), "the test needs an unvisited legal move in slot 2"
    actions = np.array([order[0][0], order[1][1], unvisited[0]])
    next_boards, _, _ = C4.play(boards, actions)
    search.advance(np.arange(3), actions, next_boards, reuse=True)
    assert t.next_free[2] == 1 and not t.expanded[2, 0]  # started afresh
    for s in range(2):
        assert_consistent(t, s)
    steps = run(search, evaluator)
    assert steps == cfg.num_simulations + 1  # slot 2 needs the full search
    assert search.root_visits().tolist() == [12, 12, 12]
    assert not search.rng.tables  # every noise table was used

    noises = [(first[0], kept[0]), (first[1], kept[1]), (first[2], fresh[0])]
    for s in range(3):
        ref = ReferenceMCTS(C4, cfg, evaluator)
        ref.start(boards[s], noises[s][0])
        ref.run()
        assert ref.advance(int(actions[s]), noises[s][1]) == (s < 2)
        ref.run()
        assert_same_tree(t, s, 0, ref.root)
        assert t.next_free[s] == ref.root.size()
        assert_consistent(t, s)


def test_advance_without_reuse_starts_afresh():
    cfg = MCTSConfig(num_simulations=20, dirichlet_epsilon=0.0)
    evaluator = HashEvaluator(TTT)
    search = BatchedMCTS(TTT, cfg, 1, np.random.default_rng(0))
    board = TTT.initial_boards(1)
    search.start(np.array([0]), board)
    run(search, evaluator)
    action = int(search.tree.edge_visits[0, 0].argmax())
    nxt, _, _ = TTT.play(board, np.array([action]))
    search.advance(np.array([0]), np.array([action]), nxt, reuse=False)
    assert search.tree.next_free[0] == 1 and search.root_visits()[0] == 0
    assert run(search, evaluator) == cfg.num_simulations + 1


# -- every [mcts] search option matters ------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [
        {"num_simulations": 30},
        {"c_puct": 4.0},
        {"fpu_reduction": 0.0},
        {"dirichlet_alpha": 0.1},
        {"dirichlet_epsilon": 0.0},
    ],
    ids=lambda c: next(iter(c)),
)
def test_search_options_have_an_effect(change):
    base = dict(num_simulations=20, c_puct=1.5, fpu_reduction=0.25, dirichlet_alpha=1.0, dirichlet_epsilon=0.25)
    positions = ["", "4", "4453", "135564772"]

    def visits(params):
        search = BatchedMCTS(C4, MCTSConfig(**params), len(positions), np.random.default_rng(42))
        search.start(np.arange(len(positions)), boards_of(C4, positions))
        run(search, HashEvaluator(C4, seed=3))
        return search.tree.edge_visits[:, 0].copy()

    assert np.array_equal(visits(base), visits(base))  # deterministic for a seed
    assert not np.array_equal(visits(base), visits({**base, **change}))
