#!/usr/bin/env python3
"""Python memory per idle connection, and where it goes (tracemalloc).

The bench's idle mode gives RSS per connection; this says which lines allocated it. The
daemon runs in this process on bench/runner.yaml; a child process opens CONNS
connections, sends one echo on each and keeps them open; the difference between two
tracemalloc snapshots (before any connection, and after, once settled) divided by CONNS
is printed, total first, then by allocating line.

Usage (from a checkout, with the package installed in .venv):
  .venv/bin/python -P bench/memory.py             # 500 connections, top 25 lines
  .venv/bin/python -P bench/memory.py --conns 2000 --top 40
  .venv/bin/python -P bench/memory.py --loop asyncio   # the stdlib loop (default: uvloop)
The loops differ: the stdlib loop keeps a cancelled timer (and its context) in its heap
until the timer's time comes, ~0.3 KiB per connection for Tornado's header timeout.
The client needs the websockets package (the test extra).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import linecache
import subprocess
import sys
import tracemalloc
from pathlib import Path

from tornado_ws_runner.runner import WsRunner, run_on_loop
from tornado_ws_runner.settings import load_settings

HERE = Path(__file__).resolve().parent

CLIENT = r"""
import asyncio, sys
from websockets.asyncio.client import connect

async def main(port, n):
    conns = [await connect(f"ws://127.0.0.1:{port}/", ping_interval=None) for _ in range(n)]
    for c in conns:
        await c.send('{"name": "echo", "payload": 1}')
        await c.recv()
    print("open", flush=True)
    sys.stdin.readline()

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


async def measure(conns: int, top: int, settle: float) -> None:
    settings = load_settings(HERE / "runner.yaml")
    settings.listen.port = 0
    runner = WsRunner(settings)
    await runner.start()
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        str(runner.ports["listen"]),
        str(conns),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert client.stdin is not None and client.stdout is not None
    try:
        line = await asyncio.wait_for(client.stdout.readline(), 120)
        if line.strip() != b"open":
            raise RuntimeError(f"the client did not open its connections: {line!r}")
        await asyncio.sleep(settle)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        client.stdin.write(b"\n")
        await client.stdin.drain()
        await client.wait()
        await runner.stop(0.5)
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"{total / conns:,.0f} bytes per connection ({conns:,} idle connections)")
    for stat in [s for s in stats if s.size_diff > 0][:top]:
        frame = stat.traceback[0]
        where = frame.filename.split("site-packages/")[-1]
        code = linecache.getline(frame.filename, frame.lineno).strip()[:60]
        print(
            f"{stat.size_diff / conns:8,.0f} B {stat.count_diff / conns:5.1f} obj  "
            f"{where}:{frame.lineno}  {code}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conns", type=int, default=500, help="idle connections to open")
    p.add_argument("--top", type=int, default=25, help="allocating lines to list")
    p.add_argument("--settle", type=float, default=1.0, help="seconds before the snapshot")
    p.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop, as the daemon's event_loop setting (default: auto, its default)",
    )
    args = p.parse_args(argv)
    run_on_loop(measure(args.conns, args.top, args.settle), args.loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
