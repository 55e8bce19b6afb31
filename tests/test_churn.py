"""Churn: thousands of connections opening, sending and closing in every way leave
nothing behind (issue 7).

One runner in this process serves more than 2,000 connections, 56 at a time, each
ending in one of the ways below; afterwards the registry is empty, ``on_disconnect`` ran
exactly once per connection (counted by connection id in the fixture handler), every
handler and stream producer ended, and this process's open file descriptors and asyncio
tasks are back where they started. The clients are raw sockets (tests/wsutil.py's
``RawClient``): cheap enough for thousands, and able to misbehave (vanish without a
close frame, close with unread data, hang up during on_connect).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.httpclient import AsyncHTTPClient
from wsutil import HERE, PROBE, RawClient, Serve, bounded, registry, until

from tornado_ws_runner.ws.handler import ClientHandler

FAULTS = HERE / "fixtures" / "faults" / "config.yaml"
MAX_MESSAGE = 4096  # limits.max_message_size of the churned runner: "oversize" sends more
BATCHES = 37  # batches of one connection per way and round: 37 x 56 = 2,072 connections
ROUNDS = 4  # rounds of every way per batch
#: Slack when comparing with the starting level: none. Every connection's sockets, tasks
#: and handler objects must be gone; what is created once (Tornado's HTTP client and its
#: resolver, the loop's executor) already exists before the baseline, made by a warm-up
#: batch. The wait for the level is bounded, since closing takes a few loop turns.
FD_SLACK = 0
TASK_SLACK = 0


def tally(kind: str) -> Counter[str]:
    """What the fixture handlers counted under ``kind``, by connection id."""
    counter: Counter[str] = PROBE.flags.get(kind) or Counter()
    return counter


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def live_tasks() -> int:
    return len(asyncio.all_tasks())


def live_handlers() -> int:
    gc.collect()
    return sum(isinstance(obj, ClientHandler) for obj in gc.get_objects())


class Peer(RawClient):
    """The raw client, plus the framed ways of ending a connection."""

    async def send_close(self, code: int = 1000) -> None:
        payload = struct.pack("!H", code)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(struct.pack("!BB", 0x88, 0x80 | len(payload)) + mask + masked)
        await self.writer.drain()

    async def message(self, message: dict[str, Any]) -> None:
        await self.send_text(json.dumps(message))

    async def reply(self) -> dict[str, Any]:
        opcode, payload = await self.read_frame()
        assert opcode == 0x1, (opcode, payload)
        frame: dict[str, Any] = json.loads(payload)
        return frame

    async def server_closes(self) -> int:
        """Reads to the server's close frame, answers it, hangs up; returns its code."""
        for _ in range(100):
            opcode, payload = await self.read_frame()
            if opcode == 0x8:
                code: int = struct.unpack("!H", payload[:2])[0]
                await self.send_close(code)
                await self.hang_up()
                return code
        raise AssertionError("no close frame within 100 frames")

    async def hang_up(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await bounded(self.writer.wait_closed())


# -- the ways a connection ends ---------------------------------------------------------------
# Each takes (the listen port, the management port, the batch's gate name).


async def clean(port: int, mgmt: int, gate: str) -> None:
    """Echo, then a close handshake started by the client."""
    peer = await Peer.connect(port, "/clean")
    await peer.message({"name": "echo", "payload": 1, "headers": {"message-id": "c"}})
    assert (await peer.reply())["headers"]["message-id"] == "c"
    await peer.send_close(1000)
    opcode, payload = await peer.read_frame()
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1000
    await peer.hang_up()


async def vanish(port: int, mgmt: int, gate: str) -> None:
    """Echo, then a TCP reset: no close frame."""
    peer = await Peer.connect(port, "/vanish")
    await peer.message({"name": "echo", "headers": {"message-id": "v"}})
    await peer.reply()
    peer.abort()


async def close_in_flight(port: int, mgmt: int, gate: str) -> None:
    """A close frame right behind a message whose handler then waits for the gate."""
    peer = await Peer.connect(port, "/in-flight")
    await peer.message({"name": "gated", "payload": {"gate": gate}})
    await peer.send_close(1001)
    await peer.hang_up()


async def vanish_in_flight(port: int, mgmt: int, gate: str) -> None:
    """A reset right behind a message whose handler then waits for the gate."""
    peer = await Peer.connect(port, "/in-flight-reset")
    await peer.message({"name": "gated", "payload": {"gate": gate}})
    peer.abort()


async def close_mid_stream(port: int, mgmt: int, gate: str) -> None:
    """Two chunks of an endless stream, then a close frame and a hang-up without reading."""
    peer = await Peer.connect(port, "/stream-close")
    await peer.message({"name": "stream", "payload": {"size": 512}})
    await peer.reply()
    await peer.reply()
    await peer.send_close(1000)
    await peer.hang_up()


async def vanish_mid_stream(port: int, mgmt: int, gate: str) -> None:
    """Two chunks of an endless stream, then a reset."""
    peer = await Peer.connect(port, "/stream-reset")
    await peer.message({"name": "stream", "payload": {"size": 512}})
    await peer.reply()
    await peer.reply()
    peer.abort()


async def rejected(port: int, mgmt: int, gate: str) -> None:
    """on_connect refuses: close 1008."""
    peer = await Peer.connect(port, "/rejected?reject=1")
    assert await peer.server_closes() == 1008


async def oversize(port: int, mgmt: int, gate: str) -> None:
    """A frame over limits.max_message_size: close 1009."""
    peer = await Peer.connect(port, "/oversize")
    await peer.send_text("x" * (MAX_MESSAGE + 100))
    assert await peer.server_closes() == 1009


async def deleted(port: int, mgmt: int, gate: str) -> None:
    """Closed by a management DELETE: close 1000."""
    peer = await Peer.connect(port, "/deleted")
    await peer.message({"name": "echo", "headers": {"message-id": "d"}})
    cid = (await peer.reply())["body"]["connectionId"]
    answer = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{mgmt}/@connections/{cid}", method="DELETE", raise_error=False
    )
    assert answer.code == 204, answer.code
    assert await peer.server_closes() == 1000


async def vanish_during_connect(port: int, mgmt: int, gate: str) -> None:
    """A reset while on_connect still runs (it waits for the batch's gate)."""
    peer = await Peer.connect(port, f"/connecting?gate=connect-{gate}")
    peer.abort()


Way = Callable[[int, int, str], Awaitable[None]]
WAYS: list[Way] = [
    clean,
    vanish,
    close_in_flight,
    vanish_in_flight,
    close_mid_stream,
    vanish_mid_stream,
    rejected,
    oversize,
    deleted,
    vanish_during_connect,
    clean,
    vanish,
    close_in_flight,
    deleted,
]


async def churn(runner: Any, batch: int) -> int:
    """One batch: every way ROUNDS times at once; then opens the batch's gates."""
    port, mgmt = runner.ports["listen"], runner.ports["management"]
    gate = f"batch-{batch}"
    ways = [way(port, mgmt, gate) for _ in range(ROUNDS) for way in WAYS]
    await bounded(asyncio.gather(*ways), 30)
    # Handlers still waiting (their clients long gone) may now finish.
    PROBE.open(gate)
    PROBE.open(f"connect-{gate}")
    return len(ways)


async def test_churn_of_two_thousand_connections_leaks_nothing(serve: Serve) -> None:
    """2,000+ connections ended every way: registry empty, on_disconnect once each, no leaks."""
    runner = await serve(FAULTS, limits={"max_message_size": MAX_MESSAGE})
    started = time.monotonic()
    warm = await churn(runner, -1)  # creates what exists once, before the baseline
    await until(lambda: len(tally("disconnect")) == warm, "the warm-up to end")
    await until(lambda: not runner.state.tasks, "the warm-up's tasks to end")
    fds, tasks, handlers = open_fds(), live_tasks(), live_handlers()

    total = warm
    for batch in range(BATCHES):
        total += await churn(runner, batch)

    connected = tally("connect")
    disconnected = tally("disconnect")
    await until(lambda: len(disconnected) == len(connected), "every on_disconnect", timeout=15)
    await until(lambda: not runner.state.tasks, "every event and on_disconnect task to end")
    await until(
        lambda: open_fds() <= fds + FD_SLACK and live_tasks() <= tasks + TASK_SLACK,
        "file descriptors and tasks back to their starting level",
        timeout=15,
    )
    assert total - warm >= 2000
    assert len(connected) == total, "every connection ran on_connect"
    assert set(disconnected) == set(connected)
    assert set(disconnected.values()) == {1}, "on_disconnect ran exactly once per connection"
    assert len(registry(runner)) == 0 and not runner.state.watch.sending
    assert tally("gated_started") == tally("gated_ended"), "every handler in flight ended"
    # Twice per round a close frame follows the message; once a reset does, which may
    # reach the server before it read the message (then no handler started).
    assert 2 * ROUNDS * (BATCHES + 1) <= len(tally("gated_started")) <= 3 * ROUNDS * (BATCHES + 1)
    assert tally("stream_started") == tally("stream_closed"), "every producer was closed"
    assert len(tally("stream_started")) == 2 * ROUNDS * (BATCHES + 1)
    assert open_fds() <= fds and live_tasks() <= tasks
    assert live_handlers() <= handlers, "no ClientHandler outlives its connection"
    assert time.monotonic() - started < 60
