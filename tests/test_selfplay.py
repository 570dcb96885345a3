"""The self-play loop: complete games, sound training targets, every [mcts] option that
shapes play, model versions across a hot swap; and how a move is drawn from a policy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from services.actor.selfplay import SelfPlay, choose_actions
from shared.config import MCTSConfig
from shared.games import get_game
from shared.inference import UniformEvaluator
from helpers import HashEvaluator, assert_same_rows

C4 = get_game("connect4")
TTT = get_game("tictactoe")


def selfplay(cfg: MCTSConfig, *, games=6, parallel=4, seed=0, game=TTT):
    sp = SelfPlay(game, cfg, UniformEvaluator(game), num_games=parallel, max_games=games, seed=seed)
    finished = []
    for _ in range(100_000):
        if not sp.running:
            break
        finished += sp.step()
    assert sp.running == 0
    return sp, finished


def check_game(game, g):
    t = g.transitions
    n = len(t)
    assert t.ply.tolist() == list(range(n))
    assert (t.game_id == t.game_id[0]).all()
    np.testing.assert_allclose(t.policy.sum(axis=1), 1, atol=1e-6)
    assert not t.policy[~t.legal_mask].any()
    assert np.all(np.abs(t.value) <= 1)
    assert (t.value[1:] == -t.value[:-1]).all()
    assert g.outcome == t.value[0]
    played = len(g.moves)
    assert played == (n - 1 if g.resigned else n)
    for ply in range(n):
        board, done, _ = game.position(g.moves[:ply])
        assert not done
        assert np.array_equal(t.observation[ply], game.observe(board[None])[0]), ply
        assert t.legal_mask[ply].tolist() == game.legal_mask(board[None])[0].tolist()
        if ply < played:
            assert t.policy[ply, game.parse_moves(g.moves)[ply]] > 0  # a move that was searched
    board, done, value = game.position(g.moves)
    if g.resigned:
        assert not done and t.value[-1] == -1.0
    else:
        assert done
        # value is the next side's view: -1 when the last mover won.
        assert t.value[-1] == (1.0 if value == -1.0 else 0.0)


def test_a_discount_shrinks_each_value_target_by_the_plies_to_the_end():
    _, finished = selfplay(MCTSConfig(num_simulations=16, discount=0.9), games=8)
    assert any(g.outcome != 0 for g in finished)
    for g in finished:
        n = len(g.transitions)
        ply = np.arange(n)
        # The result from each side to move's view, worth 0.9 ** (plies to the end).
        expected = g.outcome * np.where(ply % 2 == 0, 1.0, -1.0) * 0.9 ** (n - ply)
        np.testing.assert_allclose(g.transitions.value, expected, rtol=1e-6)
        assert g.outcome in (-1.0, 0.0, 1.0)  # the outcome itself is not discounted


def test_the_search_value_is_the_roots_value_from_the_side_to_move():
    # The uniform evaluator knows nothing but the rules: a position with a winning move
    # is seen as won only by the search, and only from the mover's side.
    cfg = MCTSConfig(num_simulations=64, tree_reuse=False)
    _, finished = selfplay(cfg, games=40, parallel=8, seed=3)
    won = [g.transitions for g in finished if not g.resigned and g.transitions.value[-1] == 1.0]
    assert len(won) > 10
    for t in won:
        assert np.all(np.abs(t.search_value) <= 1)
        assert t.search_value[-1] > 0.5  # the winner's last move: the search saw the win
    assert any(t.search_value[0] != t.search_value[1] for t in won)  # one value per position


def test_playout_cap_randomisation_marks_fast_searches_as_value_only():
    cfg = MCTSConfig(num_simulations=32, full_search_fraction=0.25, fast_simulations=6, tree_reuse=False)
    sp, finished = selfplay(cfg, games=60, parallel=12, seed=4)
    weights = np.concatenate([g.transitions.policy_weight for g in finished])
    assert set(weights.tolist()) == {0.0, 1.0}
    assert 0.15 < weights.mean() < 0.35  # a quarter full, drawn per move
    for g in finished:
        check_game(TTT, g)
        # Without tree reuse each search is exactly its cap: a fast one is visibly coarse.
        visits = g.transitions.policy * np.where(g.transitions.policy_weight == 1, 32, 6)[:, None]
        np.testing.assert_allclose(visits, np.round(visits), atol=1e-4)
    assert sp.stats.simulations < 0.5 * len(weights) * 32  # far fewer simulations than all full
    full = selfplay(MCTSConfig(num_simulations=32, tree_reuse=False), games=10, parallel=4)[1]
    assert all((g.transitions.policy_weight == 1).all() for g in full)  # the default: all full


def test_an_evaluation_cache_changes_nothing_but_the_work():
    cfg = MCTSConfig(num_simulations=24)
    played = {}
    for cache in (0, 500):
        network = HashEvaluator(C4, seed=7)
        network.version = 1  # a model (before the first one self-play has nothing to cache)
        sp = SelfPlay(C4, cfg, network, num_games=6, max_games=12, seed=1, cache_positions=cache)
        finished = []
        while sp.running:
            finished += sp.step()
        played[cache] = (finished, network.rows, sp.stats)
    (plain, plain_rows, _), (cached, cached_rows, stats) = played[0], played[500]
    assert [g.moves for g in cached] == [g.moves for g in plain]  # the same games, move for move
    for a, b in zip(cached, plain):  # and the same rows (but for the games' fresh ids)
        assert_same_rows(dataclasses.replace(a.transitions, game_id=b.transitions.game_id), b.transitions)
    assert cached_rows < 0.9 * plain_rows  # while the network evaluated fewer positions
    assert stats.evaluated == cached_rows < stats.evaluations == plain_rows
    uniform = SelfPlay(C4, cfg, UniformEvaluator(C4), num_games=2, max_games=2, seed=1, cache_positions=500)
    while uniform.running:
        uniform.step()
    assert uniform.stats.evaluated == uniform.stats.evaluations  # nothing cached before a model


def test_selfplay_runs_to_completion_with_sound_targets():
    cfg = MCTSConfig(num_simulations=16)
    sp, finished = selfplay(cfg)
    assert len(finished) == 6
    assert all(not g.resigned for g in finished)
    ids = [bytes(g.transitions.game_id[0]) for g in finished]
    assert len(set(ids)) == 6
    for g in finished:
        check_game(TTT, g)
    assert sp.stats.games == 6
    assert sp.stats.positions == sum(len(g.transitions) for g in finished)
    assert all((g.transitions.model_version == 0).all() for g in finished)  # the uniform evaluator's
    # A fixed seed plays the same games again.
    _, again = selfplay(cfg)
    assert [g.moves for g in again] == [g.moves for g in finished]


def test_selfplay_connect4_smoke():
    cfg = MCTSConfig(num_simulations=4)
    _, finished = selfplay(cfg, games=2, parallel=2, game=C4)
    assert len(finished) == 2
    for g in finished:
        check_game(C4, g)


def is_greedy(g, plies) -> list[bool]:
    t = g.transitions
    actions = TTT.parse_moves(g.moves)
    return [bool(t.policy[p, actions[p]] == t.policy[p].max()) for p in plies if p < len(actions)]


def test_temperature_zero_plays_the_most_visited_move():
    cfg = MCTSConfig(num_simulations=16, temp_threshold=0, final_temperature=0.0)
    _, finished = selfplay(cfg, games=12)
    assert all(all(is_greedy(g, range(9))) for g in finished)
    # The same games with temperature 1 throughout do not always take the top move.
    cfg = MCTSConfig(num_simulations=16, temp_threshold=9, temperature=1.0, final_temperature=0.0)
    _, finished = selfplay(cfg, games=12)
    assert not all(all(is_greedy(g, range(9))) for g in finished)
    # final_temperature applies after temp_threshold plies.
    cfg = MCTSConfig(num_simulations=16, temp_threshold=0, final_temperature=1.0)
    _, finished = selfplay(cfg, games=12)
    assert not all(all(is_greedy(g, range(9))) for g in finished)


def test_temp_threshold_splits_sampled_and_greedy_plies():
    cfg = MCTSConfig(num_simulations=16, temp_threshold=2, temperature=1.0, final_temperature=0.0)
    _, finished = selfplay(cfg, games=16)
    assert all(all(is_greedy(g, range(2, 9))) for g in finished)
    assert not all(all(is_greedy(g, range(2))) for g in finished)


@pytest.mark.parametrize("noise", [0.0, 0.25])
def test_tree_reuse_changes_the_simulations_per_move(noise):
    sims = 16
    counts = {}
    for reuse in (False, True):
        cfg = MCTSConfig(num_simulations=sims, tree_reuse=reuse, dirichlet_epsilon=noise)
        sp, finished = selfplay(cfg, games=8)
        for g in finished:
            check_game(TTT, g)
            visits = g.transitions.policy * sims  # every search ends with exactly `sims` root visits
            np.testing.assert_allclose(visits, np.round(visits), atol=1e-4)
        # With reuse, every move after a game's first starts from the played child, which
        # saves exactly its edge visits v (it has v - 1 root visits and needs no root
        # evaluation).
        saved = 0
        if reuse:
            for g in finished:
                t, actions = g.transitions, TTT.parse_moves(g.moves)
                saved += sum(round(float(t.policy[p, actions[p]]) * sims) for p in range(len(t) - 1))
        counts[reuse] = (sp.stats.simulations, sp.stats.positions, saved)
    sims_fresh, positions_fresh, _ = counts[False]
    assert sims_fresh == positions_fresh * (sims + 1)  # root evaluation + sims, every move
    sims_reuse, positions_reuse, saved = counts[True]
    assert saved > positions_reuse
    assert sims_reuse == positions_reuse * (sims + 1) - saved


def test_resignation():
    cfg = MCTSConfig(num_simulations=16, resign_enabled=True, resign_threshold=0.0)
    _, finished = selfplay(cfg, games=16)
    resigned = [g for g in finished if g.resigned]
    assert resigned, "no game resigned"
    for g in finished:
        check_game(TTT, g)
    for g in resigned:
        assert g.transitions.value[-1] == -1.0
    # Switched off (or at the most negative threshold), nobody resigns.
    for cfg in (MCTSConfig(num_simulations=16, resign_enabled=False, resign_threshold=0.0),
                MCTSConfig(num_simulations=16, resign_enabled=True, resign_threshold=-1.0)):
        _, finished = selfplay(cfg, games=16)
        assert not any(g.resigned for g in finished)


class Versioned(UniformEvaluator):
    """A uniform model that says it is `version` (to see hot swaps)."""

    def __init__(self, game, version):
        super().__init__(game)
        self.version = version


def test_model_version_is_recorded_across_a_model_swap():
    sp = SelfPlay(TTT, MCTSConfig(num_simulations=8), Versioned(TTT, 3), num_games=2, max_games=4, seed=0)
    finished = []
    swapped = False
    while sp.running:
        finished += sp.step()
        if sp.stats.positions >= 2 and not swapped:
            sp.evaluator, swapped = Versioned(TTT, 4), True
    versions = np.concatenate([g.transitions.model_version for g in finished])
    assert set(versions.tolist()) == {3, 4}
    for g in finished:  # within a game, the version never goes back
        assert (np.diff(g.transitions.model_version) >= 0).all()


@pytest.mark.parametrize("new_version", [3, 4])
def test_a_tree_is_reused_only_by_the_model_that_built_it(new_version):
    sp = SelfPlay(TTT, MCTSConfig(num_simulations=8), Versioned(TTT, 3), num_games=1, seed=0)
    while sp.stats.positions < 1:
        sp.step()
    sp.evaluator = Versioned(TTT, new_version)
    while sp.stats.positions < 2:  # the second move, searched on the tree model 3 built
        sp.step()
    # The third move's search starts from the second move's subtree, or afresh.
    assert (sp.search.tree.next_free[0] > 1) == (new_version == 3)


# -- drawing a move from a policy ----------------------------------------------------------------
def test_choose_actions_greedy_and_sampled():
    policy = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4]], np.float32)
    rng = np.random.default_rng(0)
    assert choose_actions(policy, np.zeros(2), rng).tolist() == [1, 2]
    # With temperature 1 the choices spread over every move with visits, in proportion.
    picks = np.array([choose_actions(policy[:1], np.ones(1), rng)[0] for _ in range(2000)])
    assert set(picks.tolist()) == {0, 1, 2}
    assert abs((picks == 1).mean() - 0.5) < 0.05


class FixedDraw:
    """Stands in for the self-play rng: every uniform draw is `u`."""

    def __init__(self, u: float):
        self.u = u

    def random(self, size=None):
        return np.full(size, self.u)


def visit_fractions(*visits: int) -> np.ndarray:
    """One row of a search's policy target, as `BatchedMCTS.visit_policy` makes it."""
    v = np.array([visits], np.float32)
    return v / v.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(
    "visits, temperature, u, expected",
    [
        # The normalised row sums to 1 - 2.2e-16 in float64 (temperatures come as float64,
        # as SelfPlay passes them): the highest draw lies beyond that sum.
        ((168, 211, 211, 210, 0, 0, 0), np.float64(1.0), 1 - 2 ** -53, 3),
        # In float32 the shortfall is 1e-7.
        ((61, 54, 44, 41, 0, 0, 0), np.float32(1.0), 0.99999999, 3),
        ((168, 211, 211, 210, 0, 0, 0), np.float32(0.5), 0.99999999, 3),
        # A draw of exactly 0 must not take an unvisited first column.
        ((0, 120, 80, 0, 0, 0, 0), np.float64(1.0), 0.0, 1),
        # A tiny temperature underflows every weight to 0 unless taken relative to the best.
        ((0, 120, 80, 0, 0, 0, 0), np.float64(0.0001), 0.5, 1),
    ],
)
def test_a_sampled_move_always_has_visits(visits, temperature, u, expected):
    policy = visit_fractions(*visits)
    action = int(choose_actions(policy, np.array([temperature]), FixedDraw(u))[0])
    assert policy[0, action] > 0, action
    assert action == expected
    board, _, _ = C4.position("777777")  # column 7 full: playing it would raise IllegalMove
    C4.play(board[None], np.array([action]))
