"""Turn a `PolicyValueNet` into the self-contained ONNX bytes that actors load."""

from __future__ import annotations

import contextlib
import logging
import warnings

import torch

from services.trainer.network import PolicyValueNet
from shared.inference import INPUT_NAME, POLICY_OUTPUT, VALUE_OUTPUT

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
                output_names=[POLICY_OUTPUT, VALUE_OUTPUT],
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}},
            )
    finally:
        model.train(was_training)
    # With no destination the exporter hands back the program; serialising its proto
    # avoids a temp file and can never split weights into external data.
    return program.model_proto.SerializeToString()
