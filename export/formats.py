"""Writing a model as TorchScript and as ONNX, each with a dynamic batch axis."""

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

INPUT_NAME = "input"  # every exported graph's one input tensor
OUTPUT_NAME = "probabilities"  # and its one output
ONNX_OPSET = 18  # ONNX opset: recent, with LayerNormalization, and run by every current runtime

# The ONNX exporter warns, once per export, that torchvision's ops cannot be registered;
# the project does not use torchvision, so that is noise.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def write_torchscript(model: nn.Module, path: Path) -> None:
    """Scripted, not traced: scripting compiles the code itself, so no branch or shape is
    frozen to the one example batch a trace would record, and every batch size is safe by
    construction. The file loads with `torch.jit.load` and no project code."""
    torch.jit.script(model.eval()).save(str(path))


def write_onnx(model: nn.Module, example: Tensor, path: Path) -> None:
    """torch.onnx's dynamo exporter with a dynamic batch axis, then the full ONNX check.

    `example` needs a batch of at least 2: the exporter specialises a size-1 axis to 1.
    """
    with warnings.catch_warnings():
        # torch 2.13's exporter trips its own pytree deprecation (LeafSpec); not ours to fix.
        warnings.filterwarnings("ignore", "`isinstance\\(treespec, LeafSpec\\)`", FutureWarning)
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=ONNX_OPSET,
            external_data=False,  # one self-contained file; these models are small
            verbose=False,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
