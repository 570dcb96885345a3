"""The policy-value network, its ONNX export and the onnxruntime evaluator actors use."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from services.trainer.export import export_onnx
from services.trainer.network import PolicyValueNet, build_network
from shared.config import NetworkConfig
from shared.games import get_game
from shared.inference import INPUT_NAME, POLICY_OUTPUT, VALUE_OUTPUT, ModelError, OnnxEvaluator, UniformEvaluator

CONNECT4 = get_game("connect4")
TICTACTOE = get_game("tictactoe")


def _randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give BatchNorm non-trivial statistics, as after training, so the export's folding
    of BatchNorm into the convolutions is actually exercised."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def _random_obs(game, n: int, seed: int = 0) -> np.ndarray:
    """Observations of `n` random positions (not necessarily reachable ones)."""
    rng = np.random.default_rng(seed)
    boards = rng.integers(-1, 2, size=(n, *game.board_shape)).astype(np.int8)
    return game.observe(boards)


def _torch_outputs(model: PolicyValueNet, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    with torch.no_grad():
        logits, value = model(torch.from_numpy(obs).float())
    return logits.numpy(), value.numpy()


def assert_export_matches(model: PolicyValueNet, onnx_bytes: bytes, atol: float = 1e-5, batch: int = 8) -> None:
    """Run `model` (in eval mode) and the ONNX bytes on one random batch; fail if either
    output differs by more than `atol`."""
    rng = np.random.default_rng(0)
    # Random 0/1 planes with no cell set in both, like real observations.
    cells = rng.integers(0, 3, size=(batch, *model.obs_shape[1:]))
    obs = np.stack([cells == 1, cells == 2], axis=1).astype(np.float32)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits, value = model(torch.from_numpy(obs))
    finally:
        model.train(was_training)

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    onnx_logits, onnx_value = session.run([POLICY_OUTPUT, VALUE_OUTPUT], {INPUT_NAME: obs})
    for name, expected, got in ((POLICY_OUTPUT, logits.numpy(), onnx_logits), (VALUE_OUTPUT, value.numpy(), onnx_value)):
        assert expected.shape == got.shape, f"{name}: torch shape {expected.shape}, ONNX shape {got.shape}"
        diff = float(np.max(np.abs(expected - got))) if expected.size else 0.0
        assert diff <= atol, f"{name}: ONNX differs from torch by {diff:.3g} (> {atol:g})"


@pytest.fixture(scope="module")
def connect4_net() -> tuple[PolicyValueNet, bytes]:
    torch.manual_seed(0)
    model = build_network(CONNECT4, NetworkConfig())  # the default 4 x 64 tower
    _randomize_batchnorm(model)
    return model, export_onnx(model)


@pytest.fixture(scope="module")
def tictactoe_net() -> tuple[PolicyValueNet, bytes]:
    torch.manual_seed(1)
    model = PolicyValueNet(TICTACTOE.obs_shape, TICTACTOE.num_actions, blocks=2, channels=16)
    _randomize_batchnorm(model, seed=1)
    return model, export_onnx(model)


def test_network_shapes_and_value_range():
    model = PolicyValueNet(CONNECT4.obs_shape, CONNECT4.num_actions, blocks=1, channels=8).eval()
    for n in (1, 5):
        logits, value = model(torch.from_numpy(_random_obs(CONNECT4, n)).float())
        assert logits.shape == (n, 7)
        assert value.shape == (n,)  # a batch of one must not collapse to a scalar
        assert torch.all(value.abs() <= 1)


def test_build_network_follows_config():
    model = build_network(TICTACTOE, NetworkConfig(blocks=2, channels=16))
    assert len(model.tower) == 2
    assert model.stem[0].out_channels == 16
    assert model.policy_head[-1].out_features == 9


@pytest.mark.parametrize("net", ["connect4_net", "tictactoe_net"])
def test_export_matches_torch(net, request):
    model, onnx_bytes = request.getfixturevalue(net)
    assert_export_matches(model, onnx_bytes, atol=1e-5)


def test_export_restores_training_mode():
    model = PolicyValueNet(TICTACTOE.obs_shape, TICTACTOE.num_actions, blocks=1, channels=8)
    model.train()
    export_onnx(model)
    assert model.training
    model.eval()
    export_onnx(model)
    assert not model.training


def test_export_comparison_detects_a_mismatch(connect4_net):
    """The comparison above can fail: another model's weights are caught."""
    model, onnx_bytes = connect4_net
    other = build_network(CONNECT4, NetworkConfig())  # same shapes, different weights
    with pytest.raises(AssertionError, match="differs from torch"):
        assert_export_matches(other, onnx_bytes)


@pytest.mark.parametrize("n", [1, 256])
def test_evaluator_runs_exported_connect4_model(connect4_net, n):
    model, onnx_bytes = connect4_net
    evaluator = OnnxEvaluator.from_bytes(onnx_bytes, CONNECT4, version=3)
    assert evaluator.version == 3
    obs = _random_obs(CONNECT4, n, seed=n)
    logits, value = evaluator(obs)  # uint8, straight from observe()
    assert logits.shape == (n, CONNECT4.num_actions) and logits.dtype == np.float32
    assert value.shape == (n,) and value.dtype == np.float32
    assert logits.flags.c_contiguous and value.flags.c_contiguous
    assert np.all(np.abs(value) <= 1)
    expected_logits, expected_value = _torch_outputs(model, obs)
    np.testing.assert_allclose(logits, expected_logits, atol=1e-5)
    np.testing.assert_allclose(value, expected_value, atol=1e-5)
    # float32 input gives the same answer as uint8.
    logits32, value32 = evaluator(obs.astype(np.float32))
    np.testing.assert_array_equal(logits32, logits)
    np.testing.assert_array_equal(value32, value)


def test_evaluator_accepts_non_contiguous_float_input(tictactoe_net):
    _, onnx_bytes = tictactoe_net
    evaluator = OnnxEvaluator.from_bytes(onnx_bytes, TICTACTOE, version=1)
    obs = _random_obs(TICTACTOE, 8).astype(np.float32)
    logits, value = evaluator(obs[::2])
    expected_logits, expected_value = evaluator(np.ascontiguousarray(obs[::2]))
    assert logits.shape == (4, 9)
    np.testing.assert_array_equal(logits, expected_logits)
    np.testing.assert_array_equal(value, expected_value)


def test_empty_batch_returns_empty_arrays(connect4_net):
    evaluator = OnnxEvaluator.from_bytes(connect4_net[1], CONNECT4, version=1)
    for e in (evaluator, UniformEvaluator(CONNECT4)):
        logits, value = e(np.zeros((0, *CONNECT4.obs_shape), np.uint8))
        assert logits.shape == (0, 7) and logits.dtype == np.float32
        assert value.shape == (0,) and value.dtype == np.float32


def test_uniform_evaluator():
    evaluator = UniformEvaluator(TICTACTOE)
    assert evaluator.version == 0
    logits, value = evaluator(_random_obs(TICTACTOE, 5))
    assert logits.shape == (5, 9) and logits.dtype == np.float32
    assert value.shape == (5,) and value.dtype == np.float32
    assert not logits.any() and not value.any()


def test_garbage_bytes_raise_model_error():
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        OnnxEvaluator.from_bytes(b"this is not a model" * 10, CONNECT4, version=7)
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        OnnxEvaluator.from_bytes(b"", CONNECT4, version=7)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_model_raises_model_error(connect4_net, keep):
    onnx_bytes = connect4_net[1]
    with pytest.raises(ModelError, match="version 7 is not a valid ONNX model"):
        OnnxEvaluator.from_bytes(onnx_bytes[: int(len(onnx_bytes) * keep)], CONNECT4, version=7)


def test_model_for_another_game_raises_model_error(tictactoe_net):
    with pytest.raises(ModelError) as info:
        OnnxEvaluator.from_bytes(tictactoe_net[1], CONNECT4, version=2)
    message = str(info.value)
    assert "input shape [batch, 2, 3, 3]" in message
    assert "connect4" in message and "[batch, 2, 6, 7]" in message
    assert "another game" in message


def test_wrong_number_of_actions_raises_model_error():
    # Right board, wrong move count: only the policy output can give it away.
    model = PolicyValueNet(CONNECT4.obs_shape, 9, blocks=1, channels=8)
    with pytest.raises(ModelError) as info:
        OnnxEvaluator.from_bytes(export_onnx(model), CONNECT4, version=2)
    message = str(info.value)
    assert "policy output shape [batch, 9]" in message
    assert "7 actions" in message
