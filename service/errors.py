"""Every error a client can cause, in one place: its HTTP status, its gRPC status code and the
reason it is counted under. Plain exceptions: the data plane and the engine raise them, and
each transport maps them to its own answer (rest.py to HTTP, grpc_server.py to gRPC).

    ServiceError
    ├── BadRequest          400  INVALID_ARGUMENT    malformed body, wrong shape/dtype/count, NaN
    ├── Unauthorized        401  UNAUTHENTICATED     missing or wrong API key
    ├── NotFound            404  NOT_FOUND           unknown model or version
    ├── MethodNotAllowed    405  UNIMPLEMENTED       a method the path does not take (see Allow)
    ├── PayloadTooLarge     413  RESOURCE_EXHAUSTED  body over TENSORGATE_MAX_BODY_BYTES
    ├── UnsupportedMedia    415  INVALID_ARGUMENT    a Content-Encoding the service does not decode
    ├── ClientGone          499  CANCELLED           the client left before its answer (never sent)
    ├── InferenceFailed     500  INTERNAL            the model raised while running a batch
    ├── Overloaded          503  UNAVAILABLE         the model's queue is full (with Retry-After)
    │   └── Unavailable     503  UNAVAILABLE         the model's worker died or is (re)starting
    │       └── Retired     503  UNAVAILABLE         the version stopped after the request chose it
    ├── ShuttingDown        503  UNAVAILABLE         the server is draining (Connection: close)
    └── Timeout             504  DEADLINE_EXCEEDED   no answer within TENSORGATE_REQUEST_TIMEOUT

Over HTTP the body is always `{"error": "<what is wrong and what was expected>"}` (the V2
convention); over gRPC the message is the status's details.
"""

from collections.abc import Iterator


class ServiceError(Exception):
    """An error the client is told about (the docstrings below go into /openapi.json)."""

    status: int = 500  # the HTTP status
    grpc: str = "INTERNAL"  # the name of the grpc.StatusCode
    reason: str = "inference_error"  # the tensorgate_rejections_total label; unique per class

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}  # HTTP headers the answer carries (Retry-After, Allow...)


class BadRequest(ServiceError):
    """Invalid request: malformed body; wrong shape, datatype or count; NaN or Inf; a version
    that is no version number."""

    status, grpc, reason = 400, "INVALID_ARGUMENT", "bad_request"


class Unauthorized(ServiceError):
    """API key missing or wrong (when TENSORGATE_API_KEY is set)."""

    status, grpc, reason = 401, "UNAUTHENTICATED", "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ServiceError):
    """Unknown model or version."""

    status, grpc, reason = 404, "NOT_FOUND", "not_found"


class MethodNotAllowed(ServiceError):
    """The path takes other methods; Allow lists them."""

    status, grpc, reason = 405, "UNIMPLEMENTED", "method_not_allowed"

    def __init__(self, what: str, allowed: list[str]) -> None:
        message = f"{what}: method not allowed; this path takes {', '.join(allowed)}"
        super().__init__(message, headers={"Allow": ", ".join(allowed)})


class PayloadTooLarge(ServiceError):
    """Body over TENSORGATE_MAX_BODY_BYTES; the connection closes (Connection: close), so
    the rest of the body is never read."""

    status, grpc, reason = 413, "RESOURCE_EXHAUSTED", "too_large"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class UnsupportedMedia(ServiceError):
    """A Content-Encoding other than gzip, deflate or identity."""

    status, grpc, reason = 415, "INVALID_ARGUMENT", "unsupported_media"


class ClientGone(ServiceError):
    """The client left before its answer; counted, never sent."""

    status, grpc, reason = 499, "CANCELLED", "client_gone"  # 499: nginx's "client closed"


class InferenceFailed(ServiceError):
    """The model raised while running the batch."""

    status, grpc, reason = 500, "INTERNAL", "inference_error"


class Overloaded(ServiceError):
    """The model's queue is full; Retry-After says when to retry."""

    status, grpc, reason = 503, "UNAVAILABLE", "overloaded"

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

    status, grpc, reason = 503, "UNAVAILABLE", "shutting_down"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1", "Connection": "close"})


class Timeout(ServiceError):
    """No answer within TENSORGATE_REQUEST_TIMEOUT."""

    status, grpc, reason = 504, "DEADLINE_EXCEEDED", "timeout"


class DeadlineExceeded(Timeout):
    """The request's own deadline (its timeout parameter, Request-Timeout header or gRPC
    deadline) passed while it waited, or could not be met when it arrived: never computed."""

    reason = "deadline"


def _all(cls: type[ServiceError]) -> Iterator[type[ServiceError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _all(sub)


BY_REASON: dict[str, type[ServiceError]] = {cls.reason: cls for cls in _all(ServiceError)}


def for_reason(reason: str, message: str) -> ServiceError:
    """The error a worker's answer stands for (workers send the reason and a message);
    InferenceFailed for a reason no class has."""
    cls = BY_REASON.get(reason, InferenceFailed)
    if cls is MethodNotAllowed:  # takes the allowed methods, which no worker raises
        return InferenceFailed(message)
    return cls(message)
