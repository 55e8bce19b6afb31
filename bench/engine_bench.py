#!/usr/bin/env python3
"""Micro-benchmark of tornado_ws_runner's engine alone: no sockets, no Tornado.

Two figures, each over several repetitions on one asyncio loop (events run one after
another, as one connection with one message in flight would run them):

  engine    events/s through a three-policy chain, built with Service.load(path):
              setResponseHeaderHandler: [x-bench, "$(who)"]   (standard, a $(...) reference)
              tagHandler                                      (a custom sync handler)
              setResponseBodyHandler: ["$($event.payload)"]   (standard, a $(...) reference)
            measured as `await service.process(Event(Request(...)))`.
  protocol  the daemon's per-message path without sockets, on bench/config.yaml's echo:
              codec.parse_message(text) -> Event(request) -> service.process(event)
              -> codec.encode(response, message_id)
            with the same 64-character payload as the bench's echo mode, plus each
            stage timed on its own so the per-message overhead is visible.

Usage (from a checkout, with the package installed in .venv):
  .venv/bin/python bench/engine_bench.py                 # both, 5 reps x 20,000 events
  .venv/bin/python bench/engine_bench.py --mode engine --reps 7 --events 50000
  .venv/bin/python bench/engine_bench.py --json          # one JSON line per figure too
The numbers are for comparing versions of the package on one machine, in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tornado_ws_runner
from tornado_ws_runner import Event, Request, Service
from tornado_ws_runner.ws import codec

HERE = Path(__file__).resolve().parent

CHAIN_CONFIG = """\
api:
  events:
    - name: chain
      policies:
        - setResponseHeaderHandler: [x-bench, "$(who)"]
        - tagHandler
        - setResponseBodyHandler: ["$($event.payload)"]
"""

CHAIN_HANDLERS = """\
def tagHandler(event):
    event.response.status_code = 200
    event.response.headers["x-tag"] = "tagged"
"""


def _report(
    name: str, per_rep: list[float], n: int, as_json: bool, extra: dict | None = None
) -> None:
    rates = [n / s for s in per_rep]
    med = statistics.median(rates)
    line = (
        f"{name:<34} {med:>12,.0f} events/s  {1e6 / med:>8.2f} us/event"
        f"  (median of {len(per_rep)}; best {max(rates):,.0f}, worst {min(rates):,.0f})"
    )
    print(line, flush=True)
    if as_json:
        record = {
            "figure": name,
            "events": n,
            "reps": len(per_rep),
            "median_events_per_s": med,
            "us_per_event": 1e6 / med,
            "rates": rates,
            **(extra or {}),
        }
        print(json.dumps(record), flush=True)


async def bench_engine(reps: int, n: int, as_json: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        folder = Path(tmp)
        (folder / "handlers").mkdir()
        (folder / "config.yaml").write_text(CHAIN_CONFIG)
        (folder / "handlers" / "chain.py").write_text(CHAIN_HANDLERS)
        service = Service.load(folder / "config.yaml")
        await service.start()

        payload = {"text": "x" * 64}
        # sanity: the chain does what it says
        r = await service.process(Event(Request("chain", params={"who": "bench"}, payload=payload)))
        assert r.status_code == 200 and r.body == payload, r
        assert r.headers == {"x-bench": "bench", "x-tag": "tagged"}, r.headers

        for _ in range(min(n, 2000)):  # warm-up
            await service.process(Event(Request("chain", params={"who": "bench"}, payload=payload)))
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(n):
                await service.process(
                    Event(Request("chain", params={"who": "bench"}, payload=payload))
                )
            times.append(time.perf_counter() - t0)
        _report("engine: 3-policy chain", times, n, as_json)


async def bench_protocol(reps: int, n: int, as_json: bool) -> None:
    service = Service.load(HERE / "config.yaml")
    await service.start()

    async def push(_response):  # stands in for the connection's push-function
        return None

    conn_headers = {  # what ws.py lays over every message's headers
        "connection-id": "00000000-0000-4000-8000-000000000000",
        "postback-url": "http://127.0.0.1:9100/@connections/00000000-0000-4000-8000-000000000000",
        "push-function": push,
        "sec-websocket-protocol": None,
    }
    body = "x" * 64
    texts = [
        json.dumps(
            {"name": "echo", "headers": {"message-id": f"m{i}"}, "payload": body},
            separators=(",", ":"),
        )
        for i in range(1024)
    ]
    # sanity
    req, mid = codec.parse_message(texts[0], conn_headers)
    frame = codec.encode(await service.process(Event(req)), mid)
    assert json.loads(frame) == {
        "statusCode": 200,
        "headers": {"message-id": "m0"},
        "body": body,
    }, frame

    async def full(count: int) -> None:
        for i in range(count):
            request, message_id = codec.parse_message(texts[i & 1023], conn_headers)
            response = await service.process(Event(request))
            codec.encode(response, message_id)

    await full(min(n, 2000))  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        await full(n)
        times.append(time.perf_counter() - t0)
    _report("protocol: parse->process->encode", times, n, as_json)

    # The same path, one stage at a time (medians of `reps`, us per message).
    stages: dict[str, list[float]] = {
        "parse_message": [],
        "Event()": [],
        "service.process": [],
        "encode": [],
    }
    for _ in range(reps):
        t0 = time.perf_counter()
        parsed = [codec.parse_message(texts[i & 1023], conn_headers) for i in range(n)]
        t1 = time.perf_counter()
        events = [Event(request) for request, _ in parsed]
        t2 = time.perf_counter()
        responses = [await service.process(e) for e in events]
        t3 = time.perf_counter()
        for response, (_, message_id) in zip(responses, parsed, strict=False):
            codec.encode(response, message_id)
        t4 = time.perf_counter()
        for key, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=False):
            stages[key].append(seconds * 1e6 / n)
        del parsed, events, responses
    med = {k: statistics.median(v) for k, v in stages.items()}
    total = sum(med.values())
    print("  per stage (us/message, medians; list-building overhead included):")
    for key, us in med.items():
        print(f"    {key:<18} {us:7.2f}  ({100 * us / total:4.1f}%)")
    print(f"    {'sum':<18} {total:7.2f}", flush=True)
    if as_json:
        print(json.dumps({"figure": "protocol stages", "us_per_message": med}), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("engine", "protocol", "both"), default="both")
    p.add_argument("--reps", type=int, default=5, help="repetitions (median reported)")
    p.add_argument("--events", type=int, default=20000, help="events per repetition")
    p.add_argument("--json", action="store_true", help="also print one JSON line per figure")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop (if installed)")
    args = p.parse_args()
    print(
        f"tornado_ws_runner {tornado_ws_runner.__version__}, Python {platform.python_version()}"
        f" ({sys.executable}), {args.reps} reps x {args.events:,} events",
        flush=True,
    )

    async def run() -> None:
        if args.mode in ("engine", "both"):
            await bench_engine(args.reps, args.events, args.json)
        if args.mode in ("protocol", "both"):
            await bench_protocol(args.reps, args.events, args.json)

    if args.uvloop:
        import uvloop  # not a dependency of the package; the bench's venv has it

        uvloop.run(run())
    else:
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
