"""KServe V1 and V2 (Open Inference Protocol) bodies <-> validated batches: one array per
model input, of its datatype, and one per output back.

Pure functions, run in the HTTP process before a request is queued, so a bad request is
answered with a 400 naming what was wrong and never reaches (or fails) a batch.
V2 includes the binary tensor data extension that tritonclient uses by default.
"""

import itertools
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import orjson

from artifacts.manifest import NUMPY, Datatype, fits
from artifacts.runtimes import Tensors

from .admission import NOTHING_ASKED, Asked, from_parameters
from .errors import BadRequest

BINARY_HEADER = "Inference-Header-Content-Length"
MAX_DIMS = 32
MAX_DIM = 2**31 - 1  # an axis longer than any request could fill; numpy's reshape overflows
# a JSON number beyond the datatype's range is refused, not rounded to Inf
NOT_FINITE = "contains NaN or Inf (or a value beyond its datatype's range)"


@dataclass(frozen=True)
class Tensor:
    """One input or output of a model, past the batch axis."""

    name: str
    datatype: Datatype
    shape: tuple[int, ...]  # without the batch axis; -1 for a dynamic axis

    @cached_property
    def dtype(self) -> np.dtype:
        return np.dtype(NUMPY[self.datatype])

    @cached_property
    def bounds(self) -> tuple[float, float]:
        """The least and greatest value of the datatype (floats: its largest magnitude)."""
        if self.dtype.kind == "f":
            limit = float(np.finfo(self.dtype).max)
            return -limit, limit
        if self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            return int(info.min), int(info.max)
        return 0, 1

    def expected(self) -> str:
        dims = ", ".join("*" if d == -1 else str(d) for d in self.shape)
        return f"[N, {dims}]" if self.shape else "[N]"

    def describe(self) -> str:
        return f"'{self.name}' {self.expected()} {self.datatype}"


@dataclass(frozen=True)
class Signature:
    """What one model takes and gives: read from its manifest."""

    model: str
    version: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    labels: tuple[str, ...]  # one per column of the first output; () when it has none
    max_instances: int  # per request: 1 for a model whose batch axis is fixed at 1

    def takes(self) -> str:
        return ", ".join(t.describe() for t in self.inputs)


class Requested(NamedTuple):
    """An output to answer with: its index in the signature, and whether in binary."""

    index: int
    binary: bool


@dataclass(frozen=True)
class Decoded:
    """An inference request, validated against one version's signature, whatever its
    protocol."""

    inputs: Tensors  # one array per input, in the signature's order
    id: str | None = None  # echoed in the response (V2, gRPC)
    outputs: tuple[Requested, ...] = ()  # what to answer with, in order (V2, gRPC)
    asked: Asked = NOTHING_ASKED  # its timeout and priority parameters (V2, gRPC)


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


def _numbers(data: Any, what: str, t: Tensor, booleans_possible: bool = True) -> np.ndarray:
    """Nested lists of JSON values -> an array of the tensor's datatype; anything else (or a
    value beyond the datatype's range) is a 400. Pass `booleans_possible=False` where the raw
    body has no `true` or `false` (a cheap check that spares a pass over the values)."""
    try:
        arr = np.array(data)
    except (ValueError, TypeError):
        raise BadRequest(f"{what} is ragged: every row must have the same length") from None
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply (more axes than any input has)") from None
    kind = t.dtype.kind
    if kind == "b":
        if arr.dtype.kind != "b" and arr.size:
            raise BadRequest(f"{what} must hold only booleans, true or false ({t.datatype})")
        return arr.astype(bool)
    if arr.dtype.kind not in ("iu" if kind in "iu" else "iuf") and arr.size:
        found = f"{arr.dtype.name} values" if arr.dtype.kind != "f" else "decimal numbers"
        wanted = "integers" if kind in "iu" else "numbers"
        raise BadRequest(f"{what} must hold only {wanted} for {t.datatype} (found {found})")
    if booleans_possible and arr.ndim and _has_booleans(data, arr.ndim):
        raise BadRequest(f"{what} must hold only numbers (found a boolean among them)")
    low, high = t.bounds
    if arr.size and not (arr.min() >= low and arr.max() <= high):
        beyond = NOT_FINITE if kind == "f" else f"is beyond {t.datatype}'s range"
        raise BadRequest(f"{what} {beyond}")
    return arr.astype(t.dtype, copy=False)


def _check_batch(x: np.ndarray, t: Tensor, sig: Signature, what: str) -> np.ndarray:
    dims_match = x.shape[1:] == t.shape or fits(t.shape, x.shape[1:])  # the first: fast
    if x.ndim == 0 or not dims_match or x.shape[0] == 0:
        raise BadRequest(
            f"{what} has shape {list(x.shape)}; model '{sig.model}' expects {t.expected()} "
            f"with N >= 1"
        )
    if x.shape[0] > sig.max_instances:
        raise BadRequest(
            f"{what} holds {x.shape[0]} instances; at most {sig.max_instances} are allowed in "
            "one request (TENSORGATE_MAX_INSTANCES"
            + ("; this model's batch axis is fixed at 1)" if sig.max_instances == 1 else ")")
        )
    if t.dtype.kind == "f" and not np.isfinite(x).all():
        raise BadRequest(f"{what} {NOT_FINITE}")
    return np.ascontiguousarray(x)


def _same_count(inputs: Tensors, sig: Signature) -> Tensors:
    counts = {len(x) for x in inputs}
    if len(counts) > 1:
        given = ", ".join(f"'{t.name}' {len(x)}" for t, x in zip(sig.inputs, inputs, strict=True))
        raise BadRequest(f"every input needs the same number of instances; given: {given}")
    return inputs


def parse_v1(body: bytes, sig: Signature) -> Tensors:
    """{"instances": [instance, ...]} -> each input (N, *shape). With several inputs, each
    instance is an object of them by name, as KServe's V1 has it."""
    doc = _json(body, "request body")
    if "instances" not in doc:
        raise BadRequest(f'request body needs "instances": a list of instances of {sig.takes()}')
    instances = doc["instances"]
    if not isinstance(instances, list):
        raise BadRequest('"instances" must be a list of instances')
    booleans = b"true" in body or b"false" in body
    if len(sig.inputs) == 1:
        (t,) = sig.inputs
        x = _numbers(instances, '"instances"', t, booleans)
        return (_check_batch(x, t, sig, '"instances"'),)
    columns = {t.name: [] for t in sig.inputs}
    for instance in instances:
        if not isinstance(instance, dict) or set(instance) != set(columns):
            raise BadRequest(
                f"each instance must be an object of every input by name: {', '.join(columns)}"
            )
        for name, value in instance.items():
            columns[name].append(value)
    inputs = tuple(
        _check_batch(_numbers(columns[t.name], f"input '{t.name}'", t, booleans), t, sig,
                     f"input '{t.name}'")
        for t in sig.inputs
    )  # fmt: skip
    return _same_count(inputs, sig)


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
    return checked_shape(tensor.get("shape"), what)


def checked_shape(shape: Any, what: str) -> list[int]:
    """A request's shape, as JSON or gRPC gives it: at most MAX_DIMS non-negative integers
    (numpy takes no more than 64 axes; no model input has a fraction of that)."""
    if (
        not isinstance(shape, list | tuple)
        or len(shape) > MAX_DIMS
        or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape
        )
    ):
        raise BadRequest(
            f'{what} needs "shape": a list of at most {MAX_DIMS} integers from 0 to {MAX_DIM}, '
            f"got {str(shape)[:80]}"
        )
    return list(shape)


class Inputs:
    """A request's input tensors, collected by name in any order and checked as a set: the
    one place V2 JSON, V2 binary and gRPC requests are validated."""

    def __init__(self, sig: Signature) -> None:
        self.sig = sig
        self.by_name = {t.name: i for i, t in enumerate(sig.inputs)}
        self.found: dict[int, np.ndarray] = {}

    def expect(self, name: Any, datatype: Any) -> Tensor:
        """The input named, refusing one the model does not take, takes twice, or in
        another datatype."""
        sig = self.sig
        if not isinstance(name, str) or name not in self.by_name:
            names = ", ".join(f"'{t.name}'" for t in sig.inputs)
            raise BadRequest(f"unknown input {name!r}; model '{sig.model}' takes {names}")
        if self.by_name[name] in self.found:
            raise BadRequest(f"input '{name}' is given twice")
        t = sig.inputs[self.by_name[name]]
        if datatype != t.datatype:
            raise BadRequest(
                f"input '{name}' has datatype {datatype!r}; model '{sig.model}' expects "
                f"{t.datatype}"
            )
        return t

    def from_bytes(self, t: Tensor, shape: list[int], raw: bytes | memoryview) -> None:
        """Little-endian values, as many bytes as the shape needs (the caller checked)."""
        x = np.frombuffer(raw, dtype=t.dtype.newbyteorder("<")).reshape(shape)
        self._add(t, x.astype(t.dtype))

    def from_values(self, t: Tensor, shape: list[int], values: Any) -> None:
        """JSON-like values (nested lists, flat or not), row-major."""
        what = f"input '{t.name}'"
        x = _numbers(values, f"{what} data", t)
        count = math.prod(shape)  # exact: numpy's product wraps at 2**63
        if x.size != count:
            raise BadRequest(f"{what} has {x.size} values; shape {shape} needs {count}")
        self._add(t, x.reshape(shape))

    def _add(self, t: Tensor, x: np.ndarray) -> None:
        self.found[self.by_name[t.name]] = _check_batch(x, t, self.sig, f"input '{t.name}'")

    def done(self) -> Tensors:
        """Every input, in the signature's order; refuses a missing one or unequal counts."""
        sig = self.sig
        missing = [t.describe() for i, t in enumerate(sig.inputs) if i not in self.found]
        if missing:
            raise BadRequest(
                f"missing input {', '.join(missing)}; model '{sig.model}' takes {sig.takes()}"
            )
        return _same_count(tuple(self.found[i] for i in range(len(sig.inputs))), sig)


def nbytes(t: Tensor, shape: list[int]) -> int:
    """The bytes a tensor of this shape takes in the binary (or gRPC raw) encoding."""
    return math.prod(shape) * t.dtype.itemsize  # exact: numpy's product wraps at 2**63


def _inputs(doc: dict, sig: Signature, binary: memoryview) -> Tensors:
    """Every input tensor, by name, in the signature's order; binary data in the request's."""
    given = doc.get("inputs")
    if not isinstance(given, list) or not given:
        count = "one tensor" if len(sig.inputs) == 1 else f"{len(sig.inputs)} tensors"
        raise BadRequest(
            f"\"inputs\" must be a list of {count}; model '{sig.model}' takes {sig.takes()}"
        )
    inputs, offset = Inputs(sig), 0
    for tensor in given:
        if not isinstance(tensor, dict):
            raise BadRequest('each entry of "inputs" must be an object')
        t = inputs.expect(tensor.get("name"), tensor.get("datatype"))
        what = f"input '{t.name}'"
        shape = _shape(tensor, what)
        size = _parameters(tensor, what).get("binary_data_size")
        if size is None:
            if "data" not in tensor:
                raise BadRequest(f'{what} needs "data" (or binary data with "binary_data_size")')
            inputs.from_values(t, shape, tensor["data"])
            continue
        if not isinstance(size, int) or size != nbytes(t, shape):
            raise BadRequest(
                f"{what}: binary_data_size is {size!r}; shape {shape} of {t.datatype} "
                f"needs {nbytes(t, shape)} bytes"
            )
        if offset + size > len(binary):
            raise BadRequest(
                f"{what}: the body has {len(binary) - offset} binary bytes left, "
                f"binary_data_size says {size}"
            )
        inputs.from_bytes(t, shape, binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data follow the inputs unused")
    return inputs.done()


def output_index(name: Any, sig: Signature) -> int:
    """The index of the output named, or a 400 naming it."""
    for i, t in enumerate(sig.outputs):
        if t.name == name:
            return i
    names = ", ".join(f"'{t.name}'" for t in sig.outputs)
    raise BadRequest(f"unknown output {name!r}; model '{sig.model}' gives {names}")


def select_outputs(names: list[str] | None, sig: Signature) -> tuple[int, ...]:
    """The outputs named, in order, each once; every output when none is."""
    if not names:
        return tuple(range(len(sig.outputs)))
    return once(tuple(output_index(name, sig) for name in names), sig)


def once(indices: tuple[int, ...], sig: Signature) -> tuple[int, ...]:
    """A 400 for an output asked for twice: an answer repeating it could be made huge."""
    seen: set[int] = set()
    for index in indices:
        if index in seen:
            raise BadRequest(f"output '{sig.outputs[index].name}' is requested more than once")
        seen.add(index)
    return indices


def _requested(doc: dict, sig: Signature) -> tuple[Requested, ...]:
    """The outputs the request asks for (all when it names none), and which in binary."""
    binary = bool(_parameters(doc, "the request").get("binary_data_output"))
    outputs = doc.get("outputs")
    if not outputs:
        if outputs is not None and not isinstance(outputs, list):
            raise BadRequest('"outputs" must be a list of requested outputs')
        return tuple(Requested(i, binary) for i in select_outputs(None, sig))
    if not isinstance(outputs, list):
        raise BadRequest('"outputs" must be a list of requested outputs')
    chosen = []
    for out in outputs:
        if not isinstance(out, dict):  # even a string that names an output
            raise BadRequest(f'each entry of "outputs" must be an object, got {out!r}')
        index = output_index(out.get("name"), sig)
        params = _parameters(out, f"output '{sig.outputs[index].name}'")
        chosen.append(Requested(index, bool(params.get("binary_data", binary))))
    once(tuple(r.index for r in chosen), sig)
    return tuple(chosen)


def parse_v2(body: bytes, header_length: str | None, sig: Signature) -> Decoded:
    length = _header_length(body, header_length)
    doc = _json(body[:length], "inference header")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest('"id" must be a string')
    inputs = _inputs(doc, sig, memoryview(body)[length:])
    asked = from_parameters(_parameters(doc, "the request"))
    return Decoded(inputs=inputs, id=request_id, outputs=_requested(doc, sig), asked=asked)


def _dumps(doc: dict) -> bytes:
    """numpy arrays written directly, float32 values in their shortest form."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_v1(outputs: Tensors, sig: Signature) -> bytes:
    """With labels: each instance's label, index and probabilities. Without: each instance's
    row of the one output, or an object of every output's rows by name. Beside them, as KServe
    V1 allows, the model and the version that computed them."""
    which = {"model_name": sig.model, "model_version": str(sig.version)}
    if sig.labels:
        probabilities = np.ascontiguousarray(outputs[0])  # orjson takes contiguous rows only
        best = probabilities.argmax(axis=1)
        predictions = [
            {"label": sig.labels[i], "index": int(i), "probabilities": row}
            for i, row in zip(best, probabilities, strict=True)
        ]
        return _dumps({"predictions": predictions, **which})
    rows = [np.ascontiguousarray(out) for out in outputs]
    if len(rows) == 1:
        return _dumps({"predictions": list(rows[0]), **which})
    names = [t.name for t in sig.outputs]
    predictions = [dict(zip(names, row, strict=True)) for row in zip(*rows, strict=True)]
    return _dumps({"predictions": predictions, **which})


def encode_v2(outputs: Tensors, sig: Signature, request: Decoded) -> tuple[bytes, dict]:
    """The V2 response body and its extra headers (the binary header length, when binary)."""
    encoded, raw = [], []
    for index, binary in request.outputs:
        t = sig.outputs[index]
        values = np.ascontiguousarray(outputs[index], dtype=t.dtype)
        tensor: dict[str, Any] = {"name": t.name, "datatype": t.datatype}
        tensor["shape"] = list(values.shape)
        if binary:
            data = values.astype(t.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        else:
            tensor["data"] = values.ravel()
        encoded.append(tensor)
    doc: dict[str, Any] = {
        "model_name": sig.model,
        "model_version": str(sig.version),
        "outputs": encoded,
    }
    if request.id is not None:
        doc["id"] = request.id
    header = _dumps(doc)
    if not raw:
        return header, {}
    return header + b"".join(raw), {BINARY_HEADER: str(len(header))}
