"""Security defaults, proven against real servers on 127.0.0.1.

- The management port binds loopback unless told otherwise, and warns when exposed
  without a token.
- The management token is required when set and checked with ``hmac.compare_digest``
  (constant time), which alone decides.
- The Origin allow-list is an exact match: look-alike origins are refused with 403
  before ``on_connect`` runs; an allowed Origin and no Origin are served.
- Connection ids (and stream ids) are random UUID v4s.
- No frame or HTTP answer carries a traceback, a source path or an exception's text
  unless ``error_details`` is on (and then the 500 frames do carry the traceback).
- WSS serves the configured certificate; a plain-text client on the TLS port gets no
  WebSocket.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import shutil
import socket
import ssl
import sys
import types
import uuid
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient
import tornado.websocket
from websockets.exceptions import WebSocketException
from wsutil import (
    PROBE,
    Serve,
    ask,
    bounded,
    closed_with,
    openssl_certificate,
    registry,
    send,
    tornado_connect,
    until,
    websockets_connect,
    ws_url,
)

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "management"))
sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "reliability"))

import management_harness as h
from live_runner import CONFIG as RELIABILITY
from live_runner import SECRET
from management_harness import async_test, body_of, running

from tornado_ws_runner.management import app as management
from tornado_ws_runner.settings import RunnerSettings, load_settings, tls_context
from tornado_ws_runner.ws import codec
from tornado_ws_runner.ws.connection import Connection
from tornado_ws_runner.ws.registry import Registry
from tornado_ws_runner.ws.sender import SendWatch

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-token"
#: What no answer may hold unless error_details is on.
INTERNALS = ("Traceback", 'File "', ".py", SECRET, "/srv/app", "RuntimeError")


def internals_in(text: str) -> list[str]:
    return [marker for marker in INTERNALS if marker in text]


# -- the management port binds loopback ------------------------------------------------------


def outward_ipv4() -> str | None:
    """An IPv4 address of this host that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: a UDP connect sends nothing
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_management_defaults_to_loopback() -> None:
    """RunnerSettings(), an empty runner.yaml and the shipped one all say 127.0.0.1."""
    assert RunnerSettings().management.host == "127.0.0.1"
    assert RunnerSettings().management.base_url() == "http://127.0.0.1:9100"
    shipped = load_settings(ROOT / "etc" / "tornado-ws-runner" / "runner.yaml")
    assert shipped.management.host == "127.0.0.1"


def test_an_empty_runner_yaml_keeps_management_on_loopback(tmp_path: Path) -> None:
    """A runner.yaml that says nothing about management binds it to 127.0.0.1."""
    (tmp_path / "config.yaml").write_text("api:\n  events: []\n")
    (tmp_path / "runner.yaml").write_text("api: config.yaml\n")
    assert load_settings(tmp_path / "runner.yaml").management.host == "127.0.0.1"


async def test_a_started_runner_listens_for_management_on_loopback_only(serve: Serve) -> None:
    """A default runner's management socket is on 127.0.0.1, unreachable from other addresses."""
    runner = await serve()  # wsutil.make_settings leaves management.host at its default
    assert runner.settings.management.host == "127.0.0.1"
    server = runner._management
    assert server is not None
    bound = [sock.getsockname()[0] for sock in server._sockets.values()]
    assert bound and all(address == "127.0.0.1" for address in bound), bound
    port = runner.ports["management"]
    _, writer = await bounded(asyncio.open_connection("127.0.0.1", port))
    writer.close()
    outward = outward_ipv4()
    if outward is not None:
        with pytest.raises(OSError):
            await bounded(asyncio.open_connection(outward, port))


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [("0.0.0.0", None, True), ("0.0.0.0", TOKEN, False), ("127.0.0.1", None, False)],
)
def test_exposing_management_without_a_token_is_warned_about(
    caplog: pytest.LogCaptureFixture, host: str, token: str | None, warned: bool
) -> None:
    """Management on a non-loopback address without a token logs a warning at start."""
    settings = RunnerSettings()
    settings.management.host = host
    settings.management.token = token
    state: Any = types.SimpleNamespace(settings=settings)
    with caplog.at_level(logging.WARNING, logger="tornado_ws_runner.management"):
        management.make_management_app(state)
    warnings = [r for r in caplog.records if "without a token" in r.getMessage()]
    assert bool(warnings) == warned


# -- the token: required, compared in constant time -------------------------------------------


@async_test
async def test_the_token_is_required_and_compared_with_hmac_compare_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The token is required and hmac.compare_digest alone decides on every token given."""
    # A spy forced to say "equal" lets a wrong token in; forced "different" keeps the
    # right one out: no other comparison gates the routes.
    calls: list[tuple[bytes, bytes]] = []
    verdict: dict[str, bool | None] = {"forced": None}

    def spy(given: bytes, expected: bytes) -> bool:
        calls.append((given, expected))
        forced = verdict["forced"]
        return hmac.compare_digest(given, expected) if forced is None else forced

    monkeypatch.setattr(management, "hmac", types.SimpleNamespace(compare_digest=spy))
    async with running(h.settings(token=TOKEN)) as run:
        assert (await run.fetch("/@connections")).code == 401
        assert calls == [], "no token given: nothing to compare"

        same_length = "x" * len(TOKEN)
        for wrong in (same_length, "short", TOKEN + "-longer"):
            assert (await run.fetch("/@connections", token=wrong)).code == 401
        assert (await run.fetch("/@connections", token=TOKEN)).code == 200
        assert calls == [
            (same_length.encode(), TOKEN.encode()),
            (b"short", TOKEN.encode()),
            ((TOKEN + "-longer").encode(), TOKEN.encode()),
            (TOKEN.encode(), TOKEN.encode()),
        ]

        verdict["forced"] = True
        assert (await run.fetch("/@connections", token="wrong")).code == 200
        verdict["forced"] = False
        assert (await run.fetch("/@connections", token=TOKEN)).code == 401
        assert (await run.fetch("/healthz")).code == 200  # probes stay public


# -- the Origin allow-list ----------------------------------------------------------------------

ALLOWED = "https://app.example"


async def raw_upgrade(port: int, headers: dict[str, str]) -> tuple[int, str, str]:
    """An upgrade request sent by hand: (status, head, body) of the answer."""
    reader, writer = await bounded(asyncio.open_connection("127.0.0.1", port))
    try:
        headers = {"Host": f"127.0.0.1:{port}", **headers}
        lines = [
            "GET / HTTP/1.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = (await bounded(reader.readuntil(b"\r\n\r\n"))).decode("latin-1")
        if head.startswith("HTTP/1.1 101"):
            return 101, head, ""
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = (await bounded(reader.readexactly(length))).decode("utf-8")
    finally:
        writer.close()
    return int(head.split(" ", 2)[1]), head, body


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://app.example",  # another scheme
        "https://app.example:8443",  # another port
        "https://sub.app.example",
        "https://app.example.evil.example",
        "https://evil.example/https://app.example",
        "https://app.example/",
        "HTTPS://APP.EXAMPLE",
        "null",  # sandboxed iframes, file: pages
        "",
    ],
)
async def test_an_origin_not_in_the_allow_list_is_refused_with_403(
    serve: Serve, origin: str
) -> None:
    """Look-alike origins are refused (403, no upgrade) before on_connect runs."""
    runner = await serve(limits={"allowed_origins": [ALLOWED]})
    status, head, body = await raw_upgrade(runner.ports["listen"], {"Origin": origin})
    assert status == 403
    assert "sec-websocket-accept" not in head.lower()
    assert not internals_in(head + body)
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await tornado_connect(ws_url(runner), headers={"Origin": origin})
    assert refused.value.code == 403
    assert PROBE.connects == [], "on_connect never ran"


@pytest.mark.parametrize(
    "extra",
    [
        {"Host": "evil.example"},  # Origin == Host: what a DNS-rebinding page sends
        {"Host": "evil.example", "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},
    ],
)
async def test_what_tornado_deems_same_origin_does_not_bypass_the_list(
    serve: Serve, extra: dict[str, str]
) -> None:
    """Origin == Host or Sec-Fetch-Site: same-origin/none do not bypass the allow-list."""
    # Tornado 6.6 skips check_origin for what it deems same-origin (a DNS-rebinding
    # page sends Origin == Host); the operator's list must hold regardless.
    runner = await serve(limits={"allowed_origins": [ALLOWED]})
    headers = {"Origin": "http://evil.example", **extra}
    status, head, _ = await raw_upgrade(runner.ports["listen"], headers)
    assert status == 403, head
    assert PROBE.connects == []
    status, head, _ = await raw_upgrade(
        runner.ports["listen"], {"Origin": ALLOWED, "Sec-Fetch-Site": "cross-site"}
    )
    assert status == 101, head
    await until(lambda: len(PROBE.connects) == 1, "the allowed origin's on_connect")


async def test_an_allowed_origin_and_no_origin_are_served(serve: Serve) -> None:
    """The exact allowed Origin and a client that sends none get their echo."""
    runner = await serve(limits={"allowed_origins": [ALLOWED]})
    conn = await tornado_connect(ws_url(runner), headers={"Origin": ALLOWED})
    assert (await ask(conn, {"name": "echo", "payload": 1}))["statusCode"] == 200
    conn.close()
    async with websockets_connect(ws_url(runner)) as no_origin:
        assert (await ask(no_origin, {"name": "echo", "payload": 2}))["statusCode"] == 200
    assert len(PROBE.connects) == 2


# -- connection ids -------------------------------------------------------------------------------


def assert_random_uuid4s(ids: list[str]) -> None:
    """Distinct canonical UUID v4s (RFC 4122 variant) whose 122 random bits each come
    up set in 35-65 % of the ids (for 1000 ids a fair bit misses that by > 9 sigma)."""
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(i) for i in ids]
    for value, text in zip(parsed, ids, strict=True):
        assert str(value) == text
        assert value.version == 4 and value.variant == uuid.RFC_4122
    if len(ids) < 1000:
        return
    fixed = {48, 49, 50, 51, 64, 65}  # bits (from the left) holding the version and variant
    for bit in range(128):
        if bit in fixed:
            continue
        ones = sum((value.int >> (127 - bit)) & 1 for value in parsed)
        assert 0.35 * len(ids) < ones < 0.65 * len(ids), (bit, ones)


async def test_connection_ids_are_random_uuid4s(serve: Serve) -> None:
    """50 connection ids, 1000 registry and 1000 stream ids: distinct, random UUID v4s."""
    runner = await serve()
    conns = [await tornado_connect(ws_url(runner)) for _ in range(50)]
    await until(lambda: len(registry(runner).ids()) == 50, "50 connections accepted")
    ids = registry(runner).ids()
    assert sorted(ids) == sorted(PROBE.connection_ids())
    assert_random_uuid4s(ids)
    for conn in conns:
        conn.close()

    reg, watch = Registry(), SendWatch()
    socket: Any = types.SimpleNamespace()
    assert_random_uuid4s([Connection(reg, watch, socket).id for _ in range(1000)])
    assert_random_uuid4s([codec.stream_id() for _ in range(1000)])


# -- nothing internal in any answer, unless error_details is on --------------------------------


@pytest.mark.parametrize("details", [False, True], ids=["error_details off", "error_details on"])
async def test_error_frames_hold_a_traceback_only_with_error_details(
    serve: Serve, details: bool
) -> None:
    """500 and failed-stream frames hold a traceback only when error_details is on."""
    runner = await serve(RELIABILITY, error_details=details)
    async with websockets_connect(ws_url(runner)) as ws:
        await send(ws, {"name": "fail", "headers": {"message-id": "f"}})
        fail_text = await bounded(ws.recv())
        await send(ws, {"name": "nan", "headers": {"message-id": "n"}})
        nan_text = await bounded(ws.recv())
        await send(ws, {"name": "failingStream", "headers": {"message-id": "s"}})
        frames = [json.loads(await bounded(ws.recv())) for _ in range(3)]
        done_text = json.dumps(frames[-1])
    for text, status in ((fail_text, 500), (nan_text, 500), (done_text, 500)):
        frame = json.loads(text)
        assert frame["statusCode"] == status and frame["body"]["statusCode"] == status
        if details:
            assert "Traceback" in frame["body"]["details"], frame
            assert 'File "' in frame["body"]["details"]
        else:
            assert internals_in(text) == [], text
            assert frame["body"]["message"] == "Internal Server Error"
            assert frame["body"]["details"] == ""
    assert frames[-1]["headers"]["x-stream"] == "done"
    if details:
        assert "failHandler" in json.loads(fail_text)["body"]["details"]
        assert SECRET in json.loads(fail_text)["body"]["message"]


@pytest.mark.parametrize("details", [False, True], ids=["error_details off", "error_details on"])
async def test_a_json_error_in_a_handler_is_a_400_without_a_traceback(
    serve: Serve, details: bool
) -> None:
    """A handler's JSONDecodeError: 400 with the parser's message, never a traceback."""
    runner = await serve(RELIABILITY, error_details=details)
    async with websockets_connect(ws_url(runner)) as ws:
        await send(ws, {"name": "badJson", "headers": {"message-id": "b"}})
        text = await bounded(ws.recv())
    frame = json.loads(text)
    assert (frame["statusCode"], frame["body"]["message"]) == (400, "Bad Request.")
    assert frame["headers"]["message-id"] == "b"
    assert frame["body"]["details"].startswith("Expecting property name")
    assert internals_in(text) == [], text


async def test_a_failing_on_connect_closes_1008_without_internals(serve: Serve) -> None:
    """on_connect raising: close 1008 'Internal Server Error', nothing of the exception."""
    runner = await serve(RELIABILITY)
    conn = await tornado_connect(ws_url(runner, "/?boom=1"))
    code, reason = await closed_with(conn)
    assert (code, reason) == (1008, "Internal Server Error")


async def test_http_answers_of_the_websocket_port_hold_no_internals(serve: Serve) -> None:
    """A plain GET and an upgrade without its key on the client port: 400, no internals."""
    runner = await serve(RELIABILITY)
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    try:
        for headers in ({}, {"Upgrade": "websocket", "Connection": "Upgrade"}):
            answer = await client.fetch(
                f"http://127.0.0.1:{runner.ports['listen']}/x", headers=headers, raise_error=False
            )
            assert answer.code in (400, 426), answer.body  # not an upgrade; no key
            assert internals_in(answer.body.decode()) == [], answer.body
    finally:
        client.close()


@pytest.mark.parametrize("details", [False, True], ids=["error_details off", "error_details on"])
@async_test
async def test_a_management_500_holds_no_internals_even_with_error_details(
    monkeypatch: pytest.MonkeyPatch, details: bool
) -> None:
    """A management 500 is bare JSON in both modes: error_details is for client frames."""
    s = h.settings()
    s.error_details = details
    async with running(s) as run:

        def broken() -> list[str]:
            raise RuntimeError(SECRET)

        monkeypatch.setattr(run.state.registry, "ids", broken)
        answer = await run.fetch("/@connections")
        assert answer.code == 500
        assert body_of(answer) == {
            "statusCode": 500,
            "message": "Internal Server Error.",
            "details": "",
        }
        assert internals_in(answer.body.decode()) == []


# -- TLS ------------------------------------------------------------------------------------------


def make_certificate(folder: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1: with the cryptography package if it is
    installed, else the openssl command."""
    key, cert = folder / "server.key", folder / "server.crt"
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command")
        return openssl_certificate(folder)
    import ipaddress

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return str(key), str(cert)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


async def test_wss_serves_the_configured_certificate_over_tls_1_2_or_later(
    serve: Serve, certificate: tuple[str, str]
) -> None:
    """WSS presents exactly the generated certificate over TLS 1.2+ and echoes."""
    key, cert = certificate
    runner = await serve(tls={"key": key, "cert": cert, "port": 0})
    context = ssl.create_default_context(cafile=cert)
    _, writer = await bounded(
        asyncio.open_connection("127.0.0.1", runner.ports["tls"], ssl=context)
    )
    tls = writer.get_extra_info("ssl_object")
    assert tls.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
    assert tls.version() in ("TLSv1.2", "TLSv1.3")
    writer.close()
    async with websockets_connect(ws_url(runner, tls=True), ssl=context) as wss:
        frame = await ask(wss, {"name": "echo", "headers": {"message-id": "tls"}})
        assert (frame["statusCode"], frame["headers"]["message-id"]) == (200, "tls")
    server_context = tls_context(runner.settings)
    assert server_context.minimum_version >= ssl.TLSVersion.TLSv1_2


async def test_plain_text_clients_on_the_tls_port_get_no_websocket(
    serve: Serve, certificate: tuple[str, str]
) -> None:
    """Plain-text clients on the TLS port get no WebSocket; wss:// still works after."""
    key, cert = certificate
    runner = await serve(tls={"key": key, "cert": cert, "port": 0})
    plain_url = f"ws://127.0.0.1:{runner.ports['tls']}/"
    with pytest.raises((OSError, tornado.httpclient.HTTPClientError, asyncio.TimeoutError)):
        await tornado_connect(plain_url)
    with pytest.raises((OSError, WebSocketException, asyncio.TimeoutError)):
        async with websockets_connect(plain_url):
            pass

    reader, writer = await bounded(asyncio.open_connection("127.0.0.1", runner.ports["tls"]))
    writer.write(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await writer.drain()
    try:
        answer = await bounded(reader.read())  # until the server closes
    except ConnectionResetError:
        answer = b""
    writer.close()
    assert not answer.startswith(b"HTTP/"), answer[:80]
    assert b"101" not in answer and b"Sec-WebSocket-Accept" not in answer
    assert PROBE.connects == []

    context = ssl.create_default_context(cafile=cert)
    async with websockets_connect(ws_url(runner, tls=True), ssl=context) as wss:
        assert (await ask(wss, {"name": "echo"}))["statusCode"] == 200
    assert len(PROBE.connects) == 1
