"""KServe V1 and V2 (Open Inference Protocol) bodies <-> validated float32 batches.

Pure functions, run in the HTTP process before a request is queued, so a bad request is
answered with a 400 naming what was wrong and never reaches (or fails) a batch.
V2 includes the binary tensor data extension that tritonclient uses by default.
"""

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .errors import BadRequest

BINARY_HEADER = "Inference-Header-Content-Length"
FLOAT32_MAX = float(np.finfo(np.float32).max)  # a JSON number beyond it is refused, not rounded
NOT_FINITE = "contains NaN or Inf (or a value beyond float32's range)"


@dataclass(frozen=True)
class Signature:
    """What one model takes and gives: read from its manifest."""

    model: str
    version: int
    input_name: str
    input_shape: tuple[int, ...]  # without the batch axis
    output_name: str
    labels: tuple[str, ...]
    max_instances: int

    def expected(self) -> str:
        return f"[N, {', '.join(map(str, self.input_shape))}]" if self.input_shape else "[N]"


@dataclass(frozen=True)
class V2Request:
    x: np.ndarray  # (N, *input_shape) float32
    id: str | None  # echoed in the response
    binary_output: bool  # answer with the binary tensor extension


def _json(body: bytes, what: str) -> dict:
    """orjson: about 10x faster than the json module on these bodies (docs/benchmarks/json.md),
    strict JSON (NaN is not a number in JSON), and a depth limit instead of recursion."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if str(e).startswith("depth limit exceeded"):
            raise BadRequest(f"{what} is nested too deeply to parse") from None
        raise BadRequest(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def _has_booleans(data: Any, depth: int) -> bool:
    """Whether regular nested lists `depth` deep hold a true or false, which numpy would have
    taken for 1 and 0."""
    flat = data
    for _ in range(depth - 1):
        flat = itertools.chain.from_iterable(flat)
    return bool in set(map(type, flat))


def _numbers(data: Any, what: str, booleans_possible: bool = True) -> np.ndarray:
    """Nested lists of numbers -> a float32 array; anything else is a 400. Pass
    `booleans_possible=False` where the raw body has no `true` or `false` (a cheap check that
    spares a pass over the values)."""
    try:
        arr = np.array(data)
    except (ValueError, TypeError):
        raise BadRequest(f"{what} is ragged: every row must have the same length") from None
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply (more axes than any input has)") from None
    if arr.dtype.kind not in "iuf":  # strings, booleans, nulls, objects
        raise BadRequest(f"{what} must hold only numbers (found {arr.dtype.name} values)")
    if booleans_possible and arr.ndim and _has_booleans(data, arr.ndim):
        raise BadRequest(f"{what} must hold only numbers (found a boolean among them)")
    if arr.dtype.kind == "f" and not (np.abs(arr) <= FLOAT32_MAX).all():
        raise BadRequest(f"{what} {NOT_FINITE}")
    return arr.astype(np.float32)


def _check_batch(x: np.ndarray, sig: Signature, what: str) -> np.ndarray:
    if x.ndim == 0 or x.shape[1:] != sig.input_shape or x.shape[0] == 0:
        raise BadRequest(
            f"{what} has shape {list(x.shape)}; model '{sig.model}' expects {sig.expected()} "
            f"with N >= 1"
        )
    if x.shape[0] > sig.max_instances:
        raise BadRequest(
            f"{what} holds {x.shape[0]} instances; at most {sig.max_instances} are allowed in "
            "one request (TENSORGATE_MAX_INSTANCES)"
        )
    if not np.isfinite(x).all():
        raise BadRequest(f"{what} {NOT_FINITE}")
    return np.ascontiguousarray(x)


def parse_v1(body: bytes, sig: Signature) -> np.ndarray:
    """{"instances": [instance, ...]} -> (N, *input_shape)."""
    doc = _json(body, "request body")
    if "instances" not in doc:
        raise BadRequest(
            f'request body needs "instances": a list of instances of shape {list(sig.input_shape)}'
        )
    if not isinstance(doc["instances"], list):
        raise BadRequest('"instances" must be a list of instances')
    booleans = b"true" in body or b"false" in body
    x = _numbers(doc["instances"], '"instances"', booleans)
    return _check_batch(x, sig, '"instances"')


def _header_length(body: bytes, header: str | None) -> int:
    if header is None:
        return len(body)
    try:
        length = int(header)
    except ValueError:
        raise BadRequest(f"{BINARY_HEADER} must be an integer, got {header!r}") from None
    if not 0 < length <= len(body):
        raise BadRequest(f"{BINARY_HEADER} is {length}, but the body has {len(body)} bytes")
    return length


def _parameters(holder: dict, what: str) -> dict:
    """An optional "parameters" member: an object, or absent or null."""
    params = holder.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequest(f'{what}: "parameters" must be an object')
    return params


def _shape(tensor: dict, what: str) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequest(f'{what} needs "shape": a list of non-negative integers')
    return shape


def _tensor(tensor: Any, sig: Signature, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """One V2 input tensor -> (array, bytes of binary data it used)."""
    if not isinstance(tensor, dict):
        raise BadRequest('each entry of "inputs" must be an object')
    name = tensor.get("name")
    what = f"input '{name}'"
    if name != sig.input_name:
        raise BadRequest(f"unknown input {name!r}; model '{sig.model}' takes '{sig.input_name}'")
    if tensor.get("datatype") != "FP32":
        raise BadRequest(
            f"{what} has datatype {tensor.get('datatype')!r}; model '{sig.model}' expects FP32"
        )
    shape = _shape(tensor, what)
    count = int(np.prod(shape)) if shape else 1
    size = _parameters(tensor, what).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * 4:
            raise BadRequest(
                f"{what}: binary_data_size is {size!r}; shape {shape} of FP32 "
                f"needs {count * 4} bytes"
            )
        if offset + size > len(binary):
            raise BadRequest(
                f"{what}: the body has {len(binary) - offset} binary bytes left, "
                f"binary_data_size says {size}"
            )
        x = np.frombuffer(binary[offset : offset + size], dtype="<f4").reshape(shape)
        return _check_batch(x.astype(np.float32), sig, what), size
    if "data" not in tensor:
        raise BadRequest(f'{what} needs "data" (or binary data with "binary_data_size")')
    x = _numbers(tensor["data"], f"{what} data")
    if x.size != count:
        raise BadRequest(f"{what} has {x.size} values; shape {shape} needs {count}")
    return _check_batch(x.reshape(shape), sig, what), 0


def parse_v2(body: bytes, header_length: str | None, sig: Signature) -> V2Request:
    length = _header_length(body, header_length)
    doc = _json(body[:length], "inference header")
    binary = memoryview(body)[length:]
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest('"id" must be a string')
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise BadRequest(
            f"\"inputs\" must be a list of one tensor; model '{sig.model}' takes "
            f"'{sig.input_name}' {sig.expected()} FP32"
        )
    x, used = _tensor(inputs[0], sig, binary, 0)
    if used != len(binary):
        raise BadRequest(f"{len(binary) - used} bytes of binary data follow the inputs unused")

    binary_output = bool(_parameters(doc, "the request").get("binary_data_output"))
    outputs = doc.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise BadRequest('"outputs" must be a list of requested outputs')
    for out in outputs or []:
        if not isinstance(out, dict) or out.get("name") != sig.output_name:
            name = out.get("name") if isinstance(out, dict) else out
            raise BadRequest(
                f"unknown output {name!r}; model '{sig.model}' gives '{sig.output_name}'"
            )
        out_params = _parameters(out, f"output '{sig.output_name}'")
        if "binary_data" in out_params:
            binary_output = bool(out_params["binary_data"])  # overrides binary_data_output
    return V2Request(x=x, id=request_id, binary_output=binary_output)


def _dumps(doc: dict) -> bytes:
    """numpy arrays written directly, float32 values in their shortest form."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_v1(probabilities: np.ndarray, sig: Signature) -> bytes:
    probabilities = np.ascontiguousarray(probabilities)  # orjson takes contiguous rows only
    best = probabilities.argmax(axis=1)
    predictions = [
        {"label": sig.labels[i], "index": int(i), "probabilities": row}
        for i, row in zip(best, probabilities, strict=True)
    ]
    return _dumps({"predictions": predictions})


def encode_v2(probabilities: np.ndarray, sig: Signature, request: V2Request) -> tuple[bytes, dict]:
    """The V2 response body and its extra headers (the binary header length, when binary)."""
    output: dict[str, Any] = {
        "name": sig.output_name,
        "datatype": "FP32",
        "shape": list(probabilities.shape),
    }
    doc: dict[str, Any] = {
        "model_name": sig.model,
        "model_version": str(sig.version),
        "outputs": [output],
    }
    if request.id is not None:
        doc["id"] = request.id
    if not request.binary_output:
        output["data"] = np.ascontiguousarray(probabilities).ravel()
        return _dumps(doc), {}
    raw = probabilities.astype("<f4", copy=False).tobytes()
    output["parameters"] = {"binary_data_size": len(raw)}
    header = _dumps(doc)
    return header + raw, {BINARY_HEADER: str(len(header))}
