"""The log formats (service/logs.py): a JSON record per line with the documented fields, an
error's traceback included; text as before; the access record's level."""

import json
import logging

import pytest

from service.errors import BadRequest, InferenceFailed, Overloaded, Timeout
from service.logs import formatter, level


def record(message: str, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("service.x", logging.WARNING, __file__, 1, message, (7,), exc_info)


def test_a_json_record_has_time_level_logger_process_and_message():
    line = formatter("json").format(record("answered %d"))
    fields = json.loads(line)
    assert set(fields) == {"time", "level", "logger", "process", "message"}
    assert (fields["level"], fields["logger"], fields["message"]) == (
        "WARNING",
        "service.x",
        "answered 7",
    )
    assert fields["time"].endswith("+00:00") and "T" in fields["time"]  # ISO 8601, UTC


def test_an_error_logged_with_its_exception_carries_the_traceback_in_one_line():
    try:
        raise ValueError("bad")
    except ValueError as e:
        line = formatter("json").format(record("failed %d", (ValueError, e, e.__traceback__)))
    assert "\n" not in line
    assert "ValueError: bad" in json.loads(line)["exc_info"]


def test_uvicorns_coloured_copy_of_a_message_is_left_out():
    r = record("Started server process [%d]")
    r.color_message = "Started server process [\x1b[36m%d\x1b[0m]"
    assert "color_message" not in json.loads(formatter("json").format(r))


def test_text_is_level_logger_message():
    assert formatter("text").format(record("answered %d")) == "WARNING service.x: answered 7"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, logging.INFO),
        (BadRequest("no"), logging.INFO),
        (Overloaded("full"), logging.WARNING),
        (Timeout("late"), logging.WARNING),
        (InferenceFailed("the model raised"), logging.ERROR),
        (RuntimeError("a bug"), logging.ERROR),
    ],
)
def test_an_access_records_level_is_error_for_a_fault_warning_for_other_5xx(error, expected):
    assert level(error) == expected
