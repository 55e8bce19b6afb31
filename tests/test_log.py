"""log.py without a daemon: the timestamp made once a second, and the access line made
without a LogRecord, read exactly as logging.Formatter writes them."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tornado_ws_runner.log import SecondCachingFormatter

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def record_at(created: float) -> logging.LogRecord:
    record = logging.LogRecord("tornado_ws_runner.access", logging.INFO, "", 0, "m", (), None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    return record


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.floats(min_value=1.6e9, max_value=1.9e9, allow_nan=False)
        | st.sampled_from([1_790_000_000.0, 1_790_000_000.999, 1_790_000_001.0]),
        min_size=1,
        max_size=20,
    )
)
def test_lines_read_as_logging_formatter_writes_them(times: list[float]) -> None:
    """Same second, next second, earlier second again: each line is byte for byte the
    standard formatter's."""
    cached, standard = SecondCachingFormatter(FORMAT), logging.Formatter(FORMAT)
    for created in times:
        assert cached.format(record_at(created)) == standard.format(record_at(created))


FORMATS = [
    FORMAT,
    "%(message)s",
    "[%(name)s] %(levelname)-8s|%(message)s %% %(asctime)s",
    "%(asctime)s %(message)s",
]


@settings(max_examples=200, deadline=None)
@given(
    fmt=st.sampled_from(FORMATS),
    times=st.lists(
        st.floats(min_value=1.6e9, max_value=1.9e9, allow_nan=False)
        | st.sampled_from([1_790_000_000.0, 1_790_000_000.999, 1_790_000_001.0]),
        min_size=1,
        max_size=10,
    ),
    message=st.text(),
)
def test_access_lines_made_without_a_record_read_as_the_formatter_writes_them(
    fmt: str, times: list[float], message: str
) -> None:
    """The direct access line (AccessLines) is byte for byte what logging.Formatter makes
    of the same message at the same instant, across seconds in any order."""
    name = "tornado_ws_runner.access"
    clock = iter(times)
    make = SecondCachingFormatter(fmt).line_maker(name, "INFO", clock=lambda: next(clock))
    assert make is not None
    standard = logging.Formatter(fmt)
    for now in times:
        record = record_at(now)
        record.name, record.msg = name, message
        assert make(message) == standard.format(record)


@pytest.mark.parametrize(
    "fmt",
    [
        "%(process)d %(message)s",
        "%(asctime)s %(lineno)d %(message)s",
        "%(created)f",
        "%(message)s twice: %(message)s",
        "%(asctime)s without the message",
    ],
)
def test_formats_showing_more_go_through_logging(fmt: str) -> None:
    """A format with a field a line made without a record cannot fill, or without the
    message once, gets no maker."""
    assert SecondCachingFormatter(fmt).line_maker("x", "INFO") is None
