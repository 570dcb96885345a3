"""Network evaluation for search: the policy-value model run by onnxruntime.

Actors carry onnxruntime but not torch, so nothing here imports torch. The model file
is what `services.trainer.export` writes: input `obs` `float32[batch, 2, H, W]`,
outputs `policy_logits[batch, A]` and `value[batch]`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import onnxruntime as ort

from shared.games.base import Game

# The model file's tensor names: `services.trainer.export` writes them, actors read them.
INPUT_NAME = "obs"
POLICY_OUTPUT = "policy_logits"
VALUE_OUTPUT = "value"


class ModelError(ValueError):
    """A model file that cannot be used here; the message says why."""


class Evaluator(Protocol):
    version: int
    """Model version the evaluations come from (0: no model yet)."""

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`uint8` or `float32[n, 2, H, W]` observations to
        `(logits float32[n, A], value float32[n])`, values from the side to move's view."""


class UniformEvaluator:
    """Before the first model: every move equally likely, every position even."""

    version = 0

    def __init__(self, game: Game):
        self.num_actions = game.num_actions

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(obs)
        return np.zeros((n, self.num_actions), np.float32), np.zeros(n, np.float32)


class OnnxEvaluator:
    """One onnxruntime session, checked against the game it will play."""

    def __init__(self, session: ort.InferenceSession, game: Game, *, version: int):
        self.version = version
        self.num_actions = game.num_actions
        self._session = session
        self._run = session.run
        self._input_name = session.get_inputs()[0].name
        self._output_names = [POLICY_OUTPUT, VALUE_OUTPUT]

    @classmethod
    def from_bytes(cls, data: bytes, game: Game, *, version: int, threads: int = 1) -> OnnxEvaluator:
        """Load a model file's bytes; `ModelError` if they are not a usable model for `game`."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: load-time notices would repeat every reload
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            session = ort.InferenceSession(bytes(data), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise ModelError(f"model version {version} is not a valid ONNX model: {exc}") from None
        _check_signature(session, game, version)
        return cls(session, game, version=version)

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(obs) == 0:
            return np.zeros((0, self.num_actions), np.float32), np.zeros(0, np.float32)
        # astype makes the one copy the uint8 -> float32 conversion needs; float32 input
        # is passed through untouched unless it is a non-contiguous view.
        if obs.dtype != np.float32:
            obs = obs.astype(np.float32)
        elif not obs.flags.c_contiguous:
            obs = np.ascontiguousarray(obs)
        logits, value = self._run(self._output_names, {self._input_name: obs})
        return logits, value


def _dims(shape: list) -> str:
    """`['batch', 2, 6, 7]` -> `[batch, 2, 6, 7]`, for messages."""
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def _is_dynamic(dim) -> bool:
    return not isinstance(dim, int)


def _check_signature(session: ort.InferenceSession, game: Game, version: int) -> None:
    """Raise `ModelError` unless the model takes `float32[batch, *obs_shape]` and gives
    `policy_logits[batch, num_actions]` and `value[batch]`."""
    where = f"model version {version}"
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"{where} takes {len(inputs)} inputs; expected one observation tensor")
    (obs,) = inputs
    wanted = ["batch", *game.obs_shape]
    if obs.type != "tensor(float)":
        raise ModelError(f"{where} input is {obs.type}; expected tensor(float)")
    if len(obs.shape) != len(wanted) or list(obs.shape[1:]) != list(game.obs_shape):
        raise ModelError(
            f"{where} has input shape {_dims(obs.shape)} but {game.env_id} observations are "
            f"{_dims(wanted)}: the model was made for another game"
        )
    if not _is_dynamic(obs.shape[0]):
        raise ModelError(f"{where} has a fixed batch size {obs.shape[0]}; expected a dynamic batch axis")

    outputs = {o.name: o for o in session.get_outputs()}
    for name in (POLICY_OUTPUT, VALUE_OUTPUT):
        if name not in outputs:
            raise ModelError(f"{where} has no output {name!r} (outputs: {sorted(outputs)})")
    policy_shape = outputs[POLICY_OUTPUT].shape
    if len(policy_shape) != 2 or policy_shape[1] != game.num_actions:
        raise ModelError(
            f"{where} has policy output shape {_dims(policy_shape)} but {game.env_id} has "
            f"{game.num_actions} actions: the model was made for another game"
        )
    if len(outputs[VALUE_OUTPUT].shape) != 1:
        raise ModelError(
            f"{where} has value output shape {_dims(outputs[VALUE_OUTPUT].shape)}; expected [batch]"
        )
