"""Turn a `PolicyValueNet` into the self-contained ONNX bytes that actors load."""

from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np
import onnxruntime as ort
import torch

from services.trainer.network import PolicyValueNet

INPUT_NAME = "obs"
OUTPUT_NAMES = ("policy_logits", "value")
MAX_BATCH = 4096


@contextlib.contextmanager
def _quiet_exporter():
    """Mute the exporter's progress lines, its torchvision notice and its
    FutureWarnings: the trainer exports every cycle and they would flood its log."""
    torch_logger = logging.getLogger("torch.onnx")
    old_level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_logger.setLevel(old_level)


def export_onnx(model: PolicyValueNet) -> bytes:
    """The model as one ONNX file (weights inline), input `obs` `float32[batch, 2, H, W]`
    with a dynamic batch axis, outputs `policy_logits[batch, A]` and `value[batch]`.

    The model is exported in eval mode (BatchNorm uses running statistics) and returned
    to whichever mode it was in.
    """
    was_training = model.training
    device = next(model.parameters()).device
    # Batch 2, not 1: a traced size of 1 can get specialised away as a constant.
    example = torch.zeros((2, *model.obs_shape), dtype=torch.float32, device=device)
    model.eval()
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                external_data=False,
                verbose=False,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}},
            )
    finally:
        model.train(was_training)
    # With no destination the exporter hands back the program; serialising its proto
    # avoids a temp file and can never split weights into external data.
    return program.model_proto.SerializeToString()


def verify_export(model: PolicyValueNet, onnx_bytes: bytes, atol: float = 1e-5, batch: int = 8) -> None:
    """Run `model` (in eval mode) and the ONNX bytes on one random batch and raise
    `AssertionError` if either output differs by more than `atol`."""
    rng = np.random.default_rng(0)
    # Random 0/1 planes with no cell set in both, like real observations.
    cells = rng.integers(0, 3, size=(batch, *model.obs_shape[1:]))
    obs = np.stack([cells == 1, cells == 2], axis=1).astype(np.float32)

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            logits, value = model(torch.from_numpy(obs).to(device))
    finally:
        model.train(was_training)

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    onnx_logits, onnx_value = session.run(list(OUTPUT_NAMES), {INPUT_NAME: obs})
    for name, expected, got in (
        ("policy_logits", logits.cpu().numpy(), onnx_logits),
        ("value", value.cpu().numpy(), onnx_value),
    ):
        if expected.shape != got.shape:
            raise AssertionError(f"{name}: torch shape {expected.shape}, ONNX shape {got.shape}")
        diff = float(np.max(np.abs(expected - got))) if expected.size else 0.0
        if diff > atol:
            raise AssertionError(f"{name}: ONNX differs from torch by {diff:.3g} (> {atol:g})")
