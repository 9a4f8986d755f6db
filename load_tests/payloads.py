"""What the load test sends and how it judges answers: plain functions, no locust import.

The bodies are built from the model repository alone: each version's manifest (tensor names,
labels) and the held-out inputs export keeps beside the artifacts (examples.npy).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tritonclient.grpc import service_pb2

from artifacts.manifest import EXAMPLES_NAME, Manifest, read_manifest, versions
from service.protocol import BINARY_HEADER

PROTOCOLS = ("v1", "v2", "v2-binary", "grpc")
PAYLOADS = 64  # distinct request bodies per model and protocol


@dataclass
class Case:
    """One model and protocol: its endpoint, request bodies and what a right answer looks like."""

    model: str
    protocol: str
    path: str  # the HTTP path; "" for gRPC
    bodies: list[tuple[bytes, dict]]  # gRPC: (ModelInferRequest, {})
    instances: int
    labels: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.model} {self.protocol}"


def weights(spec: str, known: tuple[str, ...] | list[str]) -> dict[str, int]:
    parsed = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in known or not value.isdigit():
            raise ValueError(f"weight {item!r}: expected NAME=INTEGER with NAME one of {known}")
        parsed[key] = int(value)
    return parsed


class Served:
    """What a load test needs of one model: the highest version's manifest and examples."""

    def __init__(self, repository: Path, model: str) -> None:
        found = versions(repository / model)
        if not found:
            raise ValueError(f"{repository / model}: no complete version of model {model!r}")
        folder = repository / model / str(found[-1])
        self.manifest: Manifest = read_manifest(folder)
        if self.manifest.files.examples is None:
            raise ValueError(f"{folder}: no {EXAMPLES_NAME}; export the model again")
        self.examples: np.ndarray = np.load(folder / EXAMPLES_NAME, allow_pickle=False)


def served_models(repository: Path) -> list[str]:
    """The models of a repository the load test can drive, by folder name: those whose
    highest version has examples.npy (an imported file's has none, so it is left out)."""
    found = (p for p in repository.iterdir() if p.is_dir() and versions(p))
    return sorted(
        p.name for p in found if read_manifest(p / str(versions(p)[-1])).files.examples is not None
    )


def request_body(
    protocol: str, rows: np.ndarray, request_id: str, manifest: Manifest
) -> tuple[bytes, dict]:
    if protocol == "v1":
        return json.dumps({"instances": rows.tolist()}).encode(), {}
    input_name, output_name = manifest.inputs[0].name, manifest.outputs[0].name
    tensor = {"name": input_name, "datatype": "FP32", "shape": list(rows.shape)}
    if protocol == "v2":
        tensor["data"] = rows.ravel().tolist()
        return json.dumps({"id": request_id, "inputs": [tensor]}).encode(), {}
    raw = rows.astype("<f4").tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    wanted = [{"name": output_name, "parameters": {"binary_data": True}}]
    header = json.dumps({"id": request_id, "inputs": [tensor], "outputs": wanted}).encode()
    return header + raw, {BINARY_HEADER: str(len(header))}


def grpc_request(
    rows: np.ndarray, request_id: str, manifest: Manifest
) -> service_pb2.ModelInferRequest:
    """ModelInfer's request as tritonclient.grpc sends it: the input in raw_input_contents."""
    request = service_pb2.ModelInferRequest(model_name=manifest.name, id=request_id)
    request.inputs.add(name=manifest.inputs[0].name, datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(rows.astype("<f4").tobytes())
    return request


def build_case(
    model: str, protocol: str, instances: int, rng: np.random.Generator, served: Served
) -> Case:
    held_out, manifest = served.examples, served.manifest
    bodies = []
    for i in range(PAYLOADS):
        rows = held_out[rng.integers(0, len(held_out), instances)]
        if protocol == "grpc":
            bodies.append((grpc_request(rows, str(i), manifest), {}))
        else:
            bodies.append(request_body(protocol, rows, str(i), manifest))
    path = f"/v1/models/{model}:predict" if protocol == "v1" else f"/v2/models/{model}/infer"
    path = "" if protocol == "grpc" else path
    return Case(model, protocol, path, bodies, instances, tuple(manifest.labels))


def _probabilities_ok(p: np.ndarray, case: Case) -> str | None:
    if p.shape != (case.instances, len(case.labels)):
        return (
            f"probabilities of shape {list(p.shape)}, expected {[case.instances, len(case.labels)]}"
        )
    if not (np.all(p >= 0) and np.allclose(p.sum(axis=1), 1, atol=1e-3)):
        return "probabilities that are not a distribution"
    return None


def check(case: Case, response) -> str | None:
    """What is wrong with a response, or None when it is a right answer."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {(response.text or '')[:200]}"
    body = response.content
    if case.protocol == "v1":
        predictions = json.loads(body)["predictions"]
        p = np.array([row["probabilities"] for row in predictions], dtype=np.float32)
        wrong = _probabilities_ok(p, case)
        bad_label = any(
            row["label"] != case.labels[int(np.argmax(row["probabilities"]))] for row in predictions
        )
        return wrong or ("a label that is not the most probable one" if bad_label else None)
    length = int(response.headers.get(BINARY_HEADER) or len(body))
    doc = json.loads(body[:length])
    (output,) = doc["outputs"]
    if case.protocol == "v2":
        p = np.array(output["data"], dtype=np.float32).reshape(output["shape"])
    else:
        size = output.get("parameters", {}).get("binary_data_size")
        if size != len(body) - length:
            return f"binary_data_size {size} for {len(body) - length} bytes of binary data"
        p = np.frombuffer(body[length:], dtype="<f4").reshape(output["shape"])
    return _probabilities_ok(p, case)


def check_grpc(case: Case, response: service_pb2.ModelInferResponse) -> str | None:
    """What is wrong with a gRPC answer, or None when it is a right one."""
    (output,) = response.outputs
    (raw,) = response.raw_output_contents
    p = np.frombuffer(raw, dtype="<f4").reshape(list(output.shape))
    return _probabilities_ok(p, case)
