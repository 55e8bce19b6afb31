"""Faults, proven over real sockets: handlers that raise, hang or block the event loop,
lifecycle hooks that fail, clients that vanish mid-event or mid-postback, and a flood
of connections over ``limits.max_connections`` (issue 7).

Proven elsewhere and not repeated here: a client vanishing mid-stream gets its producer
closed promptly (tests/test_ws_streams.py::test_a_client_vanishing_mid_stream_closes_the_producer),
a stuck client is dropped after ``timeouts.send`` (same file), and the basic 500/504/1008
frames (tests/test_ws.py). The handlers are tests/fixtures/faults/handlers/faults.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from procutil import DEADLINE, Spawner
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from wsutil import (
    HERE,
    PROBE,
    RawClient,
    Serve,
    ask,
    bounded,
    closed_with,
    recv,
    registry,
    send,
    settle,
    stays,
    tornado_connect,
    until,
    ws_url,
)

from tornado_ws_runner.client import connect
from tornado_ws_runner.engine import Event, Request, Service
from tornado_ws_runner.errors import ConfigError
from tornado_ws_runner.settings import load_settings

FAULTS = HERE / "fixtures" / "faults" / "config.yaml"
ENGINE = "tornado_ws_runner.engine"
STREAM_CAP = 3000  # chunks the fixture's endless producer yields at most
BLOCKED = re.compile(r"handler (\S+) of event (\S+) blocked the event loop for ([\d.]+)s")


def tally(kind: str) -> Any:
    """What the fixture handlers counted under ``kind``, by connection id (or event name)."""
    return PROBE.flags.get(kind) or Counter()


def only_id(kind: str = "accepted") -> str:
    """The one connection id counted under ``kind``."""
    (cid,) = tally(kind)
    return str(cid)


def records(caplog: pytest.LogCaptureFixture, level: int, prefix: str = "") -> list[Any]:
    return [r for r in caplog.records if r.levelno >= level and r.name.startswith(prefix)]


async def echo(conn: Any, message_id: str) -> dict[str, Any]:
    frame = await ask(conn, {"name": "echo", "headers": {"message-id": message_id}})
    assert (frame["statusCode"], frame["headers"]["message-id"]) == (200, message_id)
    return frame


def send_close(raw: RawClient, code: int = 1000) -> None:
    """Writes a masked close frame (the raw client has no helper for it)."""
    payload = struct.pack("!H", code)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    raw.writer.write(struct.pack("!BB", 0x88, 0x80 | len(payload)) + mask + masked)


# -- handler faults -----------------------------------------------------------------------


async def test_raising_handler_answers_500_logs_the_traceback_and_the_connection_goes_on(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """A raising handler: a 500 frame, the traceback in the log only, the next echo answered."""
    runner = await serve(FAULTS)
    conn = await tornado_connect(ws_url(runner))
    with caplog.at_level(logging.INFO, logger=ENGINE):
        frame = await ask(conn, {"name": "fail", "headers": {"message-id": "f"}})
    assert (frame["statusCode"], frame["headers"]["message-id"]) == (500, "f")
    assert frame["body"]["message"] == "Internal Server Error"
    assert "secret" not in json.dumps(frame)
    (logged,) = records(caplog, logging.ERROR, ENGINE)
    assert "Failed to handle fail" in logged.getMessage() and logged.exc_info is not None
    assert tally("on_error")["fail"] == 1
    await echo(conn, "next")
    conn.close()


async def test_hanging_handler_answers_504_while_its_connection_answers_other_messages(
    serve: Serve,
) -> None:
    """A hanging handler holds one of two slots; echoes use the other; 504 frees it."""
    runner = await serve(FAULTS, limits={"max_in_flight": 2}, timeouts={"handler": 0.4})
    conn = await tornado_connect(ws_url(runner))
    await send(conn, {"name": "hang", "headers": {"message-id": "h1"}})
    await until(lambda: PROBE.counters["hang_started"] == 1, "the handler to hang")
    for i in range(5):
        await echo(conn, f"e{i}")  # answered one by one in the free slot, before the 504
    late = await recv(conn)
    assert (late["statusCode"], late["headers"]["message-id"]) == (504, "h1")
    assert late["body"]["message"] == "Gateway Timeout."
    assert PROBE.counters["hang_ended"] == 1, "the hanging handler was cancelled"
    # Both slots are free again: two hangs at once, and then the connection still answers.
    for mid in ("h2", "h3"):
        await send(conn, {"name": "hang", "headers": {"message-id": mid}})
    late = [await recv(conn), await recv(conn)]
    assert sorted(f["headers"]["message-id"] for f in late) == ["h2", "h3"]
    assert {f["statusCode"] for f in late} == {504}
    await echo(conn, "after")
    (connection,) = registry(runner)
    assert connection.in_flight == 0
    conn.close()


class Pinger(threading.Thread):
    """A client on its own thread (websockets' sync client) that asks echo in a loop and
    times each answer: it keeps asking while the server's event loop is blocked."""

    LIMIT = 20_000  # round trips at most, so a lost stop signal cannot spin forever

    def __init__(self, url: str, tag: str) -> None:
        super().__init__(name=f"pinger-{tag}", daemon=True)
        self.url = url
        self.tag = tag
        self.latencies: list[float] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from websockets.sync.client import connect as sync_connect

        try:
            with sync_connect(self.url, open_timeout=5, close_timeout=5) as ws:
                for i in range(self.LIMIT):
                    if self.halt.is_set():
                        return
                    mid = f"{self.tag}-{i}"
                    started = time.perf_counter()
                    ws.send(json.dumps({"name": "echo", "headers": {"message-id": mid}}))
                    frame = json.loads(ws.recv(timeout=5))
                    self.latencies.append(time.perf_counter() - started)
                    assert frame["headers"]["message-id"] == mid, frame
        except BaseException as exc:
            self.error = exc


async def test_sync_handler_blocking_the_loop_is_logged_and_delays_every_connection(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """time.sleep(0.3) in a sync handler: a warning names it; others wait, then are answered."""
    runner = await serve(FAULTS, timeouts={"blocking_warning": 0.1})
    pingers = [Pinger(ws_url(runner), tag) for tag in ("a", "b")]
    for pinger in pingers:
        pinger.start()
    try:
        await until(lambda: all(len(p.latencies) >= 5 for p in pingers), "pingers running")
        conn = await tornado_connect(ws_url(runner))
        with caplog.at_level(logging.WARNING, logger=ENGINE):
            frame = await ask(conn, {"name": "sleepy", "headers": {"message-id": "z"}})
        assert (frame["statusCode"], frame["body"]) == (200, {"slept": 0.3})
        marks = [len(p.latencies) for p in pingers]
        await until(
            lambda: all(len(p.latencies) >= m + 5 for p, m in zip(pingers, marks, strict=True)),
            "the pingers to be answered again",
        )
    finally:
        for pinger in pingers:
            pinger.halt.set()
        for pinger in pingers:
            await bounded(asyncio.get_running_loop().run_in_executor(None, pinger.join, 10), 15)
    for pinger in pingers:
        assert pinger.error is None, repr(pinger.error)
        # The round trip in flight while the loop slept waited for it.
        assert max(pinger.latencies) >= 0.2, max(pinger.latencies)
    (warning,) = records(caplog, logging.WARNING, ENGINE)
    match = BLOCKED.search(warning.getMessage())
    assert match, warning.getMessage()
    assert match[1] == "faultSleepyHandler" and match[2] == "sleepy"
    assert float(match[3]) >= 0.3
    assert warning.levelno == logging.WARNING
    conn.close()


async def test_blocking_warning_names_only_sync_calls_over_the_threshold(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only sync calls over the threshold warn (raising ones too); async waits never; 0 is off."""

    async def warnings(service: Service, name: str, seconds: float = 0.15) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=ENGINE):
            await service.process(Event(Request(name, payload={"seconds": seconds})))
        return [r.getMessage() for r in records(caplog, logging.WARNING, ENGINE)]

    PROBE.reset()
    service = Service.load(FAULTS, blocking_warning=0.1)
    assert service.blocking_warning == 0.1
    (line,) = await warnings(service, "sleepy")
    assert line.startswith("handler faultSleepyHandler of event sleepy blocked the event loop")
    assert await warnings(service, "sleepy", 0.0) == []  # under the threshold
    assert await warnings(service, "lazy") == []  # an async handler's await blocks nothing
    assert await warnings(service, "quick") == []
    # A sync handler that blocks and then raises still blocked the loop.
    original = service.routes["fail"].policies[0]
    slow_then_raise = original.handler

    def sleepThenRaiseHandler(event: Event) -> None:
        time.sleep(0.15)
        slow_then_raise(event)

    original.handler = sleepThenRaiseHandler
    lines = await warnings(service, "fail")
    assert any("faultRaiseHandler of event fail blocked" in line for line in lines), lines
    for off in (None, 0):
        quiet = Service.load(FAULTS, blocking_warning=off)
        assert quiet.blocking_warning is None
        assert await warnings(quiet, "sleepy") == []
    PROBE.reset()


def test_blocking_warning_setting_is_read_from_runner_yaml(write: Callable[..., Path]) -> None:
    """timeouts.blocking_warning: 0.1 s by default, read as seconds, negative refused."""
    api = write("config.yaml", "api:\n  events: []\n")
    default = load_settings(write("default.yaml", f"api: {api}\n"))
    assert default.timeouts.blocking_warning == 0.1
    custom = load_settings(write("custom.yaml", f"api: {api}\ntimeouts: {{blocking_warning: 1}}\n"))
    assert custom.timeouts.blocking_warning == 1.0
    with pytest.raises(ConfigError) as bad:
        load_settings(write("bad.yaml", f"api: {api}\ntimeouts:\n  blocking_warning: -1\n"))
    assert "timeouts.blocking_warning" in str(bad.value)


async def test_runner_passes_blocking_warning_to_the_service_and_keeps_it_on_reload(
    serve: Serve,
) -> None:
    """The runner's Service gets timeouts.blocking_warning, and so does a reloaded one."""
    runner = await serve(FAULTS, timeouts={"blocking_warning": 0.25})
    assert runner.state is not None
    assert runner.state.service.blocking_warning == 0.25
    assert await runner.reload()
    assert runner.state.service.blocking_warning == 0.25
    policy = runner.state.service.routes["sleepy"].policies[0]
    assert policy.blocking_warning == 0.25 and not policy.is_async


def test_the_daemon_logs_a_blocking_sync_handler(app: Path, spawn: Spawner) -> None:
    """The real daemon (runner.yaml -> CLI -> Service) logs the line naming the handler."""
    (app / "handlers" / "blocky.py").write_text(
        "import time\n\n\ndef blockyHandler(event):\n    time.sleep(0.2)\n", encoding="utf-8"
    )
    with (app / "config.yaml").open("a", encoding="utf-8") as config:
        config.write("\n    - name: blocky\n      policies:\n        - blockyHandler\n")
    runner_yaml = app / "runner.yaml"
    text = runner_yaml.read_text(encoding="utf-8")
    assert "ping_interval: 0}" in text
    runner_yaml.write_text(
        text.replace("ping_interval: 0}", "ping_interval: 0, blocking_warning: 0.05}"),
        encoding="utf-8",
    )
    daemon = spawn.serving("--conf", str(runner_yaml))

    async def scenario() -> None:
        async with connect(daemon.url) as client:
            assert (await client.call("blocky", timeout=DEADLINE)).status_code == 200

    asyncio.run(scenario())
    match, _ = daemon.wait_for(r"WARNING tornado_ws_runner\.engine: " + BLOCKED.pattern)
    assert match[1] == "blockyHandler" and match[2] == "blocky" and float(match[3]) >= 0.2


# -- lifecycle hooks that fail ----------------------------------------------------------------


async def test_failing_on_connect_closes_1008_internal_server_error_and_routes_nothing(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """on_connect raising a plain exception: 1008 "Internal Server Error", nothing routed."""
    runner = await serve(FAULTS)
    conn = await tornado_connect(ws_url(runner, "/?fail=connect&gate=auth"))
    for i in range(3):
        await send(conn, {"name": "echo", "headers": {"message-id": f"early-{i}"}})
    await until(lambda: tally("connect"), "on_connect to start")
    cid = only_id("connect")
    with caplog.at_level(logging.INFO, logger=ENGINE):
        PROBE.open("auth")
        assert await closed_with(conn) == (1008, "Internal Server Error")
        await until(lambda: tally("disconnect")[cid] == 1, "on_disconnect")
    assert not tally("echo"), "no message of a refused connection is routed"
    assert not tally("accepted")
    assert len(registry(runner)) == 0
    (logged,) = records(caplog, logging.ERROR, ENGINE)
    assert "Failed to handle on_connect" in logged.getMessage()
    assert logged.exc_info is not None, "the operator gets the traceback"
    await stays(lambda: tally("disconnect")[cid] == 1, 0.05, "on_disconnect ran once")


async def test_failing_on_disconnect_is_logged_and_the_registry_is_still_cleaned(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """on_disconnect raising: logged, the connection leaves the registry, others go on."""
    runner = await serve(FAULTS)
    doomed = await tornado_connect(ws_url(runner, "/?fail=disconnect"))
    doomed_id = (await echo(doomed, "d"))["body"]["connectionId"]
    other = await tornado_connect(ws_url(runner))
    other_id = (await echo(other, "o"))["body"]["connectionId"]
    with caplog.at_level(logging.INFO, logger=ENGINE):
        doomed.close()
        await until(lambda: tally("disconnect")[doomed_id] == 1, "on_disconnect")
        await until(lambda: not runner.state.tasks, "the on_disconnect task to end")
    (logged,) = records(caplog, logging.ERROR, ENGINE)
    assert "Failed to handle on_disconnect" in logged.getMessage()
    assert "the disconnect hook broke" in logged.getMessage()
    assert registry(runner).ids() == [other_id]
    await echo(other, "still-here")
    other.close()
    await until(lambda: tally("disconnect")[other_id] == 1, "the other's on_disconnect")
    assert len(registry(runner)) == 0
    assert tally("disconnect")[doomed_id] == 1


async def test_failing_on_error_still_sends_the_original_error_frame(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """on_error raising: the client still gets the 500 frame of the original error."""
    runner = await serve(FAULTS)
    conn = await tornado_connect(ws_url(runner))
    with caplog.at_level(logging.INFO, logger=ENGINE):
        frame = await ask(conn, {"name": "doubleFault", "headers": {"message-id": "dd"}})
    assert (frame["statusCode"], frame["headers"]["message-id"]) == (500, "dd")
    assert frame["body"]["message"] == "Internal Server Error"
    assert tally("on_error")["doubleFault"] == 1
    messages = [r.getMessage() for r in records(caplog, logging.ERROR, ENGINE)]
    assert any("Failed to handle doubleFault" in m for m in messages), messages
    assert any("on_error failed" in m and "on_error broke too" in m for m in messages), messages
    await echo(conn, "next")
    conn.close()


# -- client faults ------------------------------------------------------------------------


async def test_client_vanishing_mid_event_drops_the_reply_quietly(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """A client gone mid-event: the handler finishes, the reply is dropped, nothing logged."""
    runner = await serve(FAULTS)
    raw = await RawClient.connect(runner.ports["listen"], "/vanish")
    assert raw.status == 101
    await until(lambda: tally("accepted"), "on_connect")
    cid = only_id()
    with caplog.at_level(logging.DEBUG):
        await raw.send_text(
            '{"name": "gated", "payload": {"gate": "g"}, "headers": {"message-id": 1}}'
        )
        await until(lambda: tally("gated_started")[cid] == 1, "the handler to start")
        raw.abort()
        await until(lambda: tally("disconnect")[cid] == 1, "on_disconnect")
        assert len(registry(runner)) == 0
        PROBE.open("g")
        await until(lambda: tally("gated_ended")[cid] == 1, "the handler to finish")
        await until(lambda: not runner.state.tasks, "every task to end")
    noisy = records(caplog, logging.WARNING)
    assert noisy == [], [f"{r.name}: {r.getMessage()}" for r in noisy]
    assert tally("disconnect")[cid] == 1


@pytest.mark.parametrize("fault", ["abort", "close_frame", "delete"])
@pytest.mark.parametrize("stuck", ["for_room", "for_flush"])
async def test_postback_stuck_on_a_full_send_buffer_answers_410_when_the_client_goes(
    serve: Serve, stuck: str, fault: str
) -> None:
    """A POST stuck behind a full send buffer answers 410 when the connection closes."""
    send_buffer = 512 * 1024
    runner = await serve(FAULTS, limits={"send_buffer": send_buffer})
    raw = await RawClient.connect(runner.ports["listen"], "/stuck")
    assert raw.status == 101
    await until(lambda: tally("accepted"), "on_connect")
    cid = only_id()
    # Small socket buffers on both ends: "full" is then a fixed size, not whatever the
    # kernel's autotuning allows at the moment (a full socket may take 200 KB more).
    connection = registry(runner).get(cid)
    assert connection is not None
    server_socket = connection.socket.ws_connection.stream.socket
    server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    raw.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    await raw.send_text('{"name": "stream", "payload": {"size": 16384}}')
    for _ in range(3):
        assert (await raw.read_frame())[0] == 0x1
    # The raw client reads no more: the producer fills the socket, then waits for a flush.
    await settle(lambda: tally("stream_chunks")[cid])
    assert not PROBE.flags.get("stream_capped"), "the producer was never held back"
    queued, stalls = connection.pending_bytes, runner.state.watch.stalls
    assert queued > 0
    # for_room: too big to join the queued frame within the bound, it waits for room;
    # for_flush: it fits, is handed to the socket and waits behind the stuck frame.
    size = 600_000 if stuck == "for_room" else 200_000
    base = f"http://127.0.0.1:{runner.ports['management']}/@connections/{cid}"
    post = asyncio.ensure_future(
        AsyncHTTPClient().fetch(
            HTTPRequest(
                base,
                method="POST",
                body=json.dumps({"hello": "x" * size}),
                headers={"Content-Type": "application/json"},
                request_timeout=15,
            ),
            raise_error=False,
        )
    )
    if stuck == "for_room":
        await until(lambda: runner.state.watch.stalls > stalls, "the POST to wait for room")
    else:
        await until(lambda: connection.pending_bytes > queued + size, "the POST's frame queued")
    await stays(lambda: not post.done(), 0.1, "the POST waits while the buffer is full")
    if fault == "abort":
        raw.abort()
    elif fault == "close_frame":
        send_close(raw)
    else:
        deleted = await AsyncHTTPClient().fetch(base, method="DELETE", raise_error=False)
        assert deleted.code == 204
    answer: HTTPResponse = await bounded(post, 9)
    assert answer.code == 410, (answer.code, answer.body)
    body = json.loads(answer.body)
    assert body["statusCode"] == 410 and body["message"] == "Gone."
    await until(lambda: tally("disconnect")[cid] == 1, "on_disconnect")
    await until(lambda: tally("stream_closed")[cid] == 1, "the producer to be closed")
    assert len(registry(runner)) == 0
    if fault != "abort":
        raw.abort()


async def test_a_flood_over_max_connections_is_refused_cleanly_and_the_rest_served(
    serve: Serve,
) -> None:
    """60 upgrades at once with a limit of 20: 20 served, 40 get 503, later ones accepted."""
    limit, flood = 20, 60
    runner = await serve(FAULTS, limits={"max_connections": limit})
    port = runner.ports["listen"]
    clients = await bounded(
        asyncio.gather(*(RawClient.connect(port, f"/flood/{i}") for i in range(flood))), 15
    )
    accepted = [c for c in clients if c.status == 101]
    refused = [c for c in clients if c.status != 101]
    assert len(accepted) == limit
    assert {c.status for c in refused} == {503}
    for client in refused:
        client.writer.close()
    await until(lambda: len(tally("accepted")) == limit, "on_connect of every accepted one")
    assert len(tally("connect")) == limit, "a refused upgrade never runs on_connect"
    assert len(registry(runner)) == limit

    async def round_trip(client: RawClient, i: int) -> None:
        await client.send_text(json.dumps({"name": "echo", "headers": {"message-id": i}}))
        opcode, payload = await client.read_frame()
        assert opcode == 0x1 and json.loads(payload)["headers"]["message-id"] == i

    await bounded(asyncio.gather(*(round_trip(c, i) for i, c in enumerate(accepted))), 15)
    for client in accepted:
        send_close(client)
    await until(lambda: len(registry(runner)) == 0, "the served ones to leave")
    await until(lambda: len(tally("disconnect")) == limit, "their on_disconnect")
    later = await bounded(
        asyncio.gather(*(RawClient.connect(port, "/later") for _ in range(limit))), 15
    )
    assert {c.status for c in later} == {101}
    await bounded(asyncio.gather(*(round_trip(c, i) for i, c in enumerate(later))), 15)
    for client in [*accepted, *later]:
        client.abort()


async def test_a_stream_the_socket_always_takes_does_not_starve_other_connections(
    serve: Serve,
) -> None:
    """A producer that never awaits, to a socket that takes every frame, leaves others served."""
    runner = await serve(FAULTS)
    streaming = await tornado_connect(ws_url(runner))
    other = await tornado_connect(ws_url(runner))
    await echo(other, "warm")
    # Small chunks: the kernel takes all of them at once, so no write ever has to wait.
    await send(streaming, {"name": "stream", "payload": {"size": 64}})
    await until(lambda: sum(tally("stream_chunks").values()) > 0, "the stream to start")
    await echo(other, "meanwhile")
    produced = sum(tally("stream_chunks").values())
    assert produced < STREAM_CAP // 2, f"the echo waited for {produced} chunks"
    streaming.close()
    await until(lambda: sum(tally("stream_closed").values()) == 1, "the producer to be closed")
    other.close()
