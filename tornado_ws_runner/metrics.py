"""Prometheus metrics, one registry per runner (so tests can run several runners).

Label values stay bounded: events are labelled by configured name (anything else is
``(unrouted)``), statuses by code, postbacks and rejections by a fixed outcome word;
never a connection id or a raw client-chosen name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "POSTBACK_OUTCOMES", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNROUTED = "(unrouted)"
#: The outcomes of a management POST to a connection (the ``outcome`` label of postbacks).
POSTBACK_OUTCOMES = ("delivered", "gone", "bad_request", "too_large")


class _RegistryCounters(Collector):
    """Counters the connection registry keeps itself, read at scrape time."""

    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        stalls, slow = self.read()
        yield CounterMetricFamily(
            "twr_send_buffer_stalls", "Sends that waited for a full send buffer.", stalls
        )
        yield CounterMetricFamily(
            "twr_slow_consumer_disconnects",
            "Clients dropped for leaving frames unread past the send timeout.",
            slow,
        )


class _FrameCounters(Collector):
    """Frames and bytes in and out: plain ints bumped per frame, read at scrape time.

    Four prometheus_client Counter.inc() calls per message (each takes a lock) cost more
    than the rest of a reply's accounting; the event loop is single-threaded anyway.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        yield CounterMetricFamily("twr_messages_in", "Frames received from clients.", m.messages_in)
        yield CounterMetricFamily("twr_messages_out", "Frames sent to clients.", m.messages_out)
        yield CounterMetricFamily(
            "twr_bytes_in", "Bytes (characters of text frames) received from clients.", m.bytes_in
        )
        yield CounterMetricFamily("twr_bytes_out", "Bytes sent in frames to clients.", m.bytes_out)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0
        r.register(_FrameCounters(self))
        self.open_connections = Gauge(
            "twr_connections_open", "Open WebSocket connections.", registry=r
        )
        self.opened = Counter(
            "twr_connections_opened", "WebSocket connections accepted.", registry=r
        )
        self.closed = Counter("twr_connections_closed", "WebSocket connections closed.", registry=r)
        self.rejected = Counter(
            "twr_connections_rejected", "Connections refused, by reason.", ["reason"], registry=r
        )
        self.events = Counter(
            "twr_events",
            "Events processed, by event and status code.",
            ["event", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "twr_handler_duration_seconds", "Time to process an event.", ["event"], registry=r
        )
        self.stream_chunks = Counter("twr_stream_chunks", "Stream chunk frames sent.", registry=r)
        self.postbacks = Counter(
            "twr_postbacks", "Management postbacks, by outcome.", ["outcome"], registry=r
        )
        self._event_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        for outcome in POSTBACK_OUTCOMES:  # every outcome is exported from the start, at 0
            self.postbacks.labels(outcome)

    def watch_registry(
        self, size: Callable[[], int], counters: Callable[[], tuple[int, int]]
    ) -> None:
        self.open_connections.set_function(size)
        self.registry.register(_RegistryCounters(counters))

    def event_done(self, event: str, known: bool, status: int, seconds: float) -> None:
        key = (event if known else UNROUTED, status)
        children = self._event_children.get(key)
        if children is None:
            # Label lookups cost more than the increments; the key set is bounded
            # (configured names x status codes), so the cache is too.
            children = (self.events.labels(key[0], str(status)), self.duration.labels(key[0]))
            self._event_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def received(self, size: int) -> None:
        """One frame of ``size`` went in."""
        self.messages_in += 1
        self.bytes_in += size

    def sent(self, size: int) -> None:
        """One frame of ``size`` bytes went out."""
        self.messages_out += 1
        self.bytes_out += size

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
