"""Rating games: paired random openings with colours swapped, results that match the
replayed move strings, reproducibility, and the anchors' expected strength order."""

from __future__ import annotations

import numpy as np
import pytest

from services.evaluator.match import (
    GameRecord, anchor_player, model_player, play_against, play_games, random_openings,
)
from shared.config import MCTSConfig
from shared.games import get_game
from shared.inference import UniformEvaluator

C4 = get_game("connect4")
TTT = get_game("tictactoe")


def check_records(game, records: list[GameRecord], opening_plies: int) -> None:
    """Colours alternate, pairs share their opening, and every result is what replaying
    the move string gives."""
    assert [r.a_first for r in records] == [True, False] * (len(records) // 2)
    for first, second in zip(records[::2], records[1::2]):
        assert first.moves[:opening_plies] == second.moves[:opening_plies]
    for r in records:
        assert r.score_a in (0.0, 0.5, 1.0)
        _, done, value = game.position(r.moves)
        assert done
        if value == 0:
            assert r.score_a == 0.5
        else:  # the last mover won: A if A moved on plies of A's parity
            a_moved_last = (len(r.moves) % 2 == 1) == r.a_first
            assert r.score_a == (1.0 if a_moved_last else 0.0)


def test_alphabeta_depth_four_beats_random_in_nearly_every_game():
    records = play_games(C4, anchor_player(C4, "alphabeta-4"), anchor_player(C4, "random", seed=1), 10, seed=0)
    check_records(C4, records, 2)
    assert sum(r.score_a == 1.0 for r in records) >= 18


def test_one_ply_beats_random_most_of_the_time():
    records = play_games(C4, anchor_player(C4, "one-ply", seed=2), anchor_player(C4, "random", seed=3), 10, seed=1)
    check_records(C4, records, 2)
    assert sum(r.score_a for r in records) >= 15


def test_same_seed_same_games_other_seed_other_openings():
    def run(seed):
        return play_games(C4, anchor_player(C4, "random", seed=4), anchor_player(C4, "alphabeta-2"), 8,
                          opening_plies=3, seed=seed)

    first = run(5)
    check_records(C4, first, 3)
    assert first == run(5)
    assert [r.moves[:3] for r in first] != [r.moves[:3] for r in run(6)]
    assert len({r.moves[:3] for r in first}) > 4  # openings differ between pairs


def test_two_deterministic_players_differ_only_by_opening_and_colour():
    a, b = anchor_player(C4, "alphabeta-2"), anchor_player(C4, "alphabeta-1")
    records = play_games(C4, a, b, 6, seed=2)
    check_records(C4, records, 2)
    assert len({r.moves for r in records}) == 12
    # Without an opening, the swapped-colour pair is the same two games every time.
    plain = play_games(C4, a, b, 3, opening_plies=0, seed=2)
    assert {r.moves for r in plain[0::2]} == {plain[0].moves}
    assert {r.moves for r in plain[1::2]} == {plain[1].moves}


def test_model_player_searches_greedily_and_reproducibly():
    # TicTacToe, uniform network: the search alone must still take wins and block.
    model = model_player(TTT, UniformEvaluator(TTT), sims=64, mcts=MCTSConfig())
    records = play_games(TTT, model, anchor_player(TTT, "random", seed=1), 6, seed=3)
    check_records(TTT, records, 2)
    assert sum(r.score_a for r in records) >= 9
    again = play_games(TTT, model, anchor_player(TTT, "random", seed=1), 6, seed=3)
    assert records == again


def test_openings_never_end_the_game_and_cover_the_moves():
    openings = random_openings(TTT, 300, 6, np.random.default_rng(0))
    for moves in openings:
        assert not TTT.position(TTT.format_moves(moves))[1]
    assert set(openings[:, 0].tolist()) == set(range(9))


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="unknown anchor player 'minimax'"):
        anchor_player(C4, "minimax")
    with pytest.raises(ValueError, match="alpha-beta depth must be at least 1"):
        anchor_player(C4, "alphabeta-0")
    player = anchor_player(TTT, "random")
    with pytest.raises(ValueError, match="openings must be at least 1"):
        play_games(TTT, player, player, 0)
    with pytest.raises(ValueError, match="opening_plies must be 0 or more"):
        play_games(TTT, player, player, 1, opening_plies=-1)
    with pytest.raises(ValueError, match="no opponents"):
        play_against(TTT, player, [], 1)
    with pytest.raises(ValueError, match="leaves no move to play"):
        play_games(TTT, player, player, 1, opening_plies=9)


def test_each_player_call_takes_every_game_waiting_for_it():
    # After A's first move in the games it starts, every game waits for the same player.
    sizes = []
    random_a = anchor_player(C4, "random", seed=1)

    def counting(boards):
        sizes.append(len(boards))
        return random_a(boards)

    records = play_games(C4, counting, anchor_player(C4, "random", seed=2), 8, opening_plies=0)
    assert sizes[:2] == [8, 16]
    assert len(sizes) <= max(len(r.moves) for r in records) // 2 + 1


def test_against_several_opponents_at_once_each_gets_its_own_games_and_the_same_openings():
    sizes = []
    ab2 = anchor_player(C4, "alphabeta-2")

    def counting(boards):
        sizes.append(len(boards))
        return ab2(boards)

    opponents = [anchor_player(C4, "random", seed=1), anchor_player(C4, "alphabeta-2"), anchor_player(C4, "one-ply")]
    by_opponent = play_against(C4, counting, opponents, 4, opening_plies=2, seed=8)
    assert [len(records) for records in by_opponent] == [8, 8, 8]
    for records in by_opponent:
        check_records(C4, records, 2)
    assert len({tuple(r.moves[:2] for r in records) for records in by_opponent}) == 1
    # A thinks first at ply 2 of the games it starts (plies 0-1 are the opening), then
    # at plies 3 and 4 of all 24 games in one batch.
    assert sizes[:2] == [12, 24]
    # Separately, the same: alpha-beta and its opponents here are deterministic given seeds.
    alone = play_games(C4, ab2, anchor_player(C4, "alphabeta-2"), 4, opening_plies=2, seed=8)
    assert alone == by_opponent[1]
    assert sum(r.score_a for r in by_opponent[0]) > sum(r.score_a for r in by_opponent[1])
