"""Helpers for the tests that run the real ``tornado-ws-runner`` command as a process.

Nothing here sleeps to wait for a condition: waits are on output lines, sockets, files or
process exit, each with a bounded deadline, and every process started is killed at the end
of the test that started it (see ``Spawner``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tornado_ws_runner.client import Client, ConnectionClosed

#: The console script installed beside the interpreter running the tests.
SCRIPT = Path(sys.executable).parent / "tornado-ws-runner"
#: The service the daemon tests serve (config.yaml and handlers/).
FIXTURE = Path(__file__).parent / "fixtures" / "daemon"
#: How long any single wait may take before the test fails.
DEADLINE = 15.0

_SERVING = re.compile(r"serving \S+ on (?P<ports>.*)$")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without systemd's variables, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS")
    }
    env.update(extra)
    return env


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = DEADLINE,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs the command to completion (stdin closed) and captures its output."""
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else clean_env(),
        timeout=timeout,
        check=False,
    )


def copy_app(tmp_path: Path) -> Path:
    """Copies the fixture service into ``tmp_path/app`` and returns that folder."""
    app = tmp_path / "app"
    shutil.copytree(FIXTURE, app, ignore=shutil.ignore_patterns("__pycache__"))
    return app


def write_runner(folder: Path, extra: str = "", drain: float = 5) -> Path:
    """A runner.yaml serving ``config.yaml`` on 127.0.0.1 with ports chosen by the kernel."""
    path = folder / "runner.yaml"
    path.write_text(
        "api: config.yaml\n"
        "listen: {host: 127.0.0.1, port: 0}\n"
        "management: {host: 127.0.0.1, port: 0}\n"
        f"timeouts: {{drain: {drain}, ping_interval: 0}}\n" + extra,
        encoding="utf-8",
    )
    return path


def wait_until(what: str, predicate: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """Polls ``predicate`` until it returns something true; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def parse_ports(text: str) -> dict[str, int]:
    """The ports of the "serving ... on listen :P, management :P" log line."""
    return {name: int(port) for name, port in re.findall(r"(\w+) :(\d+)", text)}


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def stopped(pid: int) -> bool:
    """True once ``pid`` is stopped by a signal (SIGSTOP): its state in /proc is T."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def pids_with_arg(arg: str) -> list[int]:
    """Processes of this user whose command line holds ``arg`` as a whole argument."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if arg.encode() in argv and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


class Daemon:
    """A foreground ``tornado-ws-runner`` with its stderr read line by line."""

    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [str(SCRIPT), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env),
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ports: dict[str, int] = {}

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(
        self, pattern: str, timeout: float = DEADLINE, start: int = 0
    ) -> tuple[re.Match[str], int]:
        """The first stderr line from index ``start`` on matching ``pattern``, and its index."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    match = regex.search(self.lines[index])
                    if match:
                        return match, index
                    index += 1
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    why = "the process closed stderr" if self._eof else f"{timeout}s passed"
                    raise AssertionError(
                        f"no line matching {pattern!r} ({why}); stderr was:\n"
                        + "\n".join(self.lines)
                    )
                self._cond.wait(remaining)

    def wait_serving(self) -> dict[str, int]:
        """Waits for the "serving" line and returns the ports it names."""
        match, _ = self.wait_for(_SERVING.pattern)
        self.ports = parse_ports(match["ports"])
        return self.ports

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ports['listen']}/"

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = DEADLINE) -> int:
        """Waits for the exit (and the end of stderr) and returns the exit status."""
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(DEADLINE)
        self._reader.join(DEADLINE)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class Spawner:
    """Starts daemons for one test and kills whatever is left of them at its end."""

    def __init__(self) -> None:
        self.daemons: list[Daemon] = []
        #: Command-line arguments naming detached daemons (their unique pidfile paths).
        self.detached: list[str] = []

    def start(self, *args: str, env: Mapping[str, str] | None = None) -> Daemon:
        daemon = Daemon(list(args), env if env is not None else clean_env())
        self.daemons.append(daemon)
        return daemon

    def serving(self, *args: str, env: Mapping[str, str] | None = None) -> Daemon:
        """Starts a daemon and waits until it serves (its ports are then known)."""
        daemon = self.start(*args, env=env)
        daemon.wait_serving()
        return daemon

    def track_detached(self, arg: str) -> None:
        """Kills at teardown any process whose command line holds ``arg`` (a pidfile path)."""
        self.detached.append(arg)

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.kill()
        for arg in self.detached:
            for pid in pids_with_arg(arg):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def spawner() -> Iterator[Spawner]:
    """The body of the ``spawn`` fixtures: yields a Spawner, then kills what it started."""
    spawn = Spawner()
    try:
        yield spawn
    finally:
        spawn.close()


async def reply_body(client: Client, name: str, payload: Any = None) -> Any:
    """The body of the reply to event ``name``, within DEADLINE (an error reply raises
    ErrorResponse)."""
    return (await client.call(name, payload, timeout=DEADLINE)).body


async def pushed(client: Client) -> Any:
    """The body of the next frame no call asked for (a handler's push, a management
    POST), within DEADLINE."""
    async with asyncio.timeout(DEADLINE), contextlib.aclosing(client.pushes()) as pushes:
        async for frame in pushes:
            return frame.body
    raise AssertionError(f"closed ({client.close_code} {client.close_reason}) before a push")


async def closed(client: Client) -> tuple[int | None, str | None]:
    """Waits (within DEADLINE) until the server closes ``client``, dropping the pushes
    that come first; the close code and reason."""
    async with asyncio.timeout(DEADLINE):
        with contextlib.suppress(ConnectionClosed):  # pushes() raises for other than 1000, 1001
            async for _ in client.pushes():
                pass
    return client.close_code, client.close_reason
