"""systemd: the notify protocol of the real daemon, and the units in systemd/ as shipped."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from procutil import (
    DEADLINE,
    SCRIPT,
    Spawner,
    clean_env,
    copy_app,
    reply_body,
    spawner,
    write_runner,
)

from tornado_ws_runner.client import connect

UNITS = Path(__file__).resolve().parent.parent / "systemd"
INSTALLED_PATH = "/usr/bin/tornado-ws-runner"
#: Each unit file, and the name it is verified under (a template needs an instance).
UNIT_NAMES = {
    "tornado-ws-runner.service": "tornado-ws-runner.service",
    "tornado-ws-runner@.service": "tornado-ws-runner@test.service",
}
MAX_EXPOSURE = 2.0


@pytest.fixture
def spawn() -> Iterator[Spawner]:
    yield from spawner()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """An AF_UNIX datagram socket standing in for systemd's, and its path."""
    folder = tmp_path
    if len(str(tmp_path / "notify")) > 100:  # sun_path holds 108 bytes
        folder = Path(tempfile.mkdtemp(prefix="twr-"))
    path = str(folder / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        sock.settimeout(DEADLINE)
        yield sock, path
    finally:
        sock.close()
        if folder is not tmp_path:
            shutil.rmtree(folder, ignore_errors=True)


def _receive(sock: socket.socket) -> str:
    try:
        return sock.recv(4096).decode()
    except TimeoutError:
        raise AssertionError(f"no notify message within {DEADLINE}s") from None


def _next_state(sock: socket.socket, seen: list[str]) -> str:
    """The next message that is not a watchdog ping (every message goes to ``seen``)."""
    while True:
        message = _receive(sock)
        seen.append(message)
        if message != "WATCHDOG=1":
            return message


def test_sd_notify_ready_watchdog_reloading_stopping(
    tmp_path: Path, spawn: Spawner, notify_socket: tuple[socket.socket, str]
) -> None:
    """With NOTIFY_SOCKET and WATCHDOG_USEC: READY=1, pings, RELOADING/READY, STOPPING=1."""
    sock, path = notify_socket
    app = copy_app(tmp_path)
    write_runner(app)
    env = clean_env(NOTIFY_SOCKET=path, WATCHDOG_USEC="200000")
    daemon = spawn.start("--conf", str(app / "runner.yaml"), env=env)
    seen: list[str] = []

    assert _receive(sock) == "READY=1"  # the first message: no ping before it
    daemon.wait_serving()  # logged before READY=1: the ports are open by now

    async def echo() -> object:
        async with connect(daemon.url) as client:
            return await reply_body(client, "echo", "ready")

    assert asyncio.run(echo()) == "ready"
    # Pings every WATCHDOG_USEC / 2 (100 ms): wait for two of them.
    for _ in range(2):
        assert _receive(sock) == "WATCHDOG=1"

    daemon.signal(signal.SIGHUP)
    reloading = _next_state(sock, seen)
    assert reloading.startswith("RELOADING=1\n"), reloading
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", reloading), reloading
    assert _next_state(sock, seen) == "READY=1"
    daemon.wait_for(r"reloaded ")

    daemon.signal(signal.SIGTERM)
    assert _next_state(sock, seen) == "STOPPING=1"
    assert daemon.wait() == 0, daemon.output
    sock.setblocking(False)
    after: list[str] = []
    while True:
        try:
            after.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    assert "WATCHDOG=1" not in after, f"watchdog pings after STOPPING=1: {after}"
    assert seen[-1] == "STOPPING=1" and seen.count("STOPPING=1") == 1
    assert "Traceback" not in daemon.output


def test_sd_notify_to_an_abstract_socket(tmp_path: Path, spawn: Spawner) -> None:
    """NOTIFY_SOCKET=@name (the abstract namespace systemd may use) gets READY and STOPPING."""
    name = f"twr-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(DEADLINE)
        app = copy_app(tmp_path)
        write_runner(app)
        daemon = spawn.start(
            "--conf", str(app / "runner.yaml"), env=clean_env(NOTIFY_SOCKET="@" + name)
        )
        assert _receive(sock) == "READY=1"
        daemon.signal(signal.SIGTERM)
        assert _receive(sock) == "STOPPING=1"
        assert daemon.wait() == 0, daemon.output


# -- the unit files ------------------------------------------------------------------

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _install_unit(source: str, tmp_path: Path) -> Path:
    """The unit as shipped, with ExecStart pointing at the console script under test."""
    text = (UNITS / source).read_text(encoding="utf-8")
    assert INSTALLED_PATH in text
    target = tmp_path / UNIT_NAMES[source]
    target.write_text(text.replace(INSTALLED_PATH, str(SCRIPT)), encoding="utf-8")
    return target


@needs_systemd_analyze
@pytest.mark.parametrize("source", list(UNIT_NAMES))
def test_unit_passes_systemd_analyze_verify(source: str, tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit: exit 0 and nothing printed."""
    unit = _install_unit(source, tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", (
        result.stdout + result.stderr
    )


@needs_systemd_analyze
@pytest.mark.parametrize("source", list(UNIT_NAMES))
def test_unit_exposure_level_is_at_most_2(source: str, tmp_path: Path) -> None:
    """systemd-analyze security --offline=yes rates the unit's exposure 2.0 or less."""
    unit = _install_unit(source, tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE, match[0]
