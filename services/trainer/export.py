"""Turn a `PolicyValueNet` into the self-contained ONNX bytes that actors load."""

from __future__ import annotations

import contextlib
import io
import warnings

import torch

from services.trainer.network import PolicyValueNet
from shared.inference import INPUT_NAME, POLICY_OUTPUT, VALUE_OUTPUT


@contextlib.contextmanager
def _quiet_exporter():
    """Mute the exporter's deprecation notice (see `export_onnx`): the trainer exports
    every cycle and it would flood its log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_onnx(model: PolicyValueNet) -> bytes:
    """The model as one ONNX file (weights inline), input `obs` `float32[batch, 2, H, W]`
    with a dynamic batch axis, outputs `policy_logits[batch, A]` and `value[batch]`.

    The model is exported in eval mode (BatchNorm uses running statistics) and returned
    to whichever mode it was in.

    The TorchScript exporter, not torch.export's (`dynamo=True`): in torch 2.13 the latter
    took 1.2 s per export and kept ~0.6 MB of each one (its fake-tensor machinery), which a
    trainer exporting every cycle for weeks cannot afford (the 90-minute soak's trainer grew
    92 MB/h); this one takes 0.04 s and keeps nothing. It is deprecated in torch 2.13,
    whose release is pinned; `tests/test_network.py` checks the exported model.
    """
    was_training = model.training
    device = next(model.parameters()).device
    # Batch 2, not 1: a traced size of 1 can get specialised away as a constant.
    example = torch.zeros((2, *model.obs_shape), dtype=torch.float32, device=device)
    model.eval()
    buffer = io.BytesIO()
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                model, (example,), buffer, dynamo=False, input_names=[INPUT_NAME],
                output_names=[POLICY_OUTPUT, VALUE_OUTPUT],
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, POLICY_OUTPUT, VALUE_OUTPUT)},
            )
    finally:
        model.train(was_training)
    return buffer.getvalue()
