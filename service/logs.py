"""Log records as text, or as one JSON object per line (TENSORGATE_LOG_FORMAT=json, through
python-json-logger), alike in every process: the main one and the HTTP processes forked from
it (uvicorn's and LitServe's loggers go through the root logger: `python -m service` and
engine/lit.py see to it), and the spawned inference workers, which call `configure` too."""

import logging
from typing import Literal

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
