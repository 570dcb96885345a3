"""The self-play loop: complete games, sound training targets, every [mcts] key honoured."""

from __future__ import annotations

import numpy as np

from services.actor.selfplay import SelfPlay, choose_actions
from shared.config import MCTSConfig
from shared.games import get_game
from shared.inference import UniformEvaluator

TTT = get_game("tictactoe")


def play(cfg: MCTSConfig, games: int = 6, parallel: int = 4, seed: int = 0):
    sp = SelfPlay(TTT, cfg, UniformEvaluator(TTT), num_games=parallel, max_games=games, seed=seed)
    finished = []
    while sp.running:
        finished += sp.step()
    return sp, finished


def test_games_run_to_completion_with_sound_targets():
    sp, finished = play(MCTSConfig(num_simulations=16))
    assert len(finished) == 6 and sp.running == 0
    assert len({bytes(g.transitions.game_id[0]) for g in finished}) == 6
    for g in finished:
        t = g.transitions
        n = len(t)
        assert t.ply.tolist() == list(range(n)) and len(g.moves) == n
        assert (t.game_id == t.game_id[0]).all()
        np.testing.assert_allclose(t.policy.sum(axis=1), 1, atol=1e-6)
        assert not (t.policy[~t.legal_mask] > 0).any()
        # Values alternate, and the last mover's result matches the rules.
        assert (t.value[1:] == -t.value[:-1]).all()
        _, done, value = TTT.position(g.moves)
        assert done
        assert t.value[-1] == (1.0 if value == -1.0 else 0.0)
        assert g.outcome == t.value[0]
        # Observations are the positions actually played.
        for ply in (0, n - 1):
            board = TTT.position(g.moves[:ply])[0]
            assert np.array_equal(t.observation[ply], TTT.observe(board[None])[0])
        assert (t.model_version == 0).all()


def test_greedy_play_takes_the_most_visited_move():
    policy = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4]], np.float32)
    rng = np.random.default_rng(0)
    assert choose_actions(policy, np.zeros(2), rng).tolist() == [1, 2]
    # With temperature 1 the choices spread out over every move with visits.
    picks = np.array([choose_actions(policy[:1], np.ones(1), rng)[0] for _ in range(2000)])
    assert set(picks.tolist()) == {0, 1, 2}
    assert abs((picks == 1).mean() - 0.5) < 0.05


def test_temperature_schedule_is_honoured():
    greedy = MCTSConfig(num_simulations=16, temp_threshold=0, final_temperature=0.0, dirichlet_epsilon=0.0)
    _, a = play(greedy, seed=1)
    _, b = play(greedy, seed=2)
    # Noise-free greedy play from the empty board: the opening move is the same in every game.
    assert len({g.moves[0] for g in a + b}) == 1
    exploring = MCTSConfig(num_simulations=16, temp_threshold=9, temperature=1.0)
    _, c = play(exploring, games=12, parallel=6)
    assert len({g.moves[:2] for g in c}) > 1


def test_tree_reuse_saves_simulations():
    with_reuse, _ = play(MCTSConfig(num_simulations=32, tree_reuse=True), seed=3)
    without, _ = play(MCTSConfig(num_simulations=32, tree_reuse=False), seed=3)
    per_move = lambda sp: sp.stats.simulations / sp.stats.positions
    assert per_move(without) >= 32
    assert per_move(with_reuse) < per_move(without) * 0.9


def test_resignation_ends_hopeless_games():
    cfg = MCTSConfig(num_simulations=32, resign_enabled=True, resign_threshold=-0.05)
    _, finished = play(cfg, games=12, parallel=6)
    resigned = [g for g in finished if g.resigned]
    assert resigned
    for g in resigned:
        assert g.transitions.value[-1] == -1.0  # the side that resigned lost
        assert not TTT.position(g.moves)[1]  # the game was not over on the board
        assert len(g.moves) == len(g.transitions) - 1
    _, never = play(MCTSConfig(num_simulations=32, resign_enabled=False), games=12, parallel=6)
    assert not any(g.resigned for g in never)


def test_model_version_is_recorded_and_trees_are_not_reused_across_models():
    class Versioned(UniformEvaluator):
        def __init__(self, game, version):
            super().__init__(game)
            self.version = version

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
