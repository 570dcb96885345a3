"""The `cartridge` commands as people and scripts use them: every command refuses a bad
config key the same way, `cartridge analyze` keeps its input and output format, and
`cartridge arena` plays distinct, colour-balanced games."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from cartridge import analyze, arena
from cartridge.cli import COMMANDS
from services.evaluator.match import play_games
from services.trainer.export import export_onnx
from services.trainer.network import PolicyValueNet
from shared.config import MCTSConfig
from shared.games import get_game
from shared.inference import OnnxEvaluator, UniformEvaluator
from shared.players import search_player
from shared.search.mcts import masked_softmax

C4 = get_game("connect4")


# -- a bad config key: exit 2, the key named, no traceback --------------------------------------
# What each command needs besides the bad key to get as far as reading its config.
REQUIRED = {"analyze": ["positions.txt"]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_bad_config_key_exits_2_naming_it(command):
    result = subprocess.run(
        [sys.executable, "-m", "cartridge.cli", command, *REQUIRED.get(command, []),
         "--set", "mcts.no_such_key=1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith(f"cartridge {command}: configuration error: [mcts] has no key 'no_such_key'")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# -- cartridge analyze: positions in, one tab-separated line per position out ------------------
POSITIONS = """\
# a comment, then a blank line: both skipped

4453
  44	anything after the position is ignored
111111
1111111
1212121
12a
"""
ERRORS = {
    "1111111": "1111111\terror: move 7 of '1111111': 1 is full or occupied",
    "1212121": "1212121\terror: position '1212121' is already finished",
    "12a": "12a\terror: move 3 of '12a': 'a' is not a move 1..7",
}
LINE = re.compile(r"^([1-7]*)\t([1-7])\t([+-][01]\.\d{4})((?:\t[01]\.\d{4}){7})$")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = PolicyValueNet(C4.obs_shape, C4.num_actions, blocks=1, channels=8)
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    path.write_bytes(export_onnx(model))
    return path


def run_analyze(capsys, *args: str) -> list[str]:
    assert analyze.main([*args, "--set", "common.env_id=connect4"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")
    return out[:-1].split("\n")


def check_format(lines: list[str]) -> dict[str, tuple[int, float, np.ndarray]]:
    """Every line in the documented format, in input order; the good ones parsed."""
    assert [line.split("\t")[0] for line in lines] == ["4453", "44", "111111", "1111111", "1212121", "12a"]
    good = {}
    for line in lines:
        position = line.split("\t")[0]
        if position in ERRORS:
            assert line == ERRORS[position]
            continue
        match = LINE.match(line)
        assert match, line
        column, value = int(match[2]), float(match[3])
        probs = np.array(match[4].split("\t")[1:], float)
        assert abs(probs.sum() - 1) <= 7 * 5e-5 + 1e-9, line  # each rounded to 4 decimals
        assert -1 <= value <= 1
        assert column == int(np.argmax(probs)) + 1  # the most likely column, 1-based
        good[position] = column, value, probs
    assert good["111111"][2][0] == 0 and good["111111"][0] != 1  # a full column gets nothing
    return good


def test_analyze_with_the_raw_network(tmp_path, capsys, model_file):
    positions = tmp_path / "positions.txt"
    positions.write_text(POSITIONS)
    lines = run_analyze(capsys, str(positions), "--model", str(model_file), "--sims", "0")
    good = check_format(lines)
    # --sims 0 prints the network's own policy and value, rounded.
    evaluator = OnnxEvaluator.from_bytes(model_file.read_bytes(), C4, version=1)
    boards = np.stack([C4.position(p)[0] for p in good])
    logits, values = evaluator(C4.observe(boards))
    for (position, (_, value, probs)), p, v in zip(good.items(), masked_softmax(logits, C4.legal_mask(boards)), values):
        assert f"{value:+.4f}" == f"{v:+.4f}", position
        assert [f"{x:.4f}" for x in probs] == [f"{x:.4f}" for x in p], position


def test_analyze_with_a_search(tmp_path, capsys, model_file, monkeypatch):
    # '-' reads the positions from standard input.
    monkeypatch.setattr(sys, "stdin", io.StringIO(POSITIONS))
    lines = run_analyze(capsys, "-", "--model", str(model_file), "--sims", "8")
    good = check_format(lines)
    for position, (_, _, probs) in good.items():
        visits = probs * 8  # the visit distribution of 8 simulations
        np.testing.assert_allclose(visits, np.round(visits), atol=8 * 5e-5, err_msg=position)
    # A search is deterministic: the same command prints the same lines.
    monkeypatch.setattr(sys, "stdin", io.StringIO(POSITIONS))
    assert run_analyze(capsys, "-", "--model", str(model_file), "--sims", "8") == lines


# -- cartridge arena: colour-swapped random openings, one JSON line last ------------------------
def run_arena(capsys, *args: str) -> dict:
    assert arena.main([*args, "--set", "common.env_id=connect4"]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])


def test_arena_a_model_against_itself_scores_exactly_even(capsys, model_file):
    # Both sides search without noise, so each opening's two games (colours swapped) are
    # the same game with the roles swapped: one side's win is the other's loss.
    result = run_arena(capsys, "--model", str(model_file), "--opponent", str(model_file), "--games", "40",
                       "--sims", "8", "--opening-plies", "3")
    assert result["wins"] == result["losses"] and result["wins"] + result["draws"] + result["losses"] == 40
    assert result["score"] == 0.5 and result["elo"] == 0


def test_arena_openings_make_the_games_differ():
    # Two deterministic searches (here the same player twice): without openings they play
    # one game over and over; with them one game per opening.
    player = search_player(C4, UniformEvaluator(C4), 8, MCTSConfig())
    assert len({r.moves for r in play_games(C4, player, player, 10, opening_plies=0)}) == 1
    assert len({r.moves for r in play_games(C4, player, player, 10, opening_plies=3, seed=0)}) == 10


def test_arena_search_beats_random_play(capsys):
    result = run_arena(capsys, "--model", "uniform", "--opponent", "random", "--games", "20", "--sims", "50")
    assert result["wins"] > 15 and result["elo"] > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--games", "7"], "--games must be an even number of at least 2"),
    (["--opponent-set", "mcts.no_such_key=1"], "configuration error: [mcts] has no key 'no_such_key'"),
])
def test_arena_refuses_bad_arguments(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        arena.main(["--model", "uniform", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_arena_names_a_model_that_is_neither_a_file_nor_a_version(capsys, tmp_path):
    missing = tmp_path / "000000010.onnx"
    assert arena.main(["--model", str(missing), "--opponent", "random", "--games", "2"]) == 2
    assert capsys.readouterr().err.startswith(
        f"cartridge arena: no model '{missing}': expected 'latest', a version number or an existing ONNX file")


def test_arena_refuses_an_unknown_anchor_by_name(capsys):
    assert arena.main(["--model", "uniform", "--opponent", "alphabeta-x", "--games", "2"]) == 2
    assert capsys.readouterr().err.startswith("cartridge arena: unknown anchor player 'alphabeta-x'")


@pytest.mark.parametrize("entry", ["cartridge.cli", "services.evaluator.__main__"])
def test_numpy_runs_one_blas_thread_unless_told_otherwise(entry):
    """Busy-waiting OpenBLAS threads made the rating fit 10x slower on a loaded machine."""
    import os

    code = f"import {entry}, numpy, os; print(os.environ['OPENBLAS_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    out = subprocess.run([sys.executable, "-c", code], env=env | {"OPENBLAS_NUM_THREADS": "2"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"
