"""Shared helpers of the WebSocket runner tests.

- ``PROBE``: what the fixture handlers (tests/fixtures/ws/handlers/app.py) saw and did;
  they import this module, so a test and its handlers share one object.
- ``serving``/``fresh_loop``: the bodies of the ``serve`` and ``io_loop`` fixtures each
  test module declares: real runners on 127.0.0.1 with free ports, stopped after the
  test, on a fresh Tornado IOLoop (the tests run on it via pytest-tornasync).
- Clients: Tornado's and the ``websockets`` library's behind the same small helpers,
  and a raw-TCP client for peers that misbehave (never answer pings, vanish).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import tornado.httpclient
import tornado.ioloop
import tornado.websocket
from procutil import wait_until
from tornado.httpclient import HTTPRequest, HTTPResponse

from tornado_ws_runner.runner import WsRunner
from tornado_ws_runner.settings import RunnerSettings

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "ws"
CONFIG = FIXTURES / "config.yaml"  # no catchall: unknown names answer 501
CATCHALL_CONFIG = FIXTURES / "catchall" / "config.yaml"  # the same handlers plus catchall
TIMEOUT = 5.0  # seconds any single awaited condition may take before the test fails


# -- the probe the fixture handlers report to --------------------------------------------


class Probe:
    """Everything the fixture handlers record, reset around every test."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        #: (kind, detail) in the order things happened: connect/connected/message/disconnect.
        self.log: list[tuple[str, Any]] = []
        self.connects: list[Any] = []  # on_connect events
        self.events: list[Any] = []  # message events of echo/catchall
        self.disconnects: list[Any] = []  # on_disconnect events
        self.counters: Counter[str] = Counter()
        self.flags: dict[str, Any] = {}
        self._gates: dict[str, asyncio.Event] = {}

    def gate(self, name: str) -> asyncio.Event:
        """An asyncio.Event a handler waits on until the test opens it."""
        return self._gates.setdefault(name, asyncio.Event())

    def open(self, name: str) -> None:
        self.gate(name).set()

    def disconnects_of(self, connection_id: str) -> list[Any]:
        return [e for e in self.disconnects if e.request.headers["connection-id"] == connection_id]

    def connection_ids(self) -> list[str]:
        return [e.request.headers["connection-id"] for e in self.connects]


PROBE = Probe()


async def until(predicate: Callable[[], Any], what: str = "", timeout: float = TIMEOUT) -> None:
    """Waits, in short awaits, until ``predicate()`` is true; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.005)


async def stays(predicate: Callable[[], Any], seconds: float, what: str = "") -> None:
    """Checks, in short awaits, that ``predicate()`` holds for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), f"no longer true: {what or predicate}"
        await asyncio.sleep(0.005)


async def bounded(awaitable: Awaitable[Any], timeout: float = TIMEOUT) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


# -- runners --------------------------------------------------------------------------------


Serve = Callable[..., Awaitable[WsRunner]]


def make_settings(config: Path = CONFIG, **sections: Any) -> RunnerSettings:
    """Settings on 127.0.0.1 with free ports; ``limits={"max_in_flight": 2}`` and the like."""
    s = RunnerSettings(api=str(config))
    s.listen.host = "127.0.0.1"
    s.listen.port = 0
    s.management.port = 0
    s.timeouts.drain = 2.0
    s.logging.access = False
    for section, values in sections.items():
        if not isinstance(values, dict):
            setattr(s, section, values)
            continue
        target = getattr(s, section)
        for key, value in values.items():
            assert hasattr(target, key), f"no setting {section}.{key}"
            setattr(target, key, value)
    return s


def fresh_loop() -> Iterator[tornado.ioloop.IOLoop]:
    """The body of each test module's ``io_loop`` fixture: a new IOLoop per test.

    pytest-tornasync's own fixture calls the deprecated ``make_current``; this one does
    not need to, since the plugin runs the test with ``io_loop.run_sync``.
    """
    loop = tornado.ioloop.IOLoop(make_current=False)
    yield loop
    loop.run_sync(_end_tasks)
    loop.close(all_fds=True)


async def _end_tasks() -> None:
    """Cancels what a test left running (a client's frame loop, say) and lets it end, as
    ``asyncio.run`` does: a pending task collected later would be reported in another test.
    """
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=TIMEOUT)


class LoopErrors(logging.Handler):
    """Collects ERROR records of asyncio and Tornado: callbacks that raised, tasks whose
    exception nobody retrieved, uncaught exceptions in handlers."""

    LOGGERS = ("asyncio", "tornado")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> LoopErrors:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)


def serving(io_loop: tornado.ioloop.IOLoop) -> Iterator[Serve]:
    """The body of each test module's ``serve`` fixture.

    ``runner = await serve(limits={...}, timeouts={...})`` starts a runner; every runner
    started is stopped after the test, and the probe is reset around it. The test fails
    if asyncio or Tornado logged an error meanwhile (a callback that raised, a task
    exception never retrieved, an uncaught exception in a handler).
    """
    PROBE.reset()
    runners: list[WsRunner] = []

    async def start(config: Path = CONFIG, **sections: Any) -> WsRunner:
        runner = WsRunner(make_settings(config, **sections))
        await runner.start()
        runners.append(runner)
        return runner

    with LoopErrors() as errors:
        yield start
        for runner in runners:
            io_loop.run_sync(runner.stop, timeout=30)
    PROBE.reset()
    assert not errors.records, "\n".join(
        f"{r.name}: {r.getMessage()}\n{r.exc_text or ''}" for r in errors.records
    )


def openssl_certificate(folder: Path) -> tuple[str, str]:
    """(key, cert): a self-signed certificate for 127.0.0.1, made with the openssl command."""
    key, cert = folder / "server.key", folder / "server.crt"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "1",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(cert),
            "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return str(key), str(cert)


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """Starts redis-server on a unix socket in ``folder``; yields its URL; stops it (by
    its PID) after. Persistence is off: nothing is written but the socket."""
    sock = folder / "redis.sock"
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until("redis-server's socket", lambda: proc.poll() is None and sock.exists(), TIMEOUT)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


async def management(runner: WsRunner, method: str, path: str, body: Any = None) -> HTTPResponse:
    """A request to the runner's management port; ``body`` is sent as JSON."""
    data = None if body is None else json.dumps(body)
    if data is None and method in ("POST", "PUT"):
        data = ""
    return await tornado.httpclient.AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{runner.ports['management']}{path}",
        method=method,
        body=data,
        headers={"Content-Type": "application/json"},
        raise_error=False,
        request_timeout=TIMEOUT,
    )


async def identified_client(runner: WsRunner) -> tuple[Any, str]:
    """A client of the WebSocket fixture service and its connection id (as the echo
    handler saw it)."""
    conn = await tornado_connect(ws_url(runner))
    await ask(conn, {"name": "echo", "headers": {"message-id": "id"}})
    return conn, str(PROBE.events[-1].request.headers["connection-id"])


def ws_url(runner: WsRunner, path: str = "/any/path?x=1", tls: bool = False) -> str:
    if tls:
        return f"wss://127.0.0.1:{runner.ports['tls']}{path}"
    return f"ws://127.0.0.1:{runner.ports['listen']}{path}"


def registry(runner: WsRunner) -> Any:
    assert runner.state is not None
    return runner.state.registry


# -- clients -------------------------------------------------------------------------------

Client = Any  # a tornado WebSocketClientConnection or a websockets ClientConnection


async def tornado_connect(
    url: str,
    subprotocols: list[str] | None = None,
    headers: dict[str, str] | None = None,
    **request: Any,
) -> tornado.websocket.WebSocketClientConnection:
    req = HTTPRequest(url, headers=headers or {}, **request)
    return await bounded(tornado.websocket.websocket_connect(req, subprotocols=subprotocols))


def websockets_connect(url: str, **kwargs: Any) -> Any:
    """``async with websockets_connect(url) as ws``: the independent client."""
    from websockets.asyncio.client import connect

    kwargs.setdefault("open_timeout", TIMEOUT)
    kwargs.setdefault("close_timeout", TIMEOUT)
    return connect(url, **kwargs)


def _is_tornado(conn: Client) -> bool:
    return isinstance(conn, tornado.websocket.WebSocketClientConnection)


async def send(conn: Client, message: Any) -> None:
    """Sends a JSON object (or text/bytes as they are) and waits until it is written."""
    data = message if isinstance(message, (str, bytes)) else json.dumps(message)
    if _is_tornado(conn):
        await bounded(conn.write_message(data, binary=isinstance(data, bytes)))
    else:
        await bounded(conn.send(data))


async def recv(conn: Client, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The next frame from the server, parsed; fails if the connection closed instead."""
    if _is_tornado(conn):
        text = await bounded(conn.read_message(), timeout)
        assert text is not None, f"closed: {conn.close_code} {conn.close_reason}"
    else:
        text = await bounded(conn.recv(), timeout)
    frame = json.loads(text)
    assert isinstance(frame, dict)
    return frame


async def ask(conn: Client, message: dict[str, Any]) -> dict[str, Any]:
    await send(conn, message)
    return await recv(conn)


async def closed_with(conn: Client, timeout: float = TIMEOUT) -> tuple[int | None, str | None]:
    """Reads (and drops) frames until the server closes; returns (code, reason)."""
    if _is_tornado(conn):
        while await bounded(conn.read_message(), timeout) is not None:
            pass
        return conn.close_code, conn.close_reason
    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            await bounded(conn.recv(), timeout)
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, f"no close frame received: {exc!r}"
        return exc.rcvd.code, exc.rcvd.reason


# -- a raw TCP client, for peers no real client library would imitate ----------------------


class RawClient:
    """A WebSocket client done by hand: it answers nothing unless told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str = "/raw",
        headers: dict[str, str] | None = None,
        first: bytes = b"",
    ) -> RawClient:
        """Upgrades; ``first``: bytes sent in the same write as the upgrade request."""
        reader, writer = await bounded(asyncio.open_connection("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + first)
        await writer.drain()
        client = cls(reader, writer)
        head = await bounded(reader.readuntil(b"\r\n\r\n"))
        client.status = int(head.split(b" ", 2)[1])
        return client

    @staticmethod
    def frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
        """One masked client frame, as RFC 6455 section 5.2 lays it out."""
        mask = os.urandom(4)
        n = len(payload)
        first = (0x80 if fin else 0) | opcode
        if n < 126:
            header = struct.pack("!BB", first, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", first, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return header + mask + masked

    async def send_bytes(self, data: bytes) -> None:
        """Writes ``data`` as it is: any number of frames, or a part of one."""
        self.writer.write(data)
        await self.writer.drain()

    async def send_text(self, text: str) -> None:
        await self.send_bytes(self.frame(text.encode()))

    async def read_frame(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame; server frames are not masked."""
        first, second = await bounded(self.reader.readexactly(2), timeout)
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await bounded(self.reader.readexactly(2)))
        elif n == 127:
            (n,) = struct.unpack("!Q", await bounded(self.reader.readexactly(8)))
        return first & 0x0F, await bounded(self.reader.readexactly(n))

    def abort(self) -> None:
        """Vanishes: a TCP reset, no close frame."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def settle(value: Callable[[], int], window: float = 0.25, timeout: float = 10.0) -> int:
    """Waits (bounded) until ``value()`` has not changed for ``window`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, since = value(), loop.time()
    while loop.time() - since < window:
        assert loop.time() < deadline, f"still changing after {timeout}s: {value()}"
        await asyncio.sleep(0.01)
        now = value()
        if now != last:
            last, since = now, loop.time()
    return last
