#!/usr/bin/env python3
"""Cluster mode side by side with a single daemon, in one run (docs/performance.md).

  echo      the shared bench's echo load (50 connections, one message in flight each)
            against one daemon with cluster mode off, then on (messages never touch
            Redis: the ratio should stay near 1)
  connect   the shared bench's idle mode (CONNS connections opened, one echo each):
            connections opened per second, off and on (a connect is one Redis round trip)
  forward   management POSTs to one client, CONCURRENCY at a time for SECONDS: through
            the daemon that holds it (local), then through another node (forwarded)

Each daemon runs pinned to CPU 1 (the forward part: the two nodes share it), the load
on CPU 0, with a redis-server of its own on a unix socket. Ratios from one run are what
count; the machine's speed moves between runs.

Usage (from a checkout, with .venv set up and the shared bench set up in /tmp/bench by
bench/run.sh once):
  .venv/bin/python bench/cluster_bench.py
  .venv/bin/python bench/cluster_bench.py --seconds 5 --conns 2000 --json /tmp/cluster.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

HERE = Path(__file__).resolve().parent
EXE = Path(sys.executable).parent / "tornado-ws-runner"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def runner_yaml(folder: Path, name: str, redis_url: str | None) -> tuple[Path, int]:
    """bench/runner.yaml's service, on free ports; with ``redis_url``, cluster mode."""
    management = free_port()
    text = (
        f"api: {HERE / 'config.yaml'}\n"
        "listen: {host: 127.0.0.1, port: 8000}\n"
        f"management: {{host: 127.0.0.1, port: {management}}}\n"
        "limits: {max_connections: 20000, send_buffer: 4194304}\n"
        "logging: {level: warning, access: false}\n"
        "timeouts: {drain: 2}\n"
    )
    if redis_url:
        text += f"cluster: {{redis_url: '{redis_url}', node_id: {name}}}\n"
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path, management


class Daemon:
    def __init__(self, conf: Path, cpu: str = "1") -> None:
        self.port = free_port()
        self.log = conf.with_suffix(".log")
        args = ["taskset", "-c", cpu, str(EXE), "--conf", str(conf), "--port", str(self.port)]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"daemon did not start: {self.log.read_text()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def load(bench: Path, mode: str, daemon: Daemon, *args: str) -> dict[str, Any]:
    cmd = ["taskset", "-c", "0", str(bench / ".venv/bin/python"), str(bench / "load.py"), mode]
    cmd += ["--url", f"ws://127.0.0.1:{daemon.port}/", "--pid", str(daemon.proc.pid), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    return dict(json.loads(out.stdout))


async def posts(url: str, seconds: float, concurrency: int) -> dict[str, float]:
    """POSTs to ``url`` for ``seconds``, ``concurrency`` at a time: rate and p99."""
    client = AsyncHTTPClient(max_clients=concurrency)
    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.monotonic() < end:
            started = time.perf_counter()
            answer = await client.fetch(url, method="POST", body='{"n":1}', raise_error=False)
            latencies.append(time.perf_counter() - started)
            errors += answer.code != 200

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    return {
        "per_s": len(latencies) / seconds,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3 if latencies else 0.0,
        "errors": errors,
    }


async def forward_part(folder: Path, redis_url: str, seconds: float, concurrency: int) -> Any:
    (conf_a, mgmt_a), (conf_b, mgmt_b) = (
        runner_yaml(folder, "fa", redis_url),
        runner_yaml(folder, "fb", redis_url),
    )
    a, b = Daemon(conf_a), Daemon(conf_b)
    try:
        ws = await websocket_connect(f"ws://127.0.0.1:{a.port}/")
        await ws.write_message('{"name": "echo", "headers": {"message-id": "x"}}')
        await ws.read_message()
        ids: list[str] = []
        for _ in range(100):  # the directory is written just after the connect
            ids = json.loads(
                (await AsyncHTTPClient().fetch(f"http://127.0.0.1:{mgmt_b}/@connections")).body
            )
            if ids:
                break
            await asyncio.sleep(0.05)
        (cid,) = ids

        async def drain() -> None:
            while await ws.read_message() is not None:
                pass

        reader = asyncio.ensure_future(drain())
        local = await posts(f"http://127.0.0.1:{mgmt_a}/@connections/{cid}", seconds, concurrency)
        forwarded = await posts(
            f"http://127.0.0.1:{mgmt_b}/@connections/{cid}", seconds, concurrency
        )
        ws.close()
        await reader
        return local, forwarded
    finally:
        a.stop()
        b.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bench", default="/tmp/bench", help="the shared bench, set up")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--conns", type=int, default=2000, help="connect: connections opened")
    p.add_argument("--concurrency", type=int, default=8, help="forward: POSTs at a time")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args()
    bench = Path(args.bench)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sock = folder / "redis.sock"
        redis = subprocess.Popen(
            ["taskset", "-c", "0", "redis-server", "--port", "0", "--unixsocket", str(sock),
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            while not sock.exists():
                time.sleep(0.01)
            url = f"unix://{sock}"
            for mode, redis_url in (("off", None), ("on", url)):
                conf, _ = runner_yaml(folder, f"echo-{mode}", redis_url)
                daemon = Daemon(conf)
                try:
                    echo = load(bench, "echo", daemon, "--conns", "50", "--warmup", "1",
                                "--duration", str(args.seconds))  # fmt: skip
                    idle = load(bench, "idle", daemon, "--conns", str(args.conns))
                finally:
                    daemon.stop()
                results[mode] = {
                    "echo_per_s": echo["replies_per_s"],
                    "connects_per_s": idle["open_conns"] / idle["open_s"],
                }
            local, forwarded = asyncio.run(
                forward_part(folder, url, args.seconds, args.concurrency)
            )
            results["forward"] = {"local": local, "forwarded": forwarded}
        finally:
            redis.terminate()
            redis.wait(10)
    off, on = results["off"], results["on"]
    local, forwarded = results["forward"]["local"], results["forward"]["forwarded"]
    for label, key in (("echo replies/s", "echo_per_s"), ("connects/s", "connects_per_s")):
        print(f"{label:<19} off {off[key]:10,.0f}   on {on[key]:10,.0f}"
              f"   on/off {on[key] / off[key]:.2f}")  # fmt: skip
    print(f"management POSTs/s  local {local['per_s']:8,.0f} (p99 {local['p99_ms']:.1f} ms)"
          f"   forwarded {forwarded['per_s']:8,.0f} (p99 {forwarded['p99_ms']:.1f} ms)"
          f"   forwarded/local {forwarded['per_s'] / local['per_s']:.2f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
