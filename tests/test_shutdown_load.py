"""Shutdown under load (issue 7): clients keep sending, each message with its own
message-id, when the runner is told to stop.

What must hold for every client: each message the server took up is answered before
the 1001 close; a message it never took up is simply not answered, and the 1001 tells
the client so. Seen from a client, with messages read in order on each connection:
the answered message-ids are exactly the first N it sent (no message answered after
one that was not), nothing is answered twice, and the close code is 1001. And the
process exits 0 within the drain timeout plus a small margin, even when an event
outlives the drain.

The daemon runs as a real subprocess (the ``spawn`` fixture, SIGTERM); the in-process
variant (``runner.stop()``) also checks, from the server's side, that every message
whose handler ran was answered.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import tornado.websocket
from procutil import DEADLINE, Spawner, clean_env, write_runner
from wsutil import HERE, PROBE, Serve, bounded, until, ws_url

FAULTS = HERE / "fixtures" / "faults" / "config.yaml"
DISCONNECTS_ENV = "TWR_TEST_DISCONNECTS"  # read by fixtures/daemon/handlers/recorder.py
WINDOW = 8  # messages a client has sent and not yet seen answered, at most
LIMIT = 100_000  # messages a client sends at most: a bound, never reached


class LoadClient:
    """Sends messages continuously (at most WINDOW unanswered) and reads every frame
    until the server closes. ``slow`` makes every fifth message a slower event."""

    def __init__(self, url: str, tag: str, slow: dict[str, Any] | None = None) -> None:
        self.url = url
        self.tag = tag
        self.slow = slow
        self.sent: list[str] = []
        self.answered: list[str] = []
        self.others = 0  # frames without a message-id (the slow handler's push)
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._room = asyncio.Event()
        self.ws: tornado.websocket.WebSocketClientConnection | None = None

    def message(self, seq: int) -> dict[str, Any]:
        mid = f"{self.tag}-{seq}"
        if self.slow is not None and seq % 5 == 4:
            return {**self.slow, "headers": {"message-id": mid}}
        return {"name": "echo", "payload": {"seq": seq}, "headers": {"message-id": mid}}

    async def start(self) -> None:
        self.ws = await tornado.websocket.websocket_connect(self.url, connect_timeout=DEADLINE)
        self.tasks = [
            asyncio.ensure_future(self._read()),
            asyncio.ensure_future(self._send()),
        ]

    async def _send(self) -> None:
        assert self.ws is not None
        for seq in range(LIMIT):
            while len(self.sent) - len(self.answered) >= WINDOW and not self.closed.is_set():
                self._room.clear()
                await self._room.wait()
            if self.closed.is_set():
                return
            # Counted as sent before the write: a write cut by the close may still arrive.
            self.sent.append(f"{self.tag}-{seq}")
            try:
                await self.ws.write_message(json.dumps(self.message(seq)))
            except tornado.websocket.WebSocketClosedError:
                return

    async def _read(self) -> None:
        assert self.ws is not None
        while True:
            text = await self.ws.read_message()
            if text is None:
                break
            assert isinstance(text, str)
            frame = json.loads(text)
            mid = frame["headers"].get("message-id")
            if mid is None:
                self.others += 1
                continue
            assert frame["statusCode"] == 200, frame
            self.answered.append(mid)
            self._room.set()
        self.close_code = self.ws.close_code
        self.closed.set()
        self._room.set()

    async def finished(self) -> None:
        await bounded(asyncio.gather(*self.tasks), DEADLINE)

    def check(self, cut: bool = False) -> None:
        """Answered: exactly the first N sent, each once; closed with 1001. ``cut``: this
        client's slow events outlive the drain, so those may be missing (and only those)."""
        assert self.close_code == 1001, f"{self.tag}: closed with {self.close_code}"
        assert len(set(self.answered)) == len(self.answered), f"{self.tag}: answered twice"
        last = max((seq(mid) for mid in self.answered), default=-1)
        missing = [mid for mid in self.sent[: last + 1] if mid not in set(self.answered)]
        if cut:
            missing = [mid for mid in missing if seq(mid) % 5 != 4]
        assert not missing, (
            f"{self.tag}: {self.tag}-{last} was answered, but not {missing[:5]} sent before it"
        )


def seq(mid: str) -> int:
    return int(mid.rsplit("-", 1)[1])


async def load(clients: list[LoadClient], answers_each: int) -> None:
    """Starts every client and waits until each has seen ``answers_each`` answers."""
    for client in clients:
        await client.start()
    await until(
        lambda: all(len(c.answered) >= answers_each for c in clients),
        "every client to be answered a while",
        timeout=DEADLINE,
    )


def test_sigterm_under_load_answers_every_taken_message_before_1001(
    app: Path, tmp_path: Path, spawn: Spawner
) -> None:
    """SIGTERM amid continuous traffic: answers are a gap-free prefix, 1001 each, exit 0."""
    drain = 5.0
    write_runner(app, extra="logging: {access: false}\n", drain=drain)
    disconnects = tmp_path / "disconnects.txt"
    daemon = spawn.serving(
        "--conf", str(app / "runner.yaml"), env=clean_env(**{DISCONNECTS_ENV: str(disconnects)})
    )
    slow = {"name": "slow", "payload": {"seconds": 0.3}}

    async def scenario() -> tuple[list[LoadClient], float]:
        clients = [LoadClient(daemon.url, f"c{i}", slow) for i in range(6)]
        await load(clients, 30)
        daemon.signal(signal.SIGTERM)
        signalled = time.monotonic()
        for client in clients:
            await client.finished()
        return clients, signalled

    clients, signalled = asyncio.run(scenario())
    assert daemon.wait(drain + 5) == 0, daemon.output
    took = time.monotonic() - signalled
    assert took < drain, f"{took:.1f}s to exit with every event short"
    for client in clients:
        client.check()
    assert sum(len(c.answered) for c in clients) >= 180
    assert sum(c.others for c in clients) >= 6, "slow events were in the mix"
    daemon.wait_for(r"stopped: 6 connections closed, 0 events cut")
    assert len(disconnects.read_text(encoding="utf-8").split()) == 6
    assert "Traceback" not in daemon.output


def test_sigterm_under_load_with_an_event_outliving_the_drain_exits_in_time(
    app: Path, spawn: Spawner
) -> None:
    """An event longer than the drain is cut: exit 0 within drain + margin, others answered."""
    drain = 1.0
    write_runner(app, extra="logging: {access: false}\n", drain=drain)
    daemon = spawn.serving("--conf", str(app / "runner.yaml"))
    slow = {"name": "slow", "payload": {"seconds": 0.3}}
    straggler = {"name": "slow", "payload": {"seconds": 60}}

    async def scenario() -> tuple[list[LoadClient], LoadClient, float]:
        clients = [LoadClient(daemon.url, f"c{i}", slow) for i in range(5)]
        stuck = LoadClient(daemon.url, "stuck", straggler)
        await load([*clients, stuck], 4)
        await until(lambda: stuck.others >= 1, "the long event to start", timeout=DEADLINE)
        daemon.signal(signal.SIGTERM)
        signalled = time.monotonic()
        for client in [*clients, stuck]:
            await client.finished()
        return clients, stuck, signalled

    clients, stuck, signalled = asyncio.run(scenario())
    assert daemon.wait(drain + 5) == 0, daemon.output
    took = time.monotonic() - signalled
    assert took < drain + 3, f"{took:.1f}s to exit with a drain of {drain}s"
    for client in clients:
        client.check()
    stuck.check(cut=True)
    assert "stuck-4" not in stuck.answered, "the long event was cut, not answered"
    match, _ = daemon.wait_for(r"stopped: 6 connections closed, (\d+) events cut")
    assert int(match[1]) >= 1
    assert "Traceback" not in daemon.output


async def test_stop_under_load_answers_every_message_whose_handler_ran(serve: Serve) -> None:
    """runner.stop() amid traffic: every message a handler took is answered before 1001."""
    runner = await serve(FAULTS, timeouts={"drain": 5.0})
    lazy = {"name": "lazy", "payload": {"seconds": 0.2}}
    clients = [LoadClient(ws_url(runner), f"c{i}", lazy) for i in range(6)]
    await load(clients, 30)
    started = time.monotonic()
    await bounded(runner.stop(), 10)
    assert time.monotonic() - started < 5.0
    for client in clients:
        await client.finished()
        client.check()
    # From the server's side: every echo whose handler ran was answered.
    echoed = {mid for kind, mid in PROBE.log if kind == "echo"}
    answered = {mid for c in clients for mid in c.answered}
    assert echoed <= answered, sorted(echoed - answered, key=seq)[:5]
    assert len(PROBE.flags["disconnect"]) == 6
