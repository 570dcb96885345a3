"""The learning benchmark's bookkeeping (which model was served when) and its yardstick
across sessions (the match against the committed reference model)."""

from pathlib import Path

import pytest
import torch

from bench.learning import REFERENCES, first_seen, load_reference, reference_path, versus_reference
from cartridge.up import EMBEDDED
from services.trainer.export import export_onnx
from services.trainer.network import build_network
from shared.config import NetworkConfig, load_config
from shared.games import get_game
from shared.inference import OnnxEvaluator


def test_first_seen_knows_versions_the_evaluator_skipped() -> None:
    # A busy (or niced) evaluator skips versions; `--at 30` must still find the model
    # served at minute 30 from the trainer's progress lines, not only from rated rows.
    curve = [{"minutes": 1.0, "version": 0}, {"minutes": 6.4, "version": 1}, {"minutes": 6.6, "version": 1},
             {"minutes": 27.2, "version": 5}, {"minutes": 32.4, "version": 6}]
    assert first_seen(curve) == {1: 6.4, 5: 27.2, 6: 32.4}


def test_the_reference_is_chosen_by_game_and_can_be_turned_off(tmp_path: Path) -> None:
    assert reference_path(None, "connect4") == REFERENCES / "connect4.onnx"
    assert reference_path(None, "tictactoe") is None  # no reference committed: no match
    assert reference_path("none", "connect4") is None
    with pytest.raises(SystemExit, match="no reference model"):
        reference_path(str(tmp_path / "missing.onnx"), "connect4")


def test_a_reference_that_is_no_model_is_named(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx model")
    with pytest.raises(SystemExit, match="reference model .*corrupt.onnx"):
        load_reference(corrupt, get_game("connect4"))
    assert load_reference(REFERENCES / "connect4.onnx", get_game("connect4")).version == 0


def test_an_untrained_network_loses_to_the_reference() -> None:
    # The committed reference is a trained model: a network fresh from initialisation
    # must lose to it, and the figures must be the scored model's, not the reference's.
    game = get_game("connect4")
    torch.manual_seed(0)
    untrained = OnnxEvaluator.from_bytes(export_onnx(build_network(game, NetworkConfig())), game, version=1)
    result = versus_reference(game, untrained, load_config(defaults=EMBEDDED), REFERENCES / "connect4.onnx",
                              games=4)
    assert result["wins"] + result["draws"] + result["losses"] == 4
    assert result["losses"] > result["wins"] and result["elo"] < 0
