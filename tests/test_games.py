"""Game rules: wins in every direction, draws, illegal moves, notation, batched play,
observations; and the 899 solver-annotated Connect4 positions the package ships as real
data."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from shared.games import IllegalMove, get_game
from shared.games.labelled import STAGES, load_labelled

C4 = get_game("connect4")
TTT = get_game("tictactoe")


def naive_has_line(stones: np.ndarray, k: int) -> set[str]:
    """Directions in which `stones` (bool[H, W]) hold k in a row, checked cell by cell."""
    h, w = stones.shape
    found = set()
    for name, (dr, dc) in {"horizontal": (0, 1), "vertical": (1, 0), "diagonal": (1, 1), "anti-diagonal": (1, -1)}.items():
        for r in range(h):
            for c in range(w):
                cells = [(r + dr * i, c + dc * i) for i in range(k)]
                if all(0 <= rr < h and 0 <= cc < w and stones[rr, cc] for rr, cc in cells):
                    found.add(name)
    return found


def assert_won_exactly_at_the_end(game, moves: str, direction: str):
    for i in range(len(moves)):
        board, done, value = game.position(moves[:i])
        assert not done and value == 0.0, f"{moves[:i]!r} is already over"
    board, done, value = game.position(moves)
    assert done and value == -1.0
    # The line is the last mover's, whose stones are -1 from the next side to move's view.
    assert naive_has_line(board == -1, game.k) == {direction}
    assert naive_has_line(board == 1, game.k) == set()


# -- wins and draws ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "moves, direction",
    [
        ("1122334", "horizontal"),  # bottom row, from the left edge
        ("7766554", "horizontal"),  # bottom row, from the right edge
        ("2651374", "horizontal"),
        ("1213131", "vertical"),
        ("12121232", "vertical"),  # by the second player
        ("7676767", "vertical"),  # right edge
        ("46755767716", "diagonal"),
        ("16233241211", "anti-diagonal"),
    ],
)
def test_connect4_wins_in_every_direction(moves, direction):
    assert_won_exactly_at_the_end(C4, moves, direction)


@pytest.mark.parametrize("game, games", [(C4, 300), (TTT, 200)], ids=["connect4", "tictactoe"])
def test_win_detection_matches_a_naive_line_finder(game, games):
    """Random games, every ply checked against a cell-by-cell line search, so wins at
    the edges, corners and top row are covered too."""
    rng = np.random.default_rng(7)
    seen = set()
    for _ in range(games):
        board = game.initial_boards(1)
        moves = []
        while True:
            a = int(rng.choice(np.flatnonzero(game.legal_mask(board)[0])))
            board, done, value = game.play(board, np.array([a]))
            moves.append(a)
            # The mover's stones are now -1: a line exists iff the rules say it won.
            lines = naive_has_line(board[0] == -1, game.k)
            assert bool(lines) == (value[0] == -1.0), game.format_moves(moves)
            assert done[0] == (bool(lines) or len(moves) == game.max_plies), game.format_moves(moves)
            if done[0]:
                seen |= lines
                break
    assert seen == {"horizontal", "vertical", "diagonal", "anti-diagonal"}


DRAW_C4 = "111111222222533333344444455555666667777776"  # columns alternate; starts XXOOXXO


def test_connect4_full_board_draw():
    assert len(DRAW_C4) == 42
    for i in range(42):
        _, done, value = C4.position(DRAW_C4[:i])
        assert not done and value == 0.0
    board, done, value = C4.position(DRAW_C4)
    assert done and value == 0.0
    assert not (board == 0).any()
    assert (board == 1).sum() == (board == -1).sum() == 21
    assert not C4.legal_mask(board[None]).any()


@pytest.mark.parametrize(
    "moves, direction",
    [
        ("14253", "horizontal"),  # X 1 2 3
        ("142596", "horizontal"),  # O 4 5 6: the second player wins
        ("12457", "vertical"),  # X 1 4 7
        ("21538", "vertical"),  # X 2 5 8
        ("12539", "diagonal"),  # X 1 5 9
        ("31527", "anti-diagonal"),  # X 3 5 7
    ],
)
def test_tictactoe_wins(moves, direction):
    assert_won_exactly_at_the_end(TTT, moves, direction)


def test_tictactoe_draw():
    for i in range(9):
        assert not TTT.position("123457698"[:i])[1]
    board, done, value = TTT.position("123457698")
    assert done and value == 0.0 and not (board == 0).any()


def test_value_after_a_win_is_minus_one_for_the_next_side_to_move():
    boards = C4.initial_boards(2)
    for a in (0, 1, 0, 1, 0, 1):
        boards, done, value = C4.play(boards, np.array([a, a]))
        assert not done.any()
    # Slot 0 wins vertically, slot 1 plays elsewhere.
    boards, done, value = C4.play(boards, np.array([0, 3]))
    assert done.tolist() == [True, False]
    assert value.tolist() == [-1.0, 0.0]
    assert value.dtype == np.float32


# -- illegal moves and notation ------------------------------------------------------------
@pytest.mark.parametrize(
    "game, moves, number, why",
    [
        (C4, "1111111", 7, "1 is full or occupied"),  # column 1 is full after six stones
        (C4, "4444444", 7, "4 is full or occupied"),
        (TTT, "55", 2, "5 is full or occupied"),
        (TTT, "1231", 4, "1 is full or occupied"),
        (C4, "48", 2, "'8' is not a move 1..7"),
        (C4, "4a", 2, "'a' is not a move 1..7"),
        (C4, "0", 1, "'0' is not a move 1..7"),
        (C4, "44 4", 3, "' ' is not a move 1..7"),
        (TTT, "10", 2, "'0' is not a move 1..9"),
        (C4, "12121213", 8, "the game is already over"),  # the first player won at move 7
        (TTT, "142536", 6, "the game is already over"),  # X won at move 5
    ],
)
def test_illegal_moves_name_the_move_and_why(game, moves, number, why):
    with pytest.raises(IllegalMove, match=rf"\bmove {number} of {re.escape(repr(moves))}: {re.escape(why)}$"):
        game.position(moves)


@pytest.mark.parametrize("moves", ["48", "4a", "0", "-1", "4.5"])
def test_parse_moves_rejects_malformed_strings(moves):
    with pytest.raises(IllegalMove):
        C4.parse_moves(moves)


@pytest.mark.parametrize("moves", ["4²", "٣"])
def test_parse_moves_rejects_non_ascii_digits(moves):
    with pytest.raises(IllegalMove):
        C4.parse_moves(moves)


def test_play_rejects_a_full_column_in_a_batch():
    board, _, _ = C4.position("111111")
    boards = np.stack([C4.initial_boards(1)[0], board])
    with pytest.raises(IllegalMove):
        C4.play(boards, np.array([0, 0]))
    with pytest.raises(IllegalMove):
        TTT.play(TTT.position("5")[0][None], np.array([4]))


@pytest.mark.parametrize("game, moves", [(C4, ""), (C4, "4453"), (C4, DRAW_C4), (TTT, "123457698"), (TTT, "5")])
def test_notation_round_trip(game, moves):
    actions = game.parse_moves(moves)
    assert all(0 <= a < game.num_actions for a in actions)
    assert game.format_moves(actions) == moves
    assert game.format_moves(np.array(actions, np.int8)) == moves


def test_parse_moves_is_one_based():
    assert C4.parse_moves("1472") == [0, 3, 6, 1]
    assert TTT.parse_moves("91") == [8, 0]
    assert C4.parse_moves(" 44\n") == [3, 3]


# -- batched play and observations -----------------------------------------------------------
@pytest.mark.parametrize("game", [C4, TTT], ids=lambda g: g.env_id)
def test_batched_play_matches_single_games(game):
    rng = np.random.default_rng(123)
    n = 64
    boards = game.initial_boards(n)
    singles = [game.initial_boards(1) for _ in range(n)]
    moves = [[] for _ in range(n)]
    running = np.ones(n, bool)
    results = [None] * n
    while running.any():
        idx = np.flatnonzero(running)
        legal = game.legal_mask(boards[idx])
        assert legal.any(axis=1).all()
        actions = np.array([rng.choice(np.flatnonzero(row)) for row in legal])
        nxt, done, value = game.play(boards[idx], actions)
        boards[idx] = nxt
        for j, (i, a) in enumerate(zip(idx, actions)):
            moves[i].append(int(a))
            single, d, v = game.play(singles[i], np.array([a]))
            singles[i] = single
            assert np.array_equal(single[0], nxt[j])
            assert (bool(d[0]), float(v[0])) == (bool(done[j]), float(value[j]))
            if done[j]:
                running[i] = False
                results[i] = (bool(done[j]), float(value[j]))
    outcomes = set()
    for i in range(n):
        board, done, value = game.position(game.format_moves(moves[i]))
        assert np.array_equal(board, boards[i])
        assert (done, value) == results[i]
        outcomes.add(value)
    assert -1.0 in outcomes  # some games were won (random TicTacToe also draws often)
    if game is TTT:
        assert 0.0 in outcomes


def test_boards_are_side_to_move_relative():
    board, _, _ = C4.position("4")
    assert board[0, 3] == -1 and np.count_nonzero(board) == 1
    obs = C4.observe(board[None])
    assert obs.shape == (1, 2, 6, 7) and obs.dtype == np.uint8
    assert obs[0, 0].sum() == 0  # the side to move has no stones yet
    assert obs[0, 1, 0, 3] == 1 and obs[0, 1].sum() == 1  # it sees the stone as "theirs"
    board, _, _ = C4.position("44")
    obs = C4.observe(board[None])[0]
    assert obs[0, 0, 3] == 1 and obs[1, 1, 3] == 1  # own stone at the bottom, theirs above
    assert obs.sum() == 2
    board, _, _ = TTT.position("15")
    obs = TTT.observe(board[None])[0]
    assert obs[0, 0, 0] == 1 and obs[1, 1, 1] == 1 and obs.sum() == 2


def test_mirror_actions_match_a_mirrored_board():
    assert C4.mirror_actions().tolist() == [6, 5, 4, 3, 2, 1, 0]
    assert TTT.mirror_actions().tolist() == [2, 1, 0, 5, 4, 3, 8, 7, 6]
    for game, moves in ((C4, "4453127"), (TTT, "1593")):
        actions = game.parse_moves(moves)
        perm = game.mirror_actions()
        assert sorted(perm.tolist()) == list(range(game.num_actions))
        mirrored = game.format_moves([perm[a] for a in actions])
        a, _, _ = game.position(moves)
        b, _, _ = game.position(mirrored)
        assert np.array_equal(a[:, ::-1], b)


# -- real data: solver-annotated Connect4 positions ------------------------------------------
ALL = [load_labelled(stage) for stage in STAGES]
MOVES = [m for p in ALL for m in p.moves]
VALUES = np.concatenate([p.values for p in ALL])  # NaN: column full


def test_solver_positions_parse_and_legal_moves_match():
    assert len(MOVES) == 899  # 299 + 300 + 300 lines
    boards = []
    for moves, values in zip(MOVES, VALUES):
        board, done, value = C4.position(moves)
        assert not done and value == 0.0, moves
        assert C4.legal_mask(board[None])[0].tolist() == (~np.isnan(values)).tolist(), moves
        # The side to move has as many stones as the opponent, or one fewer.
        assert (board == -1).sum() - (board == 1).sum() == len(moves) % 2, moves
        boards.append(board)
    # The batched legal mask agrees on all of them at once.
    assert (C4.legal_mask(np.stack(boards)) == ~np.isnan(VALUES)).all()


def test_solver_positions_agree_with_win_detection():
    """The solver's values encode immediate wins exactly: the side to move never has
    one, and after column K the opponent can win at once iff
    `sK == -(22 - opponent stones when it wins)`. That exercises win detection in every
    direction on real positions."""
    threats = 0
    for moves, values in zip(MOVES, VALUES):
        board, _, _ = C4.position(moves)
        stones_after_reply = len(moves) + 2
        losing_now = -(22 - math.ceil(stones_after_reply / 2))
        cols = np.flatnonzero(~np.isnan(values))
        after, done, value = C4.play(np.repeat(board[None], len(cols), 0), cols)
        assert not done.any(), moves  # no immediate win, and no board fills up
        for j, k in enumerate(cols):
            legal = np.flatnonzero(C4.legal_mask(after[j:j + 1])[0])
            _, _, reply = C4.play(np.repeat(after[j:j + 1], len(legal), 0), legal)
            opponent_wins = bool((reply == -1.0).any())
            assert opponent_wins == (values[k] == losing_now), (moves, k + 1, values)
            threats += opponent_wins
    assert threats > 100  # the data really contains many of them
