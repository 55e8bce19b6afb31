"""Tornado's frame reader as the client port uses it, over a real socket: frames cut at
any byte, several frames in one write, all three length encodings, fragmentation with
control frames in between, bytes read past a frame kept for the next, and each protocol
violation Tornado drops a connection for."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import struct
from typing import Any

import pytest
from wsutil import PROBE, RawClient, Serve, bounded, registry, until

#: A size past which a frame spans several reads of the socket.
READ_CHUNK = 65536


def echo(message_id: str, payload: str = "") -> str:
    return json.dumps({"name": "echo", "headers": {"message-id": message_id}, "payload": payload})


async def reply(raw: RawClient) -> dict[str, Any]:
    opcode, data = await raw.read_frame()
    assert opcode == 0x1, f"a text frame, not opcode {opcode:#x}"
    return json.loads(data)


async def connected(serve: Serve, path: str = "/frames", **sections: object) -> RawClient:
    runner = await serve(**sections)
    raw = await RawClient.connect(runner.ports["listen"], path)
    assert raw.status == 101
    return raw


async def test_several_frames_in_one_write_are_each_answered_in_order(serve: Serve) -> None:
    """Three frames arriving in one TCP write get three replies, ids in order."""
    raw = await connected(serve)
    await raw.send_bytes(b"".join(RawClient.frame(echo(f"m{i}").encode()) for i in range(3)))
    ids = [(await reply(raw))["headers"]["message-id"] for _ in range(3)]
    assert ids == ["m0", "m1", "m2"]
    raw.abort()


async def test_many_clients_each_pipelining_get_every_reply_in_order(serve: Serve) -> None:
    """Eight clients each write thirty frames at once: every loop turn then answers
    several messages, so replies are held to the turn's end and written together (the
    send path's batching); each client still gets all thirty, in order."""
    runner = await serve()
    clients = [await RawClient.connect(runner.ports["listen"], "/frames") for _ in range(8)]
    for c, raw in enumerate(clients):
        frames = (RawClient.frame(echo(f"c{c}-{i}", "p" * i).encode()) for i in range(30))
        await raw.send_bytes(b"".join(frames))
    for c, raw in enumerate(clients):
        answers = [await reply(raw) for _ in range(30)]
        assert [a["headers"]["message-id"] for a in answers] == [f"c{c}-{i}" for i in range(30)]
        assert [a["body"]["payload"] for a in answers] == ["p" * i for i in range(30)]
        raw.abort()


@pytest.mark.parametrize("size", [20, 200, 70_000])
async def test_a_frame_cut_at_every_header_byte_is_answered(serve: Serve, size: int) -> None:
    """A frame's first 24 bytes (header, length of each encoding, mask, some payload)
    arrive one write at a time (the client has TCP_NODELAY: a segment each); the rest in
    one go."""
    runner = await serve(limits={"max_message_size": 2 * READ_CHUNK})
    raw = await RawClient.connect(runner.ports["listen"], "/frames")
    await until(lambda: len(registry(runner)) == 1, "the connection registered")
    data = RawClient.frame(echo("slow", "x" * size).encode())
    for i in range(24):
        await raw.send_bytes(data[i : i + 1])
    await raw.send_bytes(data[24:])
    answer = await reply(raw)
    assert answer["headers"]["message-id"] == "slow"
    assert answer["body"]["payload"] == "x" * size
    raw.abort()


async def test_every_length_encoding_round_trips(serve: Serve) -> None:
    """7-bit, 16-bit and 64-bit payload lengths, below and above the read sizes."""
    raw = await connected(serve, limits={"max_message_size": 4 * READ_CHUNK})
    for size in (0, 100, 125, 126, 4000, 60_000, READ_CHUNK + 1, 3 * READ_CHUNK):
        await raw.send_text(echo(str(size), "y" * size))
        answer = await reply(raw)
        assert answer["headers"]["message-id"] == str(size)
        assert answer["body"]["payload"] == "y" * size, f"payload of {size} characters"
    raw.abort()


async def test_a_large_frame_then_small_ones_in_the_same_write(serve: Serve) -> None:
    """Bytes read past a large frame are kept for the next frames, not lost."""
    raw = await connected(serve)
    big = RawClient.frame(echo("big", "z" * (2 * READ_CHUNK)).encode())
    small = b"".join(RawClient.frame(echo(f"s{i}").encode()) for i in range(5))
    await raw.send_bytes(big + small)
    ids = [(await reply(raw))["headers"]["message-id"] for _ in range(6)]
    assert ids == ["big", "s0", "s1", "s2", "s3", "s4"]
    raw.abort()


async def test_a_fragmented_message_with_a_ping_in_between(serve: Serve) -> None:
    """Fragments are joined; a ping between them is answered with its pong first."""
    raw = await connected(serve)
    text = echo("frag", "abcdef").encode()
    parts = [text[:10], text[10:20], text[20:]]
    await raw.send_bytes(
        RawClient.frame(parts[0], opcode=0x1, fin=False)
        + RawClient.frame(b"are you there", opcode=0x9)
        + RawClient.frame(parts[1], opcode=0x0, fin=False)
        + RawClient.frame(parts[2], opcode=0x0, fin=True)
    )
    assert await raw.read_frame() == (0xA, b"are you there")
    answer = await reply(raw)
    assert answer["headers"]["message-id"] == "frag"
    assert answer["body"]["payload"] == "abcdef"
    raw.abort()


async def test_a_close_frame_after_data_in_the_same_write(serve: Serve) -> None:
    """A message and a close frame in one write: the reply, then the close echoed.

    Tornado reads a connection's next frame only after the message's first step has
    run, so an event that never waits is answered before the close frame is read; one
    that waits would find the close echoed first and its reply dropped (no data frame
    may follow a close frame, RFC 6455 section 5.5.1)."""
    raw = await connected(serve)
    await raw.send_bytes(
        RawClient.frame(echo("last").encode()) + RawClient.frame(b"\x03\xe8", opcode=0x8)
    )
    assert (await reply(raw))["headers"]["message-id"] == "last"
    opcode, payload = await raw.read_frame()
    assert (opcode, payload[:2]) == (0x8, b"\x03\xe8")
    await until(lambda: len(PROBE.disconnects) == 1, "on_disconnect run")
    raw.abort()


async def test_a_close_reason_that_is_not_utf8_drops_only_that_connection(serve: Serve) -> None:
    """Tornado raises on such a reason inside the frame loop: the socket is dropped, the
    client leaves the registry, nothing is logged as an error, others are answered."""
    runner = await serve()
    bad = await RawClient.connect(runner.ports["listen"], "/bad")
    good = await RawClient.connect(runner.ports["listen"], "/good")
    await until(lambda: len(registry(runner)) == 2, "both connections registered")
    await bad.send_bytes(RawClient.frame(b"\x03\xe8\xff\xfe", opcode=0x8))
    assert await bounded(bad.reader.read()) == b"", "the server drops the connection"
    await until(lambda: len(registry(runner)) == 1, "the dropped client unregistered")
    gc.collect()  # a frame-loop task that ended in an exception nobody took logs it now
    await good.send_text(echo("still"))
    assert (await reply(good))["headers"]["message-id"] == "still"
    good.abort()


def _with_rsv1(frame: bytes) -> bytes:
    return bytes([frame[0] | 0x40]) + frame[1:]


VIOLATIONS = {
    "reserved bit set, no extension agreed": _with_rsv1(RawClient.frame(b"{}")),
    "control frame over 125 bytes": RawClient.frame(b"p" * 126, opcode=0x9),
    "fragmented control frame": RawClient.frame(b"p", opcode=0x9, fin=False),
    "continuation with nothing to continue": RawClient.frame(b"{}", opcode=0x0),
    "new message inside a fragmented one": RawClient.frame(b"{", opcode=0x1, fin=False)
    + RawClient.frame(b"{}", opcode=0x1),
    "reserved data opcode 0x3": RawClient.frame(b"{}", opcode=0x3),
    "reserved control opcode 0xB": RawClient.frame(b"", opcode=0xB),
    "text that is not UTF-8": RawClient.frame(b'{"name": "\xff"}'),
}


@pytest.mark.parametrize("violation", VIOLATIONS)
async def test_a_protocol_violation_drops_only_that_connection(
    serve: Serve, violation: str
) -> None:
    """Each violation RFC 6455 (and Tornado) fails a connection for: that socket is dropped
    unanswered and unregistered; another client is still answered."""
    runner = await serve()
    bad = await RawClient.connect(runner.ports["listen"], "/bad")
    good = await RawClient.connect(runner.ports["listen"], "/good")
    await until(lambda: len(registry(runner)) == 2, "both connections registered")
    await bad.send_bytes(VIOLATIONS[violation])
    assert await bounded(bad.reader.read()) == b"", "dropped without an answer"
    await until(lambda: len(registry(runner)) == 1, "the dropped client unregistered")
    await good.send_text(echo("still"))
    assert (await reply(good))["headers"]["message-id"] == "still"
    good.abort()


async def test_frames_behind_a_held_message_in_the_same_write_are_kept(serve: Serve) -> None:
    """With max_in_flight reached, reading pauses mid-chunk; the frames after the held
    one, read in the same write, are answered once a slot frees, none lost."""
    raw = await connected(serve, limits={"max_in_flight": 1})
    block = json.dumps({"name": "block", "payload": {"gate": "g"}, "headers": {"message-id": "b"}})
    frames = [block.encode()] + [echo(f"e{i}").encode() for i in range(3)]
    await raw.send_bytes(b"".join(RawClient.frame(f) for f in frames))
    await until(lambda: PROBE.counters["started"] == 1, "the blocking event to start")
    PROBE.open("g")
    ids = [(await reply(raw))["headers"]["message-id"] for _ in range(4)]
    assert ids == ["b", "e0", "e1", "e2"]
    raw.abort()


async def test_frames_sent_with_the_upgrade_request_are_answered(serve: Serve) -> None:
    """Frames in the same TCP write as the upgrade request (read by Tornado with the
    request) are answered in order."""
    runner = await serve()
    first = b"".join(RawClient.frame(echo(f"early{i}").encode()) for i in range(3))
    raw = await RawClient.connect(runner.ports["listen"], "/frames", first=first)
    assert raw.status == 101
    ids = [(await reply(raw))["headers"]["message-id"] for _ in range(3)]
    assert ids == ["early0", "early1", "early2"]
    raw.abort()


# -- where Tornado departs from RFC 6455 (docs/reliability.md) --------------------------------


async def test_an_unmasked_client_frame_is_answered(serve: Serve) -> None:
    """RFC 6455 section 5.1 has a server close the connection on a client frame without a
    mask; Tornado takes the payload as it is and the frame is answered."""
    raw = await connected(serve)
    payload = echo("bare").encode()
    await raw.send_bytes(struct.pack("!BB", 0x81, len(payload)) + payload)
    assert (await reply(raw))["headers"]["message-id"] == "bare"
    raw.abort()


async def test_text_not_utf8_in_an_early_fragment_drops_the_connection_at_the_last(
    serve: Serve,
) -> None:
    """UTF-8 is checked on the whole message: after a bad first fragment the connection
    still answers a ping; the last fragment gets it dropped, with no close frame."""
    raw = await connected(serve)
    await raw.send_bytes(RawClient.frame(b"\xff", fin=False))
    await raw.send_bytes(RawClient.frame(b"still open", opcode=0x9))
    assert await raw.read_frame() == (0xA, b"still open")
    await raw.send_bytes(RawClient.frame(b"{}", opcode=0x0))
    assert await bounded(raw.reader.read()) == b"", "dropped without a close frame"
    raw.abort()


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
async def test_a_close_code_is_echoed_whatever_it_is(serve: Serve, code: int) -> None:
    """Codes RFC 6455 reserves for no wire use (1005, 1006, 1015), codes outside its
    ranges and unassigned ones are echoed as received, without the reason; the server
    then closes the TCP connection."""
    raw = await connected(serve)
    await raw.send_bytes(RawClient.frame(struct.pack(">H", code) + b"why", opcode=0x8))
    assert await raw.read_frame() == (0x8, struct.pack(">H", code))
    assert await bounded(raw.reader.read()) == b""
    raw.abort()


async def test_a_one_byte_close_payload_is_answered_with_an_empty_close(serve: Serve) -> None:
    """A close payload too short to hold a code is not refused: an empty close answers."""
    raw = await connected(serve)
    await raw.send_bytes(RawClient.frame(b"\x03", opcode=0x8))
    assert await raw.read_frame() == (0x8, b"")
    assert await bounded(raw.reader.read()) == b""
    raw.abort()


async def test_a_64_bit_length_with_its_top_bit_set_closes_1009(serve: Serve) -> None:
    """The top bit of a 64-bit length must be 0; set, it reads as a length past the
    limit: close 1009."""
    raw = await connected(serve)
    await raw.send_bytes(struct.pack("!BBQ", 0x81, 0x80 | 127, 1 << 63) + os.urandom(4))
    assert await raw.read_frame() == (0x8, struct.pack(">H", 1009) + b"message too big")
    raw.abort()


async def upgrade(
    runner: Any, version: str, key: str, extra: str = "Sec-WebSocket-Version: 13"
) -> tuple[RawClient, bytes]:
    """An upgrade request written by hand (``version``, ``Sec-WebSocket-Key`` and the
    ``extra`` header lines as given); the client and the answer's head."""
    reader, writer = await bounded(asyncio.open_connection("127.0.0.1", runner.ports["listen"]))
    writer.write(
        f"GET /lenient {version}\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n{extra}\r\n\r\n".encode()
    )
    raw = RawClient(reader, writer)
    head = await bounded(reader.readuntil(b"\r\n\r\n"))
    raw.status = int(head.split(b" ", 2)[1])
    return raw, head


async def test_any_websocket_key_is_accepted(serve: Serve) -> None:
    """Sec-WebSocket-Key is meant to be the base64 of 16 bytes; any non-empty value gets
    101 and the connection is served."""
    raw, _ = await upgrade(await serve(), "HTTP/1.1", "not a base64 nonce")
    assert raw.status == 101
    await raw.send_text(echo("served"))
    assert (await reply(raw))["headers"]["message-id"] == "served"
    raw.abort()


async def test_an_upgrade_over_http_1_0_gets_101_and_is_closed_at_once(serve: Serve) -> None:
    """RFC 6455 asks for HTTP/1.1; over HTTP/1.0 Tornado answers 101, then closes the
    connection as it does after any HTTP/1.0 answer: on_connect and on_disconnect run
    once each, and no frame is exchanged."""
    key = base64.b64encode(os.urandom(16)).decode()
    raw, _ = await upgrade(await serve(), "HTTP/1.0", key)
    assert raw.status == 101
    assert await bounded(raw.reader.read()) == b""
    await until(lambda: len(PROBE.disconnects) == 1, "on_disconnect run")
    assert len(PROBE.connects) == 1
    raw.abort()


async def test_only_version_13_is_served_and_compression_is_never_agreed(serve: Serve) -> None:
    """Sec-WebSocket-Version 8 gets 426 naming version 13; an offer of permessage-deflate
    gets 101 without a Sec-WebSocket-Extensions header (the runner enables none)."""
    runner = await serve()
    key = base64.b64encode(os.urandom(16)).decode()
    old, head = await upgrade(runner, "HTTP/1.1", key, "Sec-WebSocket-Version: 8")
    assert old.status == 426 and b"\r\nSec-Websocket-Version: 13\r\n" in head
    old.abort()
    offer = "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate"
    raw, head = await upgrade(runner, "HTTP/1.1", key, offer)
    assert raw.status == 101 and b"extensions" not in head.lower()
    await raw.send_text(echo("plain"))
    assert (await reply(raw))["headers"]["message-id"] == "plain"
    raw.abort()
