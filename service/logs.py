"""Log records as text, or as one JSON object per line (TENSORGATE_LOG_FORMAT=json, through
python-json-logger), alike in every process: the main one and the HTTP processes forked from
it (uvicorn's and LitServe's loggers go through the root logger: `python -m service` and
engine/lit.py see to it), and the spawned inference workers, which call `configure` too."""

import logging
from typing import Literal, NamedTuple

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]
TEXT = "%(levelname)s %(name)s: %(message)s"
# a JSON record's fields: "time" (UTC, ISO 8601), "level", "logger", "process", "message",
# and "exc_info" with the traceback of an error logged with one
JSON_FIELDS = "%(levelname)s %(name)s %(process)d %(message)s"
RENAMED = {"levelname": "level", "name": "logger"}
RESERVED = [*RESERVED_ATTRS, "color_message"]  # not fields: uvicorn's ANSI-coloured copy


def formatter(kind: LogFormat) -> logging.Formatter:
    if kind == "json":
        return JsonFormatter(
            JSON_FIELDS, rename_fields=RENAMED, timestamp="time", reserved_attrs=RESERVED
        )
    return logging.Formatter(TEXT)


def configure(level: str, kind: LogFormat) -> None:
    """The process's root logger: `level` (any case) to stderr in the chosen format."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(kind))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


ACCESS = logging.getLogger("tensorgate.access")


class Access(NamedTuple):
    """One inference request, as the access log records it (TENSORGATE_ACCESS_LOG)."""

    request_id: str  # the client's X-Request-ID, else its V2/gRPC `id`, else one made here
    model: str
    version: int  # 0: none was serving
    protocol: str  # v1, v2 or grpc
    status: str  # the HTTP status, or the gRPC status code's name
    ms: float  # from the request's arrival to its answer
    queue_ms: float | None  # in the worker's queue; None: not computed (a cache hit, an error)
    compute_ms: float | None  # its batch's model call
    trace_id: str | None  # where the request is traced (TENSORGATE_TRACING)


def printable(text: str, limit: int = 128) -> str:
    """A client's id as part of one line of the log: escaped, and cut to `limit` characters."""
    return repr(text[:limit])[1:-1]


def level(error: Exception | None) -> int:
    """An access record's level: ERROR for a server fault (a 500: the model or the server
    failed), WARNING for the other 5xx (overload, a drain, a timeout), else INFO."""
    status = 200 if error is None else getattr(error, "status", 500)
    if status == 500:
        return logging.ERROR
    return logging.WARNING if status > 500 else logging.INFO


def access(record: Access, error: Exception | None) -> None:
    """Log the record, with the error's message if it failed. Every value is a field of a
    JSON record, and in the text of a text one."""
    timing = (
        ""
        if record.queue_ms is None
        else (f" (queue {record.queue_ms:.2f} ms, compute {record.compute_ms:.2f} ms)")
    )
    traced = f" trace {record.trace_id}" if record.trace_id else ""
    text = (
        f"{record.protocol} {record.model} v{record.version} {record.status} "
        f"{record.ms:.2f} ms{timing} request {record.request_id}{traced}"
    )
    fields = record._asdict()
    if error is not None:
        text += f": {error}"
        fields["error"] = str(error)
    ACCESS.log(level(error), text, extra=fields)
