"""Alpha-beta yardstick: tactics, determinism, and values equal to a brute-force
negamax over the real rules; perfect TicTacToe play checked against exhaustive labels."""

from __future__ import annotations

import numpy as np
import pytest

from services.evaluator.accuracy import score_player, tictactoe_labelled
from services.evaluator.alphabeta import WIN, AlphaBeta, alphabeta_player
from shared.games import get_game

C4 = get_game("connect4")
TTT = get_game("tictactoe")


def board(game, moves: str) -> np.ndarray:
    b, done, _ = game.position(moves)
    assert not done
    return b[None]


def random_positions(game, count: int, max_plies: int, seed: int, min_plies: int = 0) -> np.ndarray:
    """Unfinished positions after `min_plies`..`max_plies` random legal moves."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        b = game.initial_boards(1)
        for _ in range(rng.integers(min_plies, max_plies + 1)):
            b, done, _ = game.play(b, [rng.choice(np.flatnonzero(game.legal_mask(b)[0]))])
            if done[0]:
                break
        else:
            out.append(b[0])
    return np.stack(out)


def brute_force(game, search: AlphaBeta, b: np.ndarray, depth: int, ply: int = 0) -> np.ndarray:
    """Value of every legal move (NaN otherwise) by plain negamax over `game.play`: a
    finished game scores exactly, and at the horizon the side to move wins at once if it
    can, else scores the horizon heuristic."""
    legal = np.flatnonzero(game.legal_mask(b[None])[0])
    after, done, value = game.play(np.repeat(b[None], len(legal), axis=0), legal)
    values = np.full(game.num_actions, np.nan)
    for action, child, over, v in zip(legal, after, done, value):
        if over:
            values[action] = WIN - (ply + 1) if v < 0 else 0
        elif depth > 1:
            values[action] = -np.nanmax(brute_force(game, search, child, depth - 1, ply + 1))
        else:
            values[action] = -leaf_value(game, search, child, ply + 1)
    return values


def leaf_value(game, search: AlphaBeta, b: np.ndarray, ply: int) -> float:
    legal = np.flatnonzero(game.legal_mask(b[None])[0])
    _, done, value = game.play(np.repeat(b[None], len(legal), axis=0), legal)
    if (done & (value < 0)).any():
        return WIN - (ply + 1)
    (mine, occupied), = search.bitboards(b[None])
    theirs = mine ^ occupied
    return search.horizon_score(mine, theirs, search.winning_cells(mine, occupied),
                                search.winning_cells(theirs, occupied))


@pytest.mark.parametrize("game, depths, plies, count", [
    (C4, (1, 2, 3), (0, 30), 12),
    (TTT, (1, 2, 3, 9), (3, 8), 15),  # 3 stones or more: the brute force stays small
])
def test_values_and_best_moves_equal_a_brute_force_negamax(game, depths, plies, count):
    search = AlphaBeta(game)
    for b in random_positions(game, count, plies[1], seed=3, min_plies=plies[0]):
        (mine, occupied), = search.bitboards(b[None])
        for depth in depths:
            expected = brute_force(game, search, b, depth)
            moves, value = search.best_moves(mine, occupied, depth, ties=True)
            assert value == np.nanmax(expected), (game.env_id, depth, b)
            # Search order: the most central first.
            tied = [a for a in search.order if expected[a] == value]
            assert moves == tied
            assert search.best_moves(mine, occupied, depth)[0] == tied[:1]


@pytest.mark.parametrize("depth", range(1, 7))
def test_takes_a_win_in_one_even_at_the_edge_and_while_threatened(depth):
    # First player has three in column 1, the second three in column 7: both threaten.
    assert alphabeta_player(C4, depth)(board(C4, "171717")).tolist() == [0]


@pytest.mark.parametrize("depth", range(1, 7))
def test_blocks_the_opponents_immediate_win(depth):
    # Second player to move; the first threatens a fourth stone in column 1.
    assert alphabeta_player(C4, depth)(board(C4, "17171")).tolist() == [0]


@pytest.mark.parametrize("moves, winning", [("227453366442223343", 4), ("6542541474464166653", 2)])
def test_depth_two_finds_a_win_in_two_that_depth_one_misses(moves, winning):
    search = AlphaBeta(C4)
    (mine, occupied), = search.bitboards(board(C4, moves))
    shallow, shallow_value = search.best_moves(mine, occupied, 1, ties=True)
    assert winning not in shallow and shallow_value < WIN - 40
    for depth in (2, 4, 6):
        # Play it, any reply, win: three plies.
        assert search.best_moves(mine, occupied, depth, ties=True) == ([winning], WIN - 3)
    assert alphabeta_player(C4, 1)(board(C4, moves)).tolist() != [winning]
    assert alphabeta_player(C4, 2)(board(C4, moves)).tolist() == [winning]


def test_same_moves_for_the_same_positions_every_time():
    boards = random_positions(C4, 40, 25, seed=5)
    first = alphabeta_player(C4, 4)(boards)
    assert first.tolist() == alphabeta_player(C4, 4)(boards).tolist()
    assert first.tolist() == alphabeta_player(C4, 4)(boards[::-1])[::-1].tolist()
    assert C4.legal_mask(boards)[np.arange(len(boards)), first].all()


def test_seeded_tie_breaking_picks_among_the_best_moves_reproducibly():
    # Corner, centre: all seven moves draw with perfect play.
    boards = np.repeat(board(TTT, "15"), 60, axis=0)
    picks = alphabeta_player(TTT, 7, np.random.default_rng(7))(boards)
    assert set(picks.tolist()) <= {1, 2, 3, 5, 6, 7, 8} and len(set(picks.tolist())) >= 4
    assert picks.tolist() == alphabeta_player(TTT, 7, np.random.default_rng(7))(boards).tolist()
    assert set(alphabeta_player(TTT, 7)(boards).tolist()) == {1}  # deterministic: the most central


def test_full_depth_tictactoe_plays_perfectly_in_every_position():
    labelled = tictactoe_labelled()
    score = score_player(alphabeta_player(TTT, 9), labelled.boards, labelled.values)
    assert score.positions == 4520
    assert score.optimal == score.positions


def test_unrolled_connect4_line_finder_equals_the_general_one():
    search = AlphaBeta(C4)
    assert search.winning_cells == search._winning_cells_connect4
    rng = np.random.default_rng(0)
    for b in random_positions(C4, 200, 40, seed=9):
        (mine, occupied), = search.bitboards(b[None])
        for stones in (mine, mine ^ occupied, occupied & int(rng.integers(1 << 48))):
            assert search._winning_cells_connect4(stones, occupied) == search._winning_cells_any(stones, occupied)


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="depth must be at least 1"):
        alphabeta_player(C4, 0)
    with pytest.raises(TypeError, match="ConnectGame"):
        AlphaBeta(object())
    full = TTT.position("12356478")[0].copy()
    full[2, 2] = 1  # fill the last cell without a line
    search = AlphaBeta(TTT)
    (mine, occupied), = search.bitboards(full[None])
    with pytest.raises(ValueError, match="no legal move"):
        search.best_moves(mine, occupied, 3)
