#!/usr/bin/env python3
"""Instructions per reply: a noise-free A/B of the daemon's user-space cost.

Replies/s and CPU per reply on this VM move by 20-40% from run to run (hypervisor
steal), so a 5-10% change in the daemon cannot be seen in bench/run.sh without many
rounds. This counts what does not move: the user-space instructions the server executes
per reply, under valgrind's callgrind. Each server is started under callgrind with
instrumentation off, warmed up, then counted over a fixed number of replies:

  echo    CONNS connections x MESSAGES echo messages each, one in flight per connection
          (the bench's echo mode, 64-character payload)
  stream  STREAMS streams of CHUNKS chunks of SIZE characters, one after another

The figure is instructions (Ir) per reply (echo) or per chunk (stream), with the ratio
to the first server. It leaves out kernel time (the socket system calls, ~30 us of a
reply here) and says nothing about waiting, so it ranks user-space changes; it does not
replace the side-by-side bench. Valgrind slows the server ~50x: a run takes a minute.
One distortion to know: valgrind counts a ``rep stosb`` (glibc's memset of large
blocks) once per byte, so the 64 KiB buffer Tornado zeroes for every ``recv`` shows as
~65,000 Ir although it takes ~1 us; compare servers that read the same way.

Usage (from a checkout; servers are NAME=COMMAND with {port}, default: this checkout):
  .venv/bin/python bench/instructions.py
  git archive OLD_COMMIT --prefix=old/ | tar -x -C /tmp      # the package as it was
  .venv/bin/python bench/instructions.py --mode stream \\
      --server "before=env PYTHONPATH=/tmp/old .venv/bin/python -P -m tornado_ws_runner \\
                --conf bench/runner.yaml --port {port}" \\
      --server "after=.venv/bin/python -P -m tornado_ws_runner \\
                --conf bench/runner.yaml --port {port}"
(``-P``: servers run in this checkout, and without it ``-m`` would import the package
from the current directory ahead of PYTHONPATH.)
Needs valgrind (callgrind_control too) and the websockets package (the test extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

HERE = Path(__file__).resolve().parent
DEFAULT = f"{sys.executable} -P -m tornado_ws_runner --conf {HERE / 'runner.yaml'} --port {{port}}"
PAYLOAD = "x" * 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port} after {timeout:g}s") from None
            await asyncio.sleep(0.2)
        else:
            writer.close()
            return


async def echo(url: str, conns: int, messages: int) -> int:
    async def one(index: int) -> int:
        async with connect(url, max_size=None, compression=None) as ws:
            for n in range(messages):
                mid = f"{index}-{n}"
                await ws.send(
                    json.dumps({"name": "echo", "headers": {"message-id": mid}, "payload": PAYLOAD})
                )
                reply = json.loads(await ws.recv())
                if reply["headers"]["message-id"] != mid or reply["body"] != PAYLOAD:
                    raise RuntimeError(f"wrong reply: {reply!r}")
        return messages

    return sum(await asyncio.gather(*(one(i) for i in range(conns))))


async def stream(url: str, streams: int, chunks: int, size: int) -> int:
    received = 0
    async with connect(url, max_size=None, compression=None) as ws:
        for n in range(streams):
            await ws.send(
                json.dumps(
                    {
                        "name": "stream",
                        "headers": {"message-id": str(n)},
                        "payload": {"chunks": chunks, "size": size},
                    }
                )
            )
            while True:
                reply = json.loads(await ws.recv())
                if reply["headers"].get("x-stream") == "done":
                    break
                received += 1
    if received != streams * chunks:
        raise RuntimeError(f"{received} chunks received, {streams * chunks} expected")
    return received


def control(pid: int, *args: str) -> None:
    subprocess.run(
        ["callgrind_control", *args, str(pid)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def total_ir(out_dir: Path, pid: int, timeout: float = 60.0) -> int:
    """Ir of the first dump: the counted window only (instrumentation was off before).

    callgrind_control returns before the dump is written: wait for its last line.
    """
    deadline = time.monotonic() + timeout
    dump = out_dir / f"cg.{pid}.1"
    while time.monotonic() < deadline:
        text = dump.read_text(errors="replace") if dump.exists() else ""
        match = re.search(r"^totals:\s+(\d+)", text, re.M)
        if match is not None:
            return int(match.group(1))
        time.sleep(0.2)
    raise RuntimeError(f"no instruction total in {dump} after {timeout:g}s")


async def measure(cmd: str, args: argparse.Namespace, out_dir: Path) -> tuple[int, int]:
    port = free_port()
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--trace-children=yes",
        f"--callgrind-out-file={out_dir}/cg.%p",
        *shlex.split(cmd.format(port=port)),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_listening(port, args.start_timeout)
        url = f"ws://127.0.0.1:{port}/"
        if args.mode == "echo":
            await echo(url, args.conns, max(1, args.messages // 10))  # warm-up
            control(proc.pid, "-i", "on")
            count = await echo(url, args.conns, args.messages)
        else:
            await stream(url, 1, args.chunks, args.size)
            control(proc.pid, "-i", "on")
            count = await stream(url, args.streams, args.chunks, args.size)
        control(proc.pid, "-d")
        return total_ir(out_dir, proc.pid), count
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="a server to count, its command with {port} (repeatable)",
    )
    p.add_argument("--mode", choices=["echo", "stream"], default="echo")
    p.add_argument("--conns", type=int, default=10, help="echo: connections")
    p.add_argument("--messages", type=int, default=200, help="echo: messages per connection")
    p.add_argument("--streams", type=int, default=5, help="stream: streams counted")
    p.add_argument("--chunks", type=int, default=200, help="stream: chunks per stream")
    p.add_argument("--size", type=int, default=16384, help="stream: characters per chunk")
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds")
    args = p.parse_args(argv)
    servers = [s.split("=", 1) for s in args.server] or [["tornado_ws_runner", DEFAULT]]
    unit, unit_plural = ("reply", "replies") if args.mode == "echo" else ("chunk", "chunks")
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd in servers:
            ir, count = asyncio.run(measure(cmd, args, Path(tmp)))
            per = ir / count
            first = first or per
            ratio = per / first
            print(
                f"{name:24} {per:12,.0f} Ir/{unit}  x{ratio:.3f}  ({count:,} {unit_plural})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
