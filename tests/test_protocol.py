"""protocol.py's parsers on their own, for every registered model: good bodies come back as the
same float32 batch, and each bad body raises BadRequest (400) saying what was wrong. No server:
the HTTP suite (test_service.py) keeps a smaller table end to end."""

import json
import math
import re
from collections.abc import Callable

import numpy as np
import pytest
from helpers import NAMES

from export.formats import INPUT_NAME, OUTPUT_NAME
from service.errors import BadRequest
from service.protocol import Signature, Tensor, encode_v1, encode_v2, parse_v1, parse_v2
from training import REGISTRY

MAX_INSTANCES = 8
DEEP = 5000  # levels of nesting: past json's and numpy's recursion limits


def signature(name: str) -> Signature:
    dataset = REGISTRY[name].dataset()
    return Signature(
        model=name,
        version=1,
        inputs=(Tensor(INPUT_NAME, "FP32", tuple(dataset.input_shape)),),
        outputs=(Tensor(OUTPUT_NAME, "FP32", (len(dataset.labels),)),),
        labels=dataset.labels,
        max_instances=MAX_INSTANCES,
    )


SIGNATURES = {name: signature(name) for name in NAMES}


def batch(sig: Signature, n: int = 1, value: float = 1.0) -> list:
    return np.full((n, *sig.inputs[0].shape), value, np.float32).tolist()


def size(sig: Signature) -> int:
    return math.prod(sig.inputs[0].shape)


def tensor(sig: Signature, n: int = 1, **fields) -> dict:
    base = {"name": INPUT_NAME, "datatype": "FP32", "shape": [n, *sig.inputs[0].shape]}
    return {**base, "data": [1.0] * (n * size(sig)), **fields}


def v2(doc: dict) -> tuple[bytes, None]:
    return json.dumps(doc).encode(), None


def binary(doc: dict, raw: bytes) -> tuple[bytes, str]:
    head = json.dumps(doc).encode()
    return head + raw, str(len(head))


def binary_tensor(sig: Signature, nbytes: int, n: int = 1) -> dict:
    shape = [n, *sig.inputs[0].shape]
    params = {"binary_data_size": nbytes}
    return {
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": shape, "parameters": params}]
    }


Body = Callable[[Signature], bytes]
V2Body = Callable[[Signature], tuple[bytes, str | None]]


def dumps(doc) -> bytes:
    return json.dumps(doc).encode()


# fmt: off
# NaN and Infinity are not JSON: a JSON body cannot carry them (binary tensors can, and are
# refused as not finite).
BAD_V1: list[tuple[str, Body, str]] = [
    ("malformed JSON", lambda s: b"{not json", "not valid JSON"),
    ("empty body", lambda s: b"", "not valid JSON"),
    ("not UTF-8", lambda s: b"\xff\xfe{}", "not valid JSON"),
    ("a list", lambda s: b"[1, 2]", "must be a JSON object, got list"),
    ("a string", lambda s: b'"x"', "must be a JSON object, got str"),
    ("no instances", lambda s: b"{}", 'needs "instances"'),
    ("instances a number", lambda s: b'{"instances": 5}', '"instances" must be a list'),
    ("instances an object", lambda s: b'{"instances": {"a": 1}}', '"instances" must be a list'),
    ("no instance", lambda s: b'{"instances": []}', "with N >= 1"),
    ("one value too many", lambda s: dumps({"instances": [np.ones(size(s) + 1).tolist()]}), "expects"),
    ("one flat instance", lambda s: dumps({"instances": [1.0] * size(s)}), "expects"),
    ("an extra axis", lambda s: dumps({"instances": [batch(s)]}), "expects"),
    ("ragged", lambda s: dumps({"instances": [batch(s)[0], [1.0]]}), "ragged"),
    ("strings", lambda s: dumps({"instances": [["a"] * size(s)]}), "only numbers"),
    ("booleans", lambda s: dumps({"instances": [[True] * size(s)]}), "only numbers"),
    ("a boolean among numbers", lambda s: dumps({"instances": batch(s)}).replace(b"1.0", b"false", 1), "found a boolean"),
    ("nulls", lambda s: dumps({"instances": [[None] * size(s)]}), "only numbers"),
    ("objects", lambda s: dumps({"instances": [{"x": 1}]}), "only numbers"),
    ("NaN", lambda s: dumps({"instances": batch(s, value=math.nan)}), "not valid JSON"),
    ("Infinity", lambda s: dumps({"instances": batch(s, value=math.inf)}), "not valid JSON"),
    ("-Infinity", lambda s: dumps({"instances": batch(s, value=-math.inf)}), "not valid JSON"),
    ("a huge number", lambda s: dumps({"instances": batch(s)}).replace(b"1.0", b"1e400"), "number is infinity"),
    ("a huge integer", lambda s: dumps({"instances": [[10**400] * size(s)]}), "number is infinity"),
    ("beyond float32", lambda s: dumps({"instances": np.full((1, size(s)), 1e39).reshape(1, *s.inputs[0].shape).tolist()}), "NaN or Inf"),
    ("too many instances", lambda s: dumps({"instances": batch(s, MAX_INSTANCES + 1)}), f"at most {MAX_INSTANCES}"),
    ("nested too deeply", lambda s: b'{"instances": ' + b"[" * DEEP + b"1" + b"]" * DEEP + b"}", "nested too deeply"),
]

BAD_V2: list[tuple[str, V2Body, str]] = [
    ("malformed JSON", lambda s: (b"{not json", None), "not valid JSON"),
    ("not an object", lambda s: (b"[]", None), "must be a JSON object"),
    ("no inputs", lambda s: v2({}), '"inputs" must be a list of one tensor'),
    ("inputs an object", lambda s: v2({"inputs": tensor(s)}), '"inputs" must be a list of one tensor'),
    ("no tensor", lambda s: v2({"inputs": []}), '"inputs" must be a list of one tensor'),
    ("the input twice", lambda s: v2({"inputs": [tensor(s), tensor(s)]}), "input 'input' is given twice"),
    ("input a string", lambda s: v2({"inputs": ["x"]}), "must be an object"),
    ("unknown input", lambda s: v2({"inputs": [tensor(s, name="x")]}), "unknown input 'x'"),
    ("no input name", lambda s: v2({"inputs": [{k: v for k, v in tensor(s).items() if k != "name"}]}), "unknown input None"),
    ("wrong datatype", lambda s: v2({"inputs": [tensor(s, datatype="INT64")]}), "expects FP32"),
    ("no datatype", lambda s: v2({"inputs": [{k: v for k, v in tensor(s).items() if k != "datatype"}]}), "expects FP32"),
    ("shape a string", lambda s: v2({"inputs": [tensor(s, shape="1x30")]}), '"shape"'),
    ("negative dimension", lambda s: v2({"inputs": [tensor(s, shape=[-1, *s.inputs[0].shape])]}), '"shape"'),
    ("boolean dimension", lambda s: v2({"inputs": [tensor(s, shape=[True, *s.inputs[0].shape])]}), '"shape"'),
    ("no shape", lambda s: v2({"inputs": [{k: v for k, v in tensor(s).items() if k != "shape"}]}), '"shape"'),
    ("wrong element count", lambda s: v2({"inputs": [tensor(s, shape=[2, *s.inputs[0].shape])]}), "needs"),
    ("right count, wrong shape", lambda s: v2({"inputs": [tensor(s, shape=[1, size(s)])] if len(s.inputs[0].shape) > 1 else [tensor(s, shape=[size(s), 1])]}), "expects"),
    ("no data", lambda s: v2({"inputs": [{k: v for k, v in tensor(s).items() if k != "data"}]}), '"data"'),
    ("string data", lambda s: v2({"inputs": [tensor(s, data=["a"] * size(s))]}), "only numbers"),
    ("ragged data", lambda s: v2({"inputs": [tensor(s, data=[[1.0], [1.0, 2.0]])]}), "ragged"),
    ("a boolean in the data", lambda s: v2({"inputs": [tensor(s, data=[True] + [1.0] * (size(s) - 1))]}), "found a boolean"),
    ("NaN data", lambda s: v2({"inputs": [tensor(s, data=[math.nan] * size(s))]}), "not valid JSON"),
    ("no instance", lambda s: v2({"inputs": [tensor(s, n=0)]}), "with N >= 1"),
    ("too many instances", lambda s: v2({"inputs": [tensor(s, n=MAX_INSTANCES + 1)]}), f"at most {MAX_INSTANCES}"),
    ("data nested too deeply", lambda s: (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": ' + b"[" * DEEP + b"1" + b"]" * DEEP + b"}]}", None), "nested too deeply"),
    ("unknown output", lambda s: v2({"inputs": [tensor(s)], "outputs": [{"name": "logits"}]}), "unknown output 'logits'"),
    ("a shape whose product wraps numpy's", lambda s: v2({"inputs": [tensor(s, shape=[2**32, 2**32, 30], data=[])]}), "integers from 0 to 2147483647"),
    ("an axis no reshape takes, beside a 0", lambda s: v2({"inputs": [tensor(s, shape=[2**62, 4, 0], data=[])]}), "integers from 0 to 2147483647"),
    ("more axes than numpy takes", lambda s: v2({"inputs": [tensor(s, shape=[1] * 70)]}), "at most 32 integers"),
    ("a binary shape of 0 bytes", lambda s: binary({"inputs": [{**tensor(s, shape=[2**31 - 1, 4, 0]), "parameters": {"binary_data_size": 0}}]}, b""), "expects"),
    ("an output twice", lambda s: v2({"inputs": [tensor(s)], "outputs": [{"name": OUTPUT_NAME}] * 20000}), f"output '{OUTPUT_NAME}' is requested more than once"),
    ("output a string", lambda s: v2({"inputs": [tensor(s)], "outputs": ["x"]}), "must be an object, got 'x'"),
    ("output the name alone", lambda s: v2({"inputs": [tensor(s)], "outputs": [OUTPUT_NAME]}), "must be an object"),
    ("outputs a number", lambda s: v2({"inputs": [tensor(s)], "outputs": 5}), '"outputs" must be a list'),
    ("outputs an object", lambda s: v2({"inputs": [tensor(s)], "outputs": {"name": OUTPUT_NAME}}), '"outputs" must be a list'),
    ("request parameters a number", lambda s: v2({"inputs": [tensor(s)], "parameters": 5}), '"parameters" must be an object'),
    ("input parameters a list", lambda s: v2({"inputs": [tensor(s, parameters=[1])]}), '"parameters" must be an object'),
    ("output parameters a string", lambda s: v2({"inputs": [tensor(s)], "outputs": [{"name": OUTPUT_NAME, "parameters": "x"}]}), '"parameters" must be an object'),
    ("id a number", lambda s: v2({"inputs": [tensor(s)], "id": 7}), '"id" must be a string'),
    ("header length not a number", lambda s: (b"{}", "ten"), "must be an integer"),
    ("header length zero", lambda s: (b"{}", "0"), "the body has 2 bytes"),
    ("header length beyond the body", lambda s: (b"{}", "99"), "the body has 2 bytes"),
    ("binary size wrong", lambda s: binary(binary_tensor(s, 8), bytes(8)), "needs"),
    ("binary size a string", lambda s: binary(binary_tensor(s, "8"), bytes(8)), "binary_data_size is '8'"),
    ("binary bytes missing", lambda s: binary(binary_tensor(s, 4 * size(s)), bytes(8)), "binary bytes left"),
    ("binary bytes unused", lambda s: binary({"inputs": [tensor(s)]}, bytes(4)), "4 bytes of binary data"),
    ("binary NaN", lambda s: binary(binary_tensor(s, 4 * size(s)), np.full(size(s), np.nan, "<f4").tobytes()), "NaN or Inf"),
]
# fmt: on


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("case", "body", "says"), BAD_V1, ids=[c[0] for c in BAD_V1])
def test_a_bad_v1_body_is_a_400_naming_the_problem(name, case, body, says):
    with pytest.raises(BadRequest) as raised:
        parse_v1(body(SIGNATURES[name]), SIGNATURES[name])
    assert raised.value.status == 400 and says in raised.value.message


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("case", "body", "says"), BAD_V2, ids=[c[0] for c in BAD_V2])
def test_a_bad_v2_body_is_a_400_naming_the_problem(name, case, body, says):
    content, header = body(SIGNATURES[name])
    with pytest.raises(BadRequest) as raised:
        parse_v2(content, header, SIGNATURES[name])
    assert raised.value.status == 400 and says in raised.value.message


@pytest.mark.parametrize("name", NAMES)
def test_good_bodies_give_back_the_same_batch_in_every_encoding(name):
    sig = SIGNATURES[name]
    x = np.random.default_rng(0).uniform(0, 16, (3, *sig.inputs[0].shape)).astype(np.float32)
    (got,) = parse_v1(dumps({"instances": x.tolist()}), sig)
    np.testing.assert_array_equal(got, x)
    doc = {"id": "a", "inputs": [tensor(sig, n=3, data=x.ravel().tolist())]}
    parsed = parse_v2(dumps(doc), None, sig)
    np.testing.assert_array_equal(parsed.inputs[0], x)
    assert (parsed.id, parsed.outputs) == ("a", ((0, False),))  # every output, in JSON
    nested = {"inputs": [tensor(sig, n=3, data=x.tolist())]}  # nested data is row-major too
    np.testing.assert_array_equal(parse_v2(dumps(nested), None, sig).inputs[0], x)
    wanted = [{"name": OUTPUT_NAME, "parameters": {"binary_data": True}}]
    body, header = binary({**binary_tensor(sig, x.nbytes, n=3), "outputs": wanted}, x.tobytes())
    parsed = parse_v2(body, header, sig)
    np.testing.assert_array_equal(parsed.inputs[0], x)
    assert parsed.outputs == ((0, True),)


@pytest.mark.parametrize("name", NAMES)
def test_answers_are_encoded_with_labels_and_exact_bytes(name):
    sig = SIGNATURES[name]
    p = np.random.default_rng(1).dirichlet(np.ones(len(sig.labels)), 4).astype(np.float32)
    v1 = json.loads(encode_v1((p,), sig))
    assert (v1["model_name"], v1["model_version"]) == (name, "1")
    predictions = v1["predictions"]
    assert [r["label"] for r in predictions] == [sig.labels[i] for i in p.argmax(axis=1)]
    assert [r["index"] for r in predictions] == p.argmax(axis=1).tolist()
    request = parse_v2(*binary(binary_tensor(sig, 4 * size(sig)), bytes(4 * size(sig))), sig)
    request = type(request)(inputs=request.inputs, id="q", outputs=((0, True),))
    content, headers = encode_v2((p,), sig, request)
    length = int(headers["Inference-Header-Content-Length"])
    doc = json.loads(content[:length])
    assert (doc["model_name"], doc["model_version"], doc["id"]) == (name, "1", "q")
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == p.nbytes
    np.testing.assert_array_equal(np.frombuffer(content[length:], "<f4").reshape(p.shape), p)


# -- several inputs and outputs, the V2 datatypes ------------------------------------------

MIXED = Signature(
    model="mixed",
    version=2,
    inputs=(Tensor("mask", "BOOL", (2,)), Tensor("ids", "UINT8", (2,)), Tensor("h", "FP16", (2,))),
    outputs=(Tensor("y", "FP64", (1,)), Tensor("n", "INT32", (1,))),
    labels=(),
    max_instances=MAX_INSTANCES,
)


def mixed(mask=(True, False), ids=(7, 255), h=(0.5, -2.0)) -> list[dict]:
    return [
        {"name": "mask", "datatype": "BOOL", "shape": [1, 2], "data": list(mask)},
        {"name": "ids", "datatype": "UINT8", "shape": [1, 2], "data": list(ids)},
        {"name": "h", "datatype": "FP16", "shape": [1, 2], "data": list(h)},
    ]


def test_each_datatype_is_parsed_into_its_own_dtype_in_json_and_binary():
    parsed = parse_v2(dumps({"inputs": mixed()[::-1]}), None, MIXED)  # any order
    mask, ids, h = parsed.inputs
    assert (mask.dtype, ids.dtype, h.dtype) == (np.bool_, np.uint8, np.float16)
    assert mask.tolist() == [[True, False]] and ids.tolist() == [[7, 255]]
    assert h.tolist() == [[0.5, -2.0]]
    arrays = [np.array([[True, True]]), np.array([[1, 2]], np.uint8), np.array([[1, 2]], "<f2")]
    header = {"inputs": [{**t, "parameters": {"binary_data_size": a.nbytes}} for t, a in
                         zip(mixed(), arrays, strict=True)]}  # fmt: skip
    for t in header["inputs"]:
        del t["data"]
    parsed = parse_v2(*binary(header, b"".join(a.tobytes() for a in arrays)), MIXED)
    for got, want in zip(parsed.inputs, arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    (rows,) = {len(x) for x in parse_v1(dumps({"instances": [
        {"mask": [True, False], "ids": [1, 2], "h": [0.0, 1.0]}] * 3}), MIXED)}  # fmt: skip
    assert rows == 3


@pytest.mark.parametrize(("case", "inputs", "says"), [
    ("a number for BOOL", mixed(mask=(1, 0)), "only booleans"),
    ("beyond UINT8", mixed(ids=(7, 256)), "beyond UINT8's range"),
    ("negative for UINT8", mixed(ids=(-1, 2)), "beyond UINT8's range"),
    ("a fraction for UINT8", mixed(ids=(1.5, 2)), "only integers for UINT8"),
    ("beyond FP16", mixed(h=(70000.0, 1.0)), "NaN or Inf"),
    ("a missing input", mixed()[:2], "missing input 'h' [N, 2] FP16"),
])  # fmt: skip
def test_a_value_outside_its_datatype_is_a_400_naming_the_input(case, inputs, says):
    with pytest.raises(BadRequest, match=re.escape(says)):
        parse_v2(dumps({"inputs": inputs}), None, MIXED)


def test_requested_outputs_are_answered_in_their_datatypes_json_or_binary():
    y, n = np.array([[0.25], [0.5]]), np.array([[3], [4]], np.int32)
    asked = {
        "inputs": mixed(),
        "outputs": [{"name": "n"}, {"name": "y", "parameters": {"binary_data": True}}],
    }
    request = parse_v2(dumps(asked), None, MIXED)
    content, headers = encode_v2((y, n), MIXED, request)
    length = int(headers["Inference-Header-Content-Length"])
    doc = json.loads(content[:length])
    assert [(o["name"], o["datatype"]) for o in doc["outputs"]] == [("n", "INT32"), ("y", "FP64")]
    assert doc["outputs"][0]["data"] == [3, 4]
    np.testing.assert_array_equal(np.frombuffer(content[length:], "<f8").reshape(2, 1), y)
    predictions = json.loads(encode_v1((y, n), MIXED))["predictions"]  # no labels: by name
    assert predictions == [{"y": [0.25], "n": [3]}, {"y": [0.5], "n": [4]}]
