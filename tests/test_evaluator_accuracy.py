"""Move accuracy against exact move values: optimal and outcome-keeping choices on
hand-made rows, and the exhaustively solved TicTacToe positions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.evaluator.accuracy import score_moves, score_player, tictactoe_labelled
from services.evaluator.measure import Accuracy
from shared.games import get_game

NAN = math.nan
TTT = get_game("tictactoe")

# Rows in the solver sets' convention: > 0 win (faster is larger), 0 draw, < 0 loss.
WON = [3, 1, -2, NAN, 3, -5, 0]  # best 3 in columns 0 and 4 (a tie); column 3 full
DRAWN = [0, -1, 0, -4, NAN, NAN, -2]  # best 0 in columns 0 and 2
LOST = [-3, -1, -5, -1, -2, NAN, -9]  # best -1; every move keeps the loss


def score(rows, chosen):
    return score_moves(np.array(rows, np.float32), np.array(chosen))


def test_optimal_includes_ties_and_keeps_counts_only_won_and_drawn_positions():
    result = score([WON, WON, WON, DRAWN, DRAWN, LOST, LOST],
                   #  tie  keeps   loses  tie  loses opt  not optimal
                   [4, 1, 2, 2, 1, 3, 0])
    assert (result.positions, result.optimal) == (7, 3)  # WON 4, DRAWN 2, LOST 3 (ties)
    assert (result.decisive, result.keeps) == (5, 3)  # WON 4 and 1 keep the win, DRAWN 2 the draw
    assert result.optimal_pct == pytest.approx(300 / 7)
    assert result.keeps_pct == pytest.approx(60.0)


def test_full_columns_are_neither_optimal_nor_keeping():
    result = score([WON, DRAWN, DRAWN], [3, 4, 5])
    assert (result.optimal, result.keeps, result.decisive) == (0, 0, 3)


def test_a_winning_move_that_is_not_the_fastest_keeps_but_is_not_optimal():
    result = score([WON], [1])
    assert (result.optimal, result.keeps) == (0, 1)


def test_binomial_standard_errors():
    result = score([WON] * 4, [0, 0, 0, 2])  # 3 of 4 optimal and keeping
    se = 100 * math.sqrt(0.75 * 0.25 / 4)
    assert result.optimal_se == pytest.approx(se) and result.keeps_se == pytest.approx(se)
    assert score([WON] * 4, [0, 4, 0, 4]).optimal_se == 0.0
    only_lost = score([LOST], [1])
    assert only_lost.decisive == 0 and math.isnan(only_lost.keeps_pct) and math.isnan(only_lost.keeps_se)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="outside 0..6"):
        score([WON, WON], [0, 7])
    with pytest.raises(ValueError, match="position 1 has no legal move"):
        score([WON, [NAN] * 7], [0, 0])
    with pytest.raises(ValueError, match=r"values must be \[n, A\]"):
        score([WON], [0, 1])
    with pytest.raises(ValueError, match="integer actions"):
        score_moves(np.array([WON], np.float32), np.array([0.0]))


def test_tictactoe_labels_cover_every_unfinished_position_once():
    labelled = tictactoe_labelled()
    assert len(labelled.moves) == len(labelled.boards) == len(labelled.values) == 4520
    assert len({b.tobytes() for b in labelled.boards}) == 4520
    for moves, board in zip(labelled.moves[::97], labelled.boards[::97]):
        replayed, done, _ = TTT.position(moves)
        assert not done and (replayed == board).all()
    # Occupied cells are NaN, free cells valued -1, 0 or 1.
    free = labelled.boards.reshape(-1, 9) == 0
    assert (np.isnan(labelled.values) == ~free).all()
    assert set(np.unique(labelled.values[free])) == {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("moves, values", [
    ("", [0] * 9),  # every first move draws
    ("1", [NAN, -1, -1, -1, 0, -1, -1, -1, -1]),  # answer a corner in the centre, or lose
    ("5", [0, -1, 0, -1, NAN, -1, 0, -1, 0]),  # answer the centre in a corner, or lose
    ("12", [NAN, NAN, 0, 1, 1, 0, 1, 0, 0]),  # an edge reply to a corner loses
    ("159", [NAN, 0, -1, 0, NAN, 0, -1, 0, NAN]),  # opposite corners: only an edge draws
    ("1425", [NAN, NAN, 1, NAN, NAN, 0, -1, -1, -1]),  # win at 3, else block at 6, else lose
])
def test_known_tictactoe_positions(moves, values):
    labelled = tictactoe_labelled()
    board = TTT.position(moves)[0]
    row = np.flatnonzero((labelled.boards == board).all(axis=(1, 2)))
    assert len(row) == 1
    np.testing.assert_array_equal(labelled.values[row[0]], np.array(values, np.float32))


def test_scoring_a_player_on_the_tictactoe_labels():
    labelled = tictactoe_labelled()
    first_free = score_player(lambda b: TTT.legal_mask(b).argmax(axis=1), labelled.boards, labelled.values)
    assert first_free.positions == 4520
    assert 0 < first_free.optimal < 4520 and 0 < first_free.keeps < first_free.decisive
    # Won or drawn (best >= 0) over all positions, recomputed directly.
    assert first_free.decisive == int((np.nanmax(labelled.values, axis=1) >= 0).sum())


def test_an_accuracy_reports_optimal_and_keeping_percentages_per_stage():
    won, mixed, half = score([WON, WON], [0, 1]), score([WON, LOST], [1, 0]), score([WON, DRAWN], [1, 1])
    accuracy = Accuracy(policy={"early": won, "late": mixed}, search={"early": half, "late": won})
    assert accuracy.optimal_pct("policy") == {"early": 50.0, "late": 0.0}
    assert accuracy.keeps_pct("policy") == {"early": 100.0, "late": 100.0}  # a lost row does not count
    assert accuracy.optimal_pct("search") == {"early": 0.0, "late": 50.0}
    assert accuracy.keeps_pct("search") == {"early": 50.0, "late": 100.0}  # the slower win keeps, the draw is lost
