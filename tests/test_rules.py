"""Game rules: wins in every direction, draws, illegal moves, notation, batched == single."""

from pathlib import Path

import numpy as np
import pytest

from shared.games import IllegalMove, get_game

C4 = get_game("connect4")
TTT = get_game("tictactoe")
POSITIONS = Path(__file__).resolve().parents[2] / "shared" / "c4-positions"


@pytest.mark.parametrize("moves", [
    "1122334",      # horizontal, bottom row
    "1212121",      # vertical
    "12233434474",  # diagonal up-right
    "76655454414",  # diagonal up-left (the mirror image)
    "12121232",     # vertical, by the second player
])
def test_connect4_wins_on_the_winning_move_only(moves):
    *before, _ = moves
    board, done, _ = C4.position("".join(before))
    assert not done
    board, done, value = C4.position(moves)
    assert done and value == -1.0  # the side to move now has lost


def test_connect4_draw_on_a_full_board():
    # Column pairs filled in alternating patterns never line up four.
    moves = "".join(["121212", "212121", "343434", "434343", "565656", "656565", "777777"])
    board, done, value = C4.position(moves)
    assert done and value == 0.0 and not np.any(board == 0)


@pytest.mark.parametrize("moves", ["14253", "41526", "12437", "12539", "31527"])
def test_tictactoe_lines(moves):
    _, done, value = TTT.position(moves[:-1])
    assert not done
    _, done, value = TTT.position(moves)
    assert done and value == -1.0


def test_tictactoe_draw():
    _, done, value = TTT.position("152384796")
    assert done and value == 0.0


@pytest.mark.parametrize("game, moves, words", [
    (C4, "1111111", "move 7 of '1111111': 1 is full"),
    (C4, "48", "'8' is not a move 1..7"),
    (C4, "4a", "move 2 of '4a'"),
    (C4, "0", "'0' is not a move"),
    (C4, "11223344", "move 8 of '11223344': the game is already over"),
    (TTT, "11", "move 2 of '11': 1 is full or occupied"),
])
def test_illegal_moves_are_named(game, moves, words):
    with pytest.raises(IllegalMove) as err:
        game.position(moves)
    assert words in str(err.value)


def test_playing_a_full_column_in_a_batch_raises():
    board, _, _ = C4.position("111111")
    with pytest.raises(IllegalMove):
        C4.play(board[None], np.array([0]))


@pytest.mark.parametrize("game, text", [(C4, "4453"), (C4, "1234567"), (TTT, "5193")])
def test_notation_round_trip(game, text):
    assert game.format_moves(game.parse_moves(text)) == text


def test_observation_is_side_to_move_relative():
    board, _, _ = C4.position("4")
    obs = C4.observe(board[None])[0]
    assert obs[0].sum() == 0 and obs[1][0, 3] == 1  # the stone is "theirs", bottom of column 4
    board, _, _ = C4.position("44")
    obs = C4.observe(board[None])[0]
    assert obs[0][0, 3] == 1 and obs[1][1, 3] == 1


@pytest.mark.parametrize("game", [C4, TTT])
def test_batched_play_agrees_with_single_boards(game):
    rng = np.random.default_rng(1)
    n = 64
    boards = game.initial_boards(n)
    live = np.ones(n, bool)
    history = [[] for _ in range(n)]
    while live.any():
        rows = np.flatnonzero(live)
        legal = game.legal_mask(boards[rows])
        actions = (rng.random(legal.shape) * legal).argmax(axis=1)
        after, done, value = game.play(boards[rows], actions)
        boards[rows] = after
        for r, a, d, v in zip(rows, actions, done, value):
            history[r].append(int(a))
            single, sdone, svalue = game.position(game.format_moves(history[r]))
            assert np.array_equal(single, boards[r]) and sdone == d and svalue == v
        live[rows[done]] = False


def test_mirror_permutation():
    assert C4.mirror_actions().tolist() == [6, 5, 4, 3, 2, 1, 0]
    assert TTT.mirror_actions().tolist() == [2, 1, 0, 5, 4, 3, 8, 7, 6]


@pytest.mark.skipif(not POSITIONS.is_dir(), reason="solver positions live in ../shared/c4-positions (outside the repo)")
def test_solver_positions_parse_with_the_right_legal_moves():
    count = 0
    for path in sorted(POSITIONS.glob("c4_*.txt")):
        for line in path.read_text().splitlines():
            fields = line.split("\t")
            board, done, _ = C4.position(fields[0])
            assert not done, fields[0]
            legal = C4.legal_mask(board[None])[0]
            assert legal.tolist() == [v != "x" for v in fields[2:9]], fields[0]
            count += 1
    assert count == 899
