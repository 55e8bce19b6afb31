"""Prometheus metrics, one registry per runner (so tests can run several runners).

Label values stay bounded: events are labelled by configured name (anything else is
``(unrouted)``), statuses by code, postbacks and rejections by a fixed outcome word;
never a connection id or a raw client-chosen name.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE", "POSTBACK_OUTCOMES", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNROUTED = "(unrouted)"
#: The outcomes of a management POST to a connection (the ``outcome`` label of postbacks).
POSTBACK_OUTCOMES = ("delivered", "gone", "bad_request", "too_large")


class _SendCounters(Collector):
    """Counters the send path keeps itself (ws/sender.py), read at scrape time:
    frames and bytes flushed to clients, stalls and slow consumers."""

    def __init__(self, read: Callable[[], tuple[int, int, int, int]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        frames, size, stalls, slow = self.read()
        yield CounterMetricFamily("twr_messages_out", "Frames sent to clients.", frames)
        yield CounterMetricFamily("twr_bytes_out", "Bytes sent in frames to clients.", size)
        yield CounterMetricFamily(
            "twr_send_buffer_stalls", "Sends that waited for a full send buffer.", stalls
        )
        yield CounterMetricFamily(
            "twr_slow_consumer_disconnects",
            "Clients dropped for leaving frames unread past the send timeout.",
            slow,
        )


class _FrameCounters(Collector):
    """Frames and bytes in: plain ints bumped per frame, read at scrape time.

    Four prometheus_client Counter.inc() calls per message (each takes a lock) cost more
    than the rest of a reply's accounting; the event loop is single-threaded anyway.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        yield CounterMetricFamily("twr_messages_in", "Frames received from clients.", m.messages_in)
        yield CounterMetricFamily(
            "twr_bytes_in", "Bytes (characters of text frames) received from clients.", m.bytes_in
        )


class _Tally:
    """One (event, status) pair: its count, its durations by bucket and their sum."""

    __slots__ = ("buckets", "count", "created", "total")

    def __init__(self, buckets: int) -> None:
        self.count = 0
        self.buckets = [0] * buckets  # counts per bucket, not cumulative
        self.total = 0.0
        self.created = time.time()


class _EventCounters(Collector):
    """Events by name and status, and their durations: plain numbers bumped per event,
    read at scrape time (prometheus_client's Counter and Histogram take a lock per call
    and walk the buckets one by one; the event loop is single-threaded).

    An event costs one dict lookup (``add``); the histogram, which has no status label,
    adds up its event's statuses at scrape time. Exported as prometheus_client's own
    Counter and Histogram would be (the same series, ``_created`` included), the
    histogram with the default buckets.
    """

    BOUNDS = Histogram.DEFAULT_BUCKETS[:-1]  # seconds; the last bucket is +Inf
    _LE = [floatToGoString(b) for b in Histogram.DEFAULT_BUCKETS]

    def __init__(self) -> None:
        self.tallies: dict[tuple[str, int], _Tally] = {}

    def add(self, event: str, status: int, seconds: float) -> None:
        key = (event, status)
        tally = self.tallies.get(key)
        if tally is None:
            tally = self.tallies[key] = _Tally(len(self.BOUNDS) + 1)
        tally.count += 1
        tally.buckets[bisect_left(self.BOUNDS, seconds)] += 1
        tally.total += seconds

    def collect(self) -> Iterable[Metric]:
        events = CounterMetricFamily(
            "twr_events", "Events processed, by event and status code.", labels=["event", "status"]
        )
        by_event: dict[str, list[_Tally]] = {}
        for (event, status), tally in self.tallies.items():
            events.add_metric([event, str(status)], tally.count, created=tally.created)
            by_event.setdefault(event, []).append(tally)
        yield events
        duration = HistogramMetricFamily(
            "twr_handler_duration_seconds", "Time to process an event.", labels=["event"]
        )
        created = GaugeMetricFamily(
            "twr_handler_duration_seconds_created", "Time to process an event.", labels=["event"]
        )
        for event, tallies in by_event.items():
            buckets = [sum(column) for column in zip(*(t.buckets for t in tallies), strict=True)]
            cumulative = list(zip(self._LE, accumulate(buckets), strict=True))
            duration.add_metric([event], cumulative, sum_value=sum(t.total for t in tallies))
            created.add_metric([event], min(t.created for t in tallies))
        yield duration
        yield created


class _ClusterCounters(Collector):
    """Cluster mode's figures, as the node keeps them (cluster/node.py), at scrape time."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def collect(self) -> Iterable[Metric]:
        node = self.node
        yield GaugeMetricFamily("twr_cluster_nodes_alive", "Live nodes.", node.nodes_alive)
        yield GaugeMetricFamily("twr_cluster_redis_up", "Redis answers (1) or not (0).", node.up)
        yield CounterMetricFamily(
            "twr_cluster_redis_reconnects", "Times Redis came back.", node.reconnects
        )
        forwarded = CounterMetricFamily(
            "twr_cluster_forwarded",
            "Management calls forwarded to another node, by outcome.",
            labels=["outcome"],
        )
        for outcome, count in node.forwarded.items():
            forwarded.add_metric([outcome], count)
        yield forwarded
        yield SummaryMetricFamily(
            "twr_cluster_forward_seconds",
            "Time forwarded management calls took.",
            count_value=sum(node.forwarded.values()),
            sum_value=node.forward_seconds,
        )
        yield CounterMetricFamily(
            "twr_cluster_node_lost_disconnects",
            "on_disconnect runs for the connections of lost nodes this node claimed.",
            node.node_lost_disconnects,
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_in = self.bytes_in = 0
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
        self.events = _EventCounters()
        r.register(self.events)
        self.stream_chunks = Counter("twr_stream_chunks", "Stream chunk frames sent.", registry=r)
        self.group_deliveries = Counter(
            "twr_group_deliveries", "Frames of group POSTs flushed to members.", registry=r
        )
        self.postbacks = Counter(
            "twr_postbacks", "Management postbacks, by outcome.", ["outcome"], registry=r
        )
        for outcome in POSTBACK_OUTCOMES:  # every outcome is exported from the start, at 0
            self.postbacks.labels(outcome)

    def watch_connections(
        self, size: Callable[[], int], sends: Callable[[], tuple[int, int, int, int]]
    ) -> None:
        """``size``: open connections; ``sends``: frames and bytes flushed, stalls and
        slow consumers, as the send path counts them."""
        self.open_connections.set_function(size)
        self.registry.register(_SendCounters(sends))

    def event_done(self, event: str, known: bool, status: int, seconds: float) -> None:
        self.events.add(event if known else UNROUTED, status, seconds)

    def received(self, size: int) -> None:
        """One frame of ``size`` went in."""
        self.messages_in += 1
        self.bytes_in += size

    def watch_cluster(self, node: Any) -> None:
        """Cluster mode: the node's figures (cluster/node.py) are exported too."""
        self.registry.register(_ClusterCounters(node))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
