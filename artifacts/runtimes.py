"""The runtimes that run an artifact: one small interface, one implementation per backend,
chosen by the manifest or settings (never by probing imports or file extensions). The
service serves through them and export proves its artifacts through them.

Each call of `infer` is one device call for the whole batch: the inputs are copied to the
device once and the outputs back once. Inputs and outputs are tuples of arrays in the
manifest's order (the graph's order for ONNX, the `forward` arguments' for TorchScript).

torch is imported by the TorchScript backend alone: it is about 180 MB of resident memory
per process, which the main and HTTP processes and every ONNX Runtime worker do without.
"""

import ctypes
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from .manifest import Backend

Tensors = tuple[np.ndarray, ...]  # one array per input or output, batch first


class Runtime(Protocol):
    name: Backend
    device: str  # "cpu" or "cuda:N"

    def infer(self, inputs: Tensors) -> Tensors:
        """Every input for N instances -> every output for them."""
        ...


def cuda_devices() -> int:
    """GPUs the CUDA driver sees (CUDA_VISIBLE_DEVICES applies), asked of the driver itself
    as torch.cuda does, without importing torch; 0 where there is no driver. ONNX Runtime's
    GPU build lists its CUDA provider even where no GPU exists, so it cannot tell."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def resolve_device(requested: str) -> str:
    """'auto' -> 'cuda' when the CUDA driver sees a GPU, else 'cpu'; 'cuda' without one is
    an error."""
    available = cuda_devices() > 0
    if requested == "auto":
        return "cuda" if available else "cpu"
    if requested == "cuda" and not available:
        raise RuntimeError("TENSORGATE_DEVICE=cuda, but the CUDA driver sees no GPU")
    return requested


class OrtRuntime:
    name: Backend = "onnxruntime"

    def __init__(self, path: Path, device: str, threads: int) -> None:
        self.device = device
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one graph at a time per worker
        providers: list = ["CPUExecutionProvider"]
        wanted = "CPUExecutionProvider"
        if device.startswith("cuda"):
            # CUDA and cuDNN from NVIDIA's pip wheels (those CUDA torch installs), also where
            # torch has not loaded them yet; a no-op for libraries already loaded.
            ort.preload_dlls()
            wanted = "CUDAExecutionProvider"
            # TF32 off: served numerics stay those the export verified in full FP32.
            options_cuda = {"device_id": int(device.partition(":")[2] or 0), "use_tf32": 0}
            providers.insert(0, (wanted, options_cuda))
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        if self.session.get_providers()[0] != wanted:
            # ORT falls back to the CPU silently when CUDA libraries are missing.
            raise RuntimeError(f"ONNX Runtime could not start {wanted} for {path}")
        # the graph's own tensor names, in its order
        self.inputs = [t.name for t in self.session.get_inputs()]
        self.outputs = [t.name for t in self.session.get_outputs()]

    def infer(self, inputs: Tensors) -> Tensors:
        return tuple(self.session.run(self.outputs, dict(zip(self.inputs, inputs, strict=True))))


class TorchScriptRuntime:
    name: Backend = "torchscript"

    def __init__(self, path: Path, device: str, threads: int) -> None:
        import torch  # here only: see the module's docstring

        self.torch = torch
        self.device = device
        torch.set_num_threads(threads)
        if device.startswith("cuda"):
            # TF32 off: served numerics stay those the export verified in full FP32.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.module = torch.jit.load(str(path), map_location=device).eval()

    def infer(self, inputs: Tensors) -> Tensors:
        with self.torch.inference_mode():
            # torch wants writable memory; the worker's inputs may be read-only views
            arrays = [x if x.flags.writeable else x.copy() for x in inputs]
            tensors = [self.torch.from_numpy(x).to(self.device) for x in arrays]
            out = self.module(*tensors)
            outputs = out if isinstance(out, (tuple, list)) else (out,)
            return tuple(t.cpu().numpy() for t in outputs)


RUNTIMES: dict[Backend, type[OrtRuntime] | type[TorchScriptRuntime]] = {
    "onnxruntime": OrtRuntime,
    "torchscript": TorchScriptRuntime,
}


def load_runtime(backend: Backend, path: Path, device: str, threads: int) -> Runtime:
    return RUNTIMES[backend](path, device, threads)
