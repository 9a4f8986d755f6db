"""Every error a client can cause, with its HTTP status, in one place.

    ServiceError
    ├── BadRequest          400  malformed JSON or binary header, wrong shape/dtype/count, NaN/Inf
    ├── Unauthorized        401  missing or wrong API key
    ├── NotFound            404  unknown model or version
    ├── PayloadTooLarge     413  body over TENSORGATE_MAX_BODY_BYTES
    ├── UnsupportedMedia    415  a Content-Encoding the service does not decode
    ├── ClientGone          499  the client disconnected before its answer (never sent)
    ├── InferenceFailed     500  the model raised while running a batch
    ├── Overloaded          503  the model's queue is full (with Retry-After)
    ├── Unavailable         503  the model's worker died or is (re)starting (with Retry-After)
    ├── ShuttingDown        503  the server is draining (Retry-After, Connection: close)
    └── Timeout             504  no answer within TENSORGATE_REQUEST_TIMEOUT

The body is always `{"error": "<what is wrong and what was expected>"}` (the V2 convention).
"""

from fastapi import HTTPException
from fastapi.responses import JSONResponse


class ServiceError(HTTPException):
    status: int = 500
    reason: str = "inference_error"  # the tensorgate_rejections_total label

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=self.status, detail=message, headers=headers)


class BadRequest(ServiceError):
    status = 400
    reason = "bad_request"


class Unauthorized(ServiceError):
    status = 401
    reason = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ServiceError):
    status = 404
    reason = "not_found"


class PayloadTooLarge(ServiceError):
    status = 413
    reason = "too_large"


class UnsupportedMedia(ServiceError):
    status = 415
    reason = "unsupported_media"


class ClientGone(ServiceError):
    status = 499  # nginx's "client closed request": counted, never sent
    reason = "client_gone"


class InferenceFailed(ServiceError):
    status = 500
    reason = "inference_error"


class Overloaded(ServiceError):
    status = 503
    reason = "overloaded"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class Unavailable(Overloaded):
    reason = "unavailable"


class ShuttingDown(ServiceError):
    status = 503
    reason = "shutting_down"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1", "Connection": "close"})


class Timeout(ServiceError):
    status = 504
    reason = "timeout"


def for_status(status: int, message: str) -> ServiceError:
    """The error a worker's answer stands for (workers send a status and a message)."""
    cls = next((c for c in ServiceError.__subclasses__() if c.status == status), InferenceFailed)
    return cls(message)


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)
