"""Tornado's frame reader as the client port uses it, over a real socket: frames cut at
any byte, several frames in one write, all three length encodings, fragmentation with
control frames in between, bytes read past a frame kept for the next, and each protocol
violation Tornado drops a connection for."""

from __future__ import annotations

import gc
import json
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
