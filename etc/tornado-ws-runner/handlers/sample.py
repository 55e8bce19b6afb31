"""Handlers of the sample service (etc/tornado-ws-runner/config.yaml)."""

from __future__ import annotations

import asyncio

from tornado_ws_runner import COMPLETE, ErrorResponse, Identity, Response, StreamResponse
from tornado_ws_runner import ws_postback_function


def requireTokenHandler(event, expected):
    """on_connect: accept only clients that present the token (query or x-token header)."""
    given = event.request.query.get("token") or event.request.headers.get("x-token")
    if given != expected:
        raise ErrorResponse("Unauthorized: give ?token=...", 401)
    event.identity = Identity(event.request.headers["connection-id"], [{"type": "role", "value": "user"}])


def forgetHandler(event):
    """on_disconnect: nothing to clean up in the sample; a real service would."""


def unknownHandler(event):
    """catchall: name what could not be routed (text that is not JSON has no name)."""
    what = event.name or f"text {event.payload!r}"
    raise ErrorResponse("Not Found.", 404, f"no event for {what}")


def echoHandler(event):
    event.response = Response(event.payload)


def ticksHandler(event):
    count = int((event.payload or {}).get("count", 5))

    async def ticks():
        for i in range(count):
            yield {"tick": i}
            await asyncio.sleep(0.1)

    event.response = StreamResponse(ticks())
    return COMPLETE


async def pushHandler(event):
    await event.request.headers["push-function"](Response({"note": "pushed before the reply"}))
    event.response = Response({"done": True})


def whoamiHandler(event):
    headers = event.request.headers
    event.response = Response({"connectionId": headers["connection-id"],
                               "postbackUrl": headers["postback-url"]})


async def tellHandler(event):
    payload = event.payload or {}
    own = event.request.headers["postback-url"]
    target = own.rsplit("/", 1)[0] + "/" + str(payload.get("to"))
    await ws_postback_function(target, {
        "statusCode": 200,
        "headers": {"message-id": f"from-{event.request.headers['connection-id']}"},
        "body": {"from": event.request.headers["connection-id"], "text": payload.get("text")},
    })
    event.response = Response({"delivered": True})
