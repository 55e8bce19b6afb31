"""log.py without a daemon: the timestamp made once a second reads exactly as
logging.Formatter's, whatever order the records' times come in."""

from __future__ import annotations

import logging

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
