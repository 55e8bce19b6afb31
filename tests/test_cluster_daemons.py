"""Cluster mode with real daemons (subprocesses of the console script) and a real
redis-server: one node answers for another's client, and a node stopped with SIGTERM
closes its clients with 1001, runs their on_disconnect itself and leaves the cluster."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

from procutil import DEADLINE, Daemon, Spawner, call, clean_env, connect, copy_app, write_runner
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

DISCONNECTS_ENV = "TWR_TEST_DISCONNECTS"  # read by fixtures/daemon/handlers/recorder.py


def start_node(tmp_path: Path, spawn: Spawner, redis_url: str, name: str) -> Daemon:
    folder = copy_app(tmp_path / name)
    timing = "heartbeat_interval: 0.2, node_timeout: 2"
    write_runner(folder, f"cluster: {{redis_url: '{redis_url}', node_id: {name}, {timing}}}\n")
    env = clean_env(**{DISCONNECTS_ENV: str(tmp_path / f"{name}.disconnects")})
    return spawn.serving("--conf", str(folder / "runner.yaml"), env=env)


async def management(daemon: Daemon, method: str, path: str, body: Any = None) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{daemon.ports['management']}{path}",
        method=method,
        body=None if body is None else json.dumps(body),
        headers={"Content-Type": "application/json"},
        raise_error=False,
        request_timeout=DEADLINE,
    )


async def listed(daemon: Daemon, want: set[str]) -> None:
    """Each try is a round trip (the directory is written as connections come and go)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        answer = await management(daemon, "GET", "/@connections")
        if answer.code == 200 and set(json.loads(answer.body)) == want:
            return
    raise AssertionError(f"never listed {want}")


def test_two_daemons_answer_for_each_other_and_sigterm_leaves_the_cluster(
    tmp_path: Path, spawn: Spawner, redis_url: str
) -> None:
    first = start_node(tmp_path, spawn, redis_url, "first")
    second = start_node(tmp_path, spawn, redis_url, "second")

    async def scenario() -> str:
        ws = await connect(first.url)
        cid = (await call(ws, "whoami"))["body"]["connectionId"]
        await listed(second, {cid})
        described = json.loads((await management(second, "GET", f"/@connections/{cid}")).body)
        assert described["node"] == "first"
        posted = await management(second, "POST", f"/@connections/{cid}", {"via": "second"})
        assert posted.code == 200, posted.body
        frame = json.loads(await asyncio.wait_for(ws.read_message(), DEADLINE))
        assert frame["body"] == {"via": "second"}

        first.signal(signal.SIGTERM)
        assert await asyncio.wait_for(ws.read_message(), DEADLINE) is None
        assert ws.close_code == 1001
        await listed(second, set())
        nodes = json.loads((await management(second, "GET", "/@nodes")).body)
        assert [n["nodeId"] for n in nodes] == ["second"]
        return str(cid)

    cid = asyncio.run(scenario())
    assert first.wait() == 0
    disconnects = (tmp_path / "first.disconnects").read_text(encoding="utf-8").split()
    assert disconnects == [cid], "on_disconnect ran once, on the stopped node itself"
    assert not (tmp_path / "second.disconnects").exists()
