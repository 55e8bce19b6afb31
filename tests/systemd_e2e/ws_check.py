"""WebSocket checks of tests/systemd_e2e/run.sh, from the host against the packaged service.

    ws_check.py echo URL     the sample's echo event answers its payload (status 200,
                             the request's message-id echoed)
    ws_check.py reject URL   a client without the token is closed with 1008

Exit status 0 when the check holds, 1 (and a line on stderr saying why) when not. Needs
only tornado, the project's own dependency. Connection attempts are retried for a few
seconds: the port may open a moment after systemd calls the service started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid

from tornado.iostream import StreamClosedError
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketClosedError,
    websocket_connect,
)

TIMEOUT = 10.0  # seconds for any one step
CONNECT_TRIES = 20  # 0.25 s apart


class CheckFailed(Exception):
    pass


async def connect(url: str) -> WebSocketClientConnection:
    last: Exception | None = None
    for _ in range(CONNECT_TRIES):
        try:
            return await asyncio.wait_for(websocket_connect(url), TIMEOUT)
        except (TimeoutError, OSError, StreamClosedError) as exc:
            last = exc
            await asyncio.sleep(0.25)
    raise CheckFailed(f"cannot connect to {url}: {last!r}")


async def read(conn: WebSocketClientConnection) -> str | bytes | None:
    try:
        return await asyncio.wait_for(conn.read_message(), TIMEOUT)
    except TimeoutError:
        raise CheckFailed(f"no frame within {TIMEOUT} s") from None


async def echo(url: str) -> str:
    conn = await connect(url)
    try:
        message_id = f"e2e-{uuid.uuid4()}"
        payload = {"nonce": str(uuid.uuid4()), "text": "h\u00e9llo \u2713", "n": [1, 2.5, None]}
        await conn.write_message(
            json.dumps({"name": "echo", "headers": {"message-id": message_id}, "payload": payload})
        )
        raw = await read(conn)
        if raw is None:
            raise CheckFailed(f"closed instead of answering: {conn.close_code} {conn.close_reason}")
        frame = json.loads(raw)
        expected = {"statusCode": 200, "headers": {"message-id": message_id}, "body": payload}
        if frame != expected:
            raise CheckFailed(f"echo answered {raw!r}, expected {json.dumps(expected)}")
        return f"echo answered {raw if isinstance(raw, str) else raw.decode()}"
    finally:
        conn.close()


async def reject(url: str) -> str:
    conn = await connect(url)
    try:
        # The close may come before the write; if on_connect let it in, an echo comes back.
        with contextlib.suppress(WebSocketClosedError):
            await conn.write_message(json.dumps({"name": "echo", "payload": "let me in"}))
        raw = await read(conn)
        if raw is not None:
            raise CheckFailed(f"a client without the token got a frame: {raw!r}")
        if conn.close_code != 1008:
            raise CheckFailed(f"closed with {conn.close_code} {conn.close_reason!r}, not 1008")
        return f"closed with {conn.close_code} {conn.close_reason!r}"
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    checks = {"echo": echo, "reject": reject}
    if len(argv) != 3 or argv[1] not in checks:
        print(f"usage: {argv[0]} echo|reject URL", file=sys.stderr)
        return 2
    try:
        said = asyncio.run(checks[argv[1]](argv[2]))
    except CheckFailed as exc:
        print(f"ws_check {argv[1]}: {exc}", file=sys.stderr)
        return 1
    print(f"  {said}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
