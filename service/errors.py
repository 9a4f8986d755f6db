"""Every error a client can cause, with its HTTP status, in one place.

    ServiceError
    ├── BadRequest          400  malformed JSON or binary header, wrong shape/dtype/count, NaN/Inf
    ├── Unauthorized        401  missing or wrong API key
    ├── NotFound            404  unknown model or version
    ├── MethodNotAllowed    405  a method the path does not take (Allow lists those it does)
    ├── PayloadTooLarge     413  body over TENSORGATE_MAX_BODY_BYTES
    ├── UnsupportedMedia    415  a Content-Encoding the service does not decode
    ├── ClientGone          499  the client disconnected before its answer (never sent)
    ├── InferenceFailed     500  the model raised while running a batch
    ├── Overloaded          503  the model's queue is full (with Retry-After)
    ├── Unavailable         503  the model's worker died or is (re)starting (with Retry-After)
    │   └── Retired         503  the version stopped serving after the request chose it
    ├── ShuttingDown        503  the server is draining (Retry-After, Connection: close)
    └── Timeout             504  no answer within TENSORGATE_REQUEST_TIMEOUT

The body is always `{"error": "<what is wrong and what was expected>"}` (the V2 convention).
"""

import logging

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class ServiceError(HTTPException):
    """An error the client is told about (the docstrings below go into /openapi.json)."""

    status: int = 500
    reason: str = "inference_error"  # the tensorgate_rejections_total label

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=self.status, detail=message, headers=headers)


class BadRequest(ServiceError):
    """Invalid request: malformed body, wrong shape, datatype or count, NaN or Inf."""

    status = 400
    reason = "bad_request"


class Unauthorized(ServiceError):
    """API key missing or wrong (when TENSORGATE_API_KEY is set)."""

    status = 401
    reason = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ServiceError):
    """Unknown model or version."""

    status = 404
    reason = "not_found"


class MethodNotAllowed(ServiceError):
    """The path takes other methods; Allow lists them."""

    status = 405
    reason = "method_not_allowed"

    def __init__(self, what: str, allowed: list[str]) -> None:
        message = f"{what}: method not allowed; this path takes {', '.join(allowed)}"
        super().__init__(message, headers={"Allow": ", ".join(allowed)})


class PayloadTooLarge(ServiceError):
    """Body over TENSORGATE_MAX_BODY_BYTES."""

    status = 413
    reason = "too_large"


class UnsupportedMedia(ServiceError):
    """A Content-Encoding other than gzip, deflate or identity."""

    status = 415
    reason = "unsupported_media"


class ClientGone(ServiceError):
    """The client left before its answer; counted, never sent."""

    status = 499  # nginx's "client closed request": counted, never sent
    reason = "client_gone"


class InferenceFailed(ServiceError):
    """The model raised while running the batch."""

    status = 500
    reason = "inference_error"


class Overloaded(ServiceError):
    """The model's queue is full; Retry-After says when to retry."""

    status = 503
    reason = "overloaded"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class Unavailable(Overloaded):
    """The model's worker died or is (re)starting."""

    reason = "unavailable"


class Retired(Unavailable):
    """The version stopped taking requests after this one chose it: a newer version took
    over, or it was unloaded. The unversioned routes retry on the version serving now."""

    reason = "retired"


class ShuttingDown(ServiceError):
    """The server is draining."""

    status = 503
    reason = "shutting_down"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1", "Connection": "close"})


class Timeout(ServiceError):
    """No answer within TENSORGATE_REQUEST_TIMEOUT."""

    status = 504
    reason = "timeout"


def for_status(status: int, message: str) -> ServiceError:
    """The error a worker's answer stands for (workers send a status and a message)."""
    cls = next((c for c in ServiceError.__subclasses__() if c.status == status), InferenceFailed)
    return cls(message)


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def to_response(exc: Exception, method: str, path: str) -> JSONResponse:
    """What the client gets for an exception, everywhere (FastAPI's handlers, the fast path):
    an HTTP error's status, message and headers; 400 for FastAPI's own validation; else a
    logged 500 that names no internals."""
    if isinstance(exc, StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))
    if isinstance(exc, RequestValidationError):
        return error_response(BadRequest.status, f"invalid request: {exc.errors()}")
    logger.error("unhandled error on %s %s", method, path, exc_info=exc)
    return error_response(500, "internal server error; the server logged the details")
