"""The solver-labelled Connect4 positions shipped in the package: every stage loads with
the values the files hold, the boards are the positions the rules reach, a malformed
file is named line by line, and a built wheel carries the data."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from shared.games import get_game
from shared.games.labelled import STAGES, LabelledDataError, load_labelled, parse_labelled

C4 = get_game("connect4")
REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "shared" / "games" / "data"
# From the data's README: positions and stones on the board per stage.
SIZES = {"early": (299, 6, 14), "mid": (300, 15, 22), "late": (300, 23, 30)}


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_loads_what_its_file_holds(stage):
    positions = load_labelled(stage)
    count, fewest, most = SIZES[stage]
    assert len(positions) == count
    assert positions.boards.shape == (count, 6, 7) and positions.boards.dtype == np.int8
    assert positions.values.shape == (count, 7) and positions.values.dtype == np.float32
    assert positions.score.shape == (count,) and positions.score.dtype.kind == "i"
    stones = np.count_nonzero(positions.boards, axis=(1, 2))
    assert stones.tolist() == [len(m) for m in positions.moves]
    assert fewest == stones.min() and stones.max() == most
    # The file read naively, field by field, says the same.
    rows = [line.split("\t") for line in (DATA / f"c4_{stage}.txt").read_text().splitlines()]
    assert positions.moves == [r[0] for r in rows]
    assert positions.score.tolist() == [int(r[1]) for r in rows]
    expected = [[np.nan if v == "x" else float(v) for v in r[2:9]] for r in rows]
    np.testing.assert_array_equal(positions.values, np.array(expected, np.float32))
    assert positions.source == [r[9] for r in rows]
    assert set(positions.source) <= {"random", "heuristic", "guided-0.5", "guided-0.75", "guided-0.95"}
    # Full columns are NaN, and the score is the best open column's value.
    assert (np.isnan(positions.values) == ~C4.legal_mask(positions.boards)).all()
    np.testing.assert_array_equal(np.nanmax(positions.values, axis=1), positions.score)


@pytest.mark.parametrize("stage", STAGES)
def test_boards_are_the_positions_the_rules_reach(stage):
    """The loader plays all positions at once; `Game.position` plays one at a time."""
    positions = load_labelled(stage)
    for i in range(0, len(positions), 4):
        board, done, _ = C4.position(positions.moves[i])
        assert not done and np.array_equal(board, positions.boards[i]), positions.moves[i]


def test_an_unknown_stage_is_named():
    with pytest.raises(ValueError, match=r"unknown stage 'endgame'; expected one of \['early', 'mid', 'late'\]"):
        load_labelled("endgame")


GOOD = "1352661757\t3\t2\t-3\t2\t-1\t3\t0\t2\trandom"


@pytest.mark.parametrize(
    "line, why",
    [
        ("1352661757\t3\t2\t-3\t2\t-1\t3\t0\t2", "9 tab-separated fields; expected 10"),
        ("1352661757 3 2 -3 2 -1 3 0 2 random", "1 tab-separated fields; expected 10"),
        ("13526617a7\t3\t2\t-3\t2\t-1\t3\t0\t2\trandom", "move 9 of '13526617a7': 'a' is not a move 1..7"),
        ("1111111\t0\tx\t0\t0\t0\t0\t0\t0\trandom", "move 7 of '1111111': column 1 is full"),
        ("1212121\t-1\t-1\t-1\t-1\t-1\t-1\t-1\t-1\trandom", "'1212121' is a finished game"),
        ("12121213\t1\t1\t1\t1\t1\t1\t1\t1\trandom", "move 8 of '12121213': the game is already over"),
        ("1352661757\tthree\t2\t-3\t2\t-1\t3\t0\t2\trandom", "score 'three' is neither a whole number nor x"),
        ("1352661757\t3\t2\t-3\t?\t-1\t3\t0\t2\trandom", "s3 '?' is neither a whole number nor x"),
        ("1352661757\t3\t2\t-3\t2\t-1\t3\t0\t22\trandom", "s7 22 lies outside [-21, 21]"),
        ("1352661757\t2\t2\t-3\t2\t-1\t3\t0\t2\trandom", "score 2 is not the best column's value 3"),
        ("1352661757\t3\t2\t-3\t2\t-1\t3\tx\t2\trandom", "column 6 is marked full (x) but open"),
        ("111111\t3\t2\t-3\t2\t-1\t3\t0\t2\trandom", "column 1 is full but has a value"),
        ("1352661757\t3\tx\tx\tx\tx\tx\tx\tx\trandom", "every column is marked full (x)"),
        ("1352661757\t3\t2\t-3\t2\t-1\t3\t0\t2\t", "the source field is empty"),
    ],
)
def test_a_malformed_line_is_named_with_why(line, why):
    text = f"{GOOD}\n\n{line}\n{GOOD}\n"  # the blank line is skipped but counted
    with pytest.raises(LabelledDataError) as err:
        parse_labelled(text, "test.txt")
    assert str(err.value).startswith(f"test.txt line 3: {why}")


def test_the_first_bad_line_is_named_and_the_rest_counted():
    # Line 2 is wrong only on the board (found late), line 3 already in its text.
    text = "\n".join([GOOD, "111111\t3\t2\t-3\t2\t-1\t3\t0\t2\trandom", "9", GOOD])
    with pytest.raises(LabelledDataError, match=r"^t line 2: column 1 is full but has a value \(and 1 more lines\)$"):
        parse_labelled(text, "t")
    positions = parse_labelled(f"{GOOD}\n{GOOD}\n")
    assert positions.moves == ["1352661757"] * 2 and positions.score.tolist() == [3, 3]


def test_a_built_wheel_carries_the_positions(tmp_path):
    """`pip install .` (the Dockerfile's) installs a wheel: the data must be in it."""
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    for package in ("shared", "services", "cartridge"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("cartridge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for stage in STAGES:
        assert f"shared/games/data/c4_{stage}.txt" in names
    assert "shared/games/data/README.md" in names
