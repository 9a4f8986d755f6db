"""The error tree (service/errors.py) and its two mappings: to HTTP answers (service/rest.py)
and to gRPC status codes (service/grpc_server.py)."""

import grpc
import orjson
import pytest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from service.errors import (
    BY_REASON,
    InferenceFailed,
    MethodNotAllowed,
    Overloaded,
    Retired,
    ServiceError,
    ShuttingDown,
    Timeout,
    Unavailable,
    for_reason,
)
from service.rest import to_response

ERRORS = sorted(BY_REASON.values(), key=lambda cls: cls.reason)


def test_every_error_has_its_own_reason_and_a_real_grpc_status():
    assert len(ERRORS) == len({cls.reason for cls in ERRORS}) == 14
    for cls in ERRORS:
        assert isinstance(grpc.StatusCode[cls.grpc], grpc.StatusCode), cls
        assert 400 <= cls.status < 600 and cls.__doc__, cls


@pytest.mark.parametrize("cls", [c for c in ERRORS if c is not MethodNotAllowed])
def test_a_workers_failure_comes_back_as_the_same_error_class(cls):
    """Workers send (reason, message); three 503s share a status but not a class."""
    error = for_reason(cls.reason, "why")
    assert type(error) is cls and error.message == "why"


def test_an_unknown_reason_is_an_inference_failure():
    assert type(for_reason("what", "why")) is InferenceFailed


def test_the_503s_keep_their_class_and_their_retry_after():
    for cls in (Overloaded, Unavailable, Retired):
        assert for_reason(cls.reason, "x").headers == {"Retry-After": "1"}
    assert ShuttingDown("x").headers["Connection"] == "close"


def body(response) -> dict:
    return orjson.loads(response.body)


def test_a_service_error_answers_its_status_message_and_headers():
    response = to_response(Retired("version 2 stopped"), "POST", "/v2/models/m/infer")
    assert response.status_code == 503 and body(response) == {"error": "version 2 stopped"}
    assert response.headers["retry-after"] == "1"
    allowed = to_response(MethodNotAllowed("PUT /v2", ["GET"]), "PUT", "/v2")
    assert allowed.status_code == 405 and allowed.headers["allow"] == "GET"


def test_frameworks_errors_and_bugs_answer_in_the_same_format(caplog):
    assert to_response(HTTPException(404), "GET", "/x").status_code == 404
    error = {"loc": ("path", "model"), "msg": "bad", "url": "https://errors.pydantic.dev/x"}
    invalid = to_response(RequestValidationError([error]), "GET", "/x")
    assert invalid.status_code == 400
    assert body(invalid)["error"] == "invalid request: path.model: bad"  # no library URL
    bug = to_response(KeyError("secret internals"), "GET", "/x")
    assert bug.status_code == 500 and "secret" not in body(bug)["error"]
    assert "unhandled error on GET /x" in caplog.text


def test_a_service_error_is_no_web_framework_exception():
    assert ServiceError.__mro__[1:] == (Exception, BaseException, object)
    assert Timeout("late").status == 504 and Timeout.grpc == "DEADLINE_EXCEEDED"
