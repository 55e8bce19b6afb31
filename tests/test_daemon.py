"""Signals, reloads, --daemon/--pidfile and access logs of the real daemon process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from procutil import (
    DEADLINE,
    Spawner,
    clean_env,
    closed,
    copy_app,
    parse_ports,
    pid_alive,
    pushed,
    reply_body,
    run_cli,
    wait_until,
    write_runner,
)

from tornado_ws_runner.client import Client, ConnectionClosed, ErrorResponse, Response, connect

DISCONNECTS_ENV = "TWR_TEST_DISCONNECTS"  # read by fixtures/daemon/handlers/recorder.py


# -- SIGTERM -------------------------------------------------------------------------


def test_sigterm_closes_every_client_with_1001_and_runs_on_disconnect(
    app: Path, tmp_path: Path, spawn: Spawner
) -> None:
    """SIGTERM: 3 connected clients get close 1001, on_disconnect runs for each, exit 0."""
    disconnects = tmp_path / "disconnects.txt"
    daemon = spawn.serving(
        "--conf", str(app / "runner.yaml"), env=clean_env(**{DISCONNECTS_ENV: str(disconnects)})
    )

    async def scenario() -> tuple[list[str], list[int | None]]:
        clients = [await Client.open(daemon.url) for _ in range(3)]
        ids = []
        for i, client in enumerate(clients):
            who = await client.call("whoami", timeout=DEADLINE)
            echo = await client.call("echo", {"n": i}, timeout=DEADLINE)
            assert (who.status_code, echo.status_code, echo.body) == (200, 200, {"n": i})
            assert list(echo.headers) == ["message-id"]  # the message-id alone
            ids.append(who.body["connectionId"])
        daemon.signal(signal.SIGTERM)
        return ids, [(await closed(client))[0] for client in clients]

    ids, codes = asyncio.run(scenario())
    assert codes == [1001, 1001, 1001]
    assert daemon.wait() == 0, daemon.output
    assert len(set(ids)) == 3
    assert sorted(disconnects.read_text(encoding="utf-8").split()) == sorted(ids)
    daemon.wait_for(r"stopped: 3 connections closed, 0 events cut")
    assert "Traceback" not in daemon.output


async def _start_slow(client: Client, seconds: float) -> asyncio.Task[Response]:
    """Calls the "slow" event; returns the call, once the handler has said it started."""
    reply = asyncio.create_task(client.call("slow", {"seconds": seconds}, timeout=DEADLINE))
    assert await pushed(client) == {"started": True}
    return reply


def test_sigterm_lets_an_event_in_flight_finish_before_closing(app: Path, spawn: Spawner) -> None:
    """SIGTERM during a handler: the client gets its reply first, then close 1001; exit 0."""
    daemon = spawn.serving("--conf", str(app / "runner.yaml"))

    async def scenario() -> tuple[Response, int | None]:
        async with connect(daemon.url) as client:
            reply = await _start_slow(client, 0.5)
            daemon.signal(signal.SIGTERM)
            answered = await reply  # ConnectionClosed if the close came first
            return answered, (await closed(client))[0]

    reply, code = asyncio.run(scenario())
    assert (reply.status_code, reply.body) == (200, {"finished": True})
    assert list(reply.headers) == ["message-id"]
    assert code == 1001
    assert daemon.wait() == 0, daemon.output
    daemon.wait_for(r"stopped: 1 connections closed, 0 events cut")


def test_sigterm_cuts_an_event_that_outlasts_the_drain_timeout(app: Path, spawn: Spawner) -> None:
    """An event running past timeouts.drain is cut: close 1001, exit 0, the log counts it."""
    write_runner(app, drain=0.2)
    daemon = spawn.serving("--conf", str(app / "runner.yaml"))

    async def scenario() -> int | None:
        async with connect(daemon.url) as client:
            reply = await _start_slow(client, 60)
            daemon.signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as cut:
                await reply
            return cut.value.code

    assert asyncio.run(scenario()) == 1001
    assert daemon.wait() == 0, daemon.output
    daemon.wait_for(r"stopped: 1 connections closed, 1 events cut by the drain timeout")
    assert "Traceback" not in daemon.output


def test_sigint_stops_cleanly(app: Path, spawn: Spawner) -> None:
    """SIGINT stops the daemon like SIGTERM: exit 0, no traceback."""
    daemon = spawn.serving("--conf", str(app / "runner.yaml"))
    daemon.signal(signal.SIGINT)
    assert daemon.wait() == 0, daemon.output
    daemon.wait_for(r"stopped: 0 connections closed")
    assert "Traceback" not in daemon.output


# -- SIGHUP --------------------------------------------------------------------------


def _bytecode_env() -> dict[str, str]:
    """The daemon's environment with Python's default of caching bytecode in __pycache__.

    The test runner may set PYTHONDONTWRITEBYTECODE; a service run by systemd does not,
    and a reload must see new handler code with the cache in play.
    """
    env = clean_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _rewrite(path: Path, old: str, new: str, mtime_ns: int | None = None) -> None:
    """Replaces ``old`` by ``new`` in the file; its mtime becomes ``mtime_ns`` if given."""
    path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_sighup_swaps_handlers_and_keeps_the_old_config_when_the_new_one_fails(
    app: Path, spawn: Spawner
) -> None:
    """SIGHUP reloads a rewritten handler on the same connection; a broken config is refused."""
    daemon = spawn.serving("--conf", str(app / "runner.yaml"), env=_bytecode_env())
    version = app / "handlers" / "version.py"
    config = app / "config.yaml"
    good_config = config.read_text(encoding="utf-8")

    async def reload(expect: str) -> list[str]:
        """Sends SIGHUP and returns the log lines from the one matching ``expect`` on."""
        mark = len(daemon.lines)
        daemon.signal(signal.SIGHUP)
        _, index = await asyncio.to_thread(daemon.wait_for, expect, DEADLINE, mark)
        return daemon.lines[index:]

    async def scenario() -> None:
        client = await Client.open(daemon.url)
        me = (await reply_body(client, "whoami"))["connectionId"]
        assert await reply_body(client, "version") == "v1"

        # An edit made a while after the start (mtime 2 s on), as an operator's would be;
        # test_sighup_sees_a_same_size_edit_with_the_same_mtime covers a same-second edit.
        later = version.stat().st_mtime_ns + 2_000_000_000
        _rewrite(version, '"v1"', '"v2"', later)
        await reload(r"reloaded \S+config\.yaml")
        assert await reply_body(client, "version") == "v2"

        _rewrite(config, "- versionHandler", "- versionHandlr")
        mark = len(daemon.lines)
        lines = await reload(r"reload failed")
        assert lines[0].split()[2] == "ERROR", lines[0]
        match, _ = await asyncio.to_thread(daemon.wait_for, r"versionHandlr", DEADLINE, mark)
        assert "config.yaml" in match.string and "api.events[3].policies[0]" in match.string
        assert await reply_body(client, "version") == "v2"

        config.write_text("api:\n  events: [\n", encoding="utf-8")  # not YAML
        mark = len(daemon.lines)
        await reload(r"reload failed")
        await asyncio.to_thread(daemon.wait_for, r"config\.yaml:\d+: invalid YAML", DEADLINE, mark)
        assert await reply_body(client, "version") == "v2"

        config.write_text(good_config, encoding="utf-8")
        await reload(r"reloaded \S+config\.yaml")
        assert await reply_body(client, "version") == "v2"
        assert (await reply_body(client, "whoami"))["connectionId"] == me
        assert not client.closed
        await client.close()

    asyncio.run(scenario())
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.output
    assert "Traceback" not in daemon.output


def test_sighup_sees_a_same_size_edit_with_the_same_mtime(app: Path, spawn: Spawner) -> None:
    """SIGHUP must reload handler code even when size and mtime (second) are unchanged."""
    version = app / "handlers" / "version.py"
    mtime_ns = version.stat().st_mtime_ns
    daemon = spawn.serving("--conf", str(app / "runner.yaml"), env=_bytecode_env())

    async def scenario() -> None:
        async with connect(daemon.url) as client:
            assert await reply_body(client, "version") == "v1"
            _rewrite(version, '"v1"', '"v2"', mtime_ns)  # as cp -p, tar or rsync -t would leave it
            mark = len(daemon.lines)
            daemon.signal(signal.SIGHUP)
            await asyncio.to_thread(daemon.wait_for, r"reloaded ", DEADLINE, mark)
            assert await reply_body(client, "version") == "v2"

    asyncio.run(scenario())


# -- --daemon and --pidfile ----------------------------------------------------------


def _pid_in(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") and text.strip().isdigit() else None


def _ports_in(log: Path) -> dict[str, int] | None:
    try:
        text = log.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    match = re.search(r"serving \S+ on (.*)", text)
    return parse_ports(match[1]) if match else None


def _start_detached(app: Path, pidfile: Path, spawn: Spawner) -> subprocess.CompletedProcess[str]:
    spawn.track_detached(str(pidfile))
    started = time.monotonic()
    result = run_cli("--conf", str(app / "runner.yaml"), "--daemon", "--pidfile", str(pidfile))
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < DEADLINE / 2, "the parent did not return promptly"
    return result


def _stop_detached(pid: int, pidfile: Path) -> None:
    os.kill(pid, signal.SIGTERM)
    wait_until(f"pid {pid} to exit after SIGTERM", lambda: not pid_alive(pid))
    assert not pidfile.exists(), "the daemon left its pidfile behind"


def test_daemon_mode_detaches_writes_pidfile_refuses_a_second_start_and_stops(
    app: Path, tmp_path: Path, spawn: Spawner
) -> None:
    """--daemon: parent exits 0, pidfile holds the serving daemon, a 2nd start exits 1."""
    log = tmp_path / "daemon.log"
    write_runner(app, f"logging: {{file: {log}}}\n")
    pidfile = tmp_path / "twr.pid"

    result = _start_detached(app, pidfile, spawn)
    assert "Traceback" not in result.stderr
    pid = wait_until("the pidfile", lambda: _pid_in(pidfile))
    assert pid_alive(pid)
    assert os.getsid(pid) != os.getsid(0), "the daemon did not start its own session"
    ports = wait_until("the serving line in the log file", lambda: _ports_in(log))

    async def echo() -> Any:
        async with connect(f"ws://127.0.0.1:{ports['listen']}/") as client:
            return await reply_body(client, "echo", {"hello": "daemon"})

    assert asyncio.run(echo()) == {"hello": "daemon"}

    second = run_cli("--conf", str(app / "runner.yaml"), "--daemon", "--pidfile", str(pidfile))
    assert second.returncode == 1, second.stderr
    assert "Traceback" not in second.stderr
    assert f"pid {pid}" in second.stderr and str(pidfile) in second.stderr
    assert _pid_in(pidfile) == pid and pid_alive(pid)

    _stop_detached(pid, pidfile)
    text = log.read_text(encoding="utf-8")
    assert "stopped: " in text and "Traceback" not in text


def test_daemon_mode_replaces_a_stale_pidfile(app: Path, tmp_path: Path, spawn: Spawner) -> None:
    """A pidfile left by a dead process (not locked) is taken over, and the log says so."""
    log = tmp_path / "daemon.log"
    write_runner(app, f"logging: {{file: {log}}}\n")
    dead = subprocess.Popen(["true"])
    dead.wait(DEADLINE)
    pidfile = tmp_path / "twr.pid"
    pidfile.write_text(f"{dead.pid}\n", encoding="utf-8")

    _start_detached(app, pidfile, spawn)
    pid = wait_until(
        "a new pid in the pidfile",
        lambda: _pid_in(pidfile) not in (None, dead.pid) and _pid_in(pidfile),
    )
    assert pid_alive(pid)
    wait_until("the serving line in the log file", lambda: _ports_in(log))
    text = log.read_text(encoding="utf-8")
    assert re.search(rf"stale pidfile {re.escape(str(pidfile))} \(pid {dead.pid}\)", text), text
    _stop_detached(pid, pidfile)


def test_foreground_pidfile_is_written_and_removed(
    app: Path, tmp_path: Path, spawn: Spawner
) -> None:
    """--pidfile without --daemon: the pidfile holds the process's pid until it stops."""
    pidfile = tmp_path / "fg.pid"
    daemon = spawn.serving("--conf", str(app / "runner.yaml"), "--pidfile", str(pidfile))
    assert _pid_in(pidfile) == daemon.pid
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.output
    assert not pidfile.exists()


# -- event loop ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "choice, expected", [("asyncio", "asyncio"), ("uvloop", "uvloop"), ("auto", "uvloop")]
)
def test_event_loop_setting_picks_the_loop_that_serves(
    tmp_path: Path, choice: str, expected: str, spawn: Spawner
) -> None:
    """event_loop: asyncio/uvloop/auto runs the daemon on that loop, and it serves."""
    app = copy_app(tmp_path)
    write_runner(app, extra=f"event_loop: {choice}\n")
    daemon = spawn.serving("--conf", str(app / "runner.yaml"))
    daemon.wait_for(rf"running on the {expected} event loop")

    async def scenario() -> Any:
        async with connect(daemon.url) as client:
            return await reply_body(client, "echo", {"loop": choice})

    assert asyncio.run(scenario()) == {"loop": choice}
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.output


def test_a_log_format_asking_for_the_caller_and_thread_gets_them(
    app: Path, tmp_path: Path, spawn: Spawner
) -> None:
    """Only what the format shows is collected per record (the default shows neither):
    a format with %(funcName)s, %(lineno)d and %(threadName)s still gets real values."""
    log = tmp_path / "runner.log"
    fmt = "%(levelname)s %(funcName)s:%(lineno)d [%(threadName)s] %(message)s"
    write_runner(app, f"logging: {{file: {log}, format: '{fmt}'}}\n")
    daemon = spawn.start("--conf", str(app / "runner.yaml"))
    wait_until("the serving line in the log file", lambda: _ports_in(log))
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    stopped = [line for line in log.read_text(encoding="utf-8").splitlines() if "stopped: " in line]
    assert len(stopped) == 1, stopped
    assert re.match(r"INFO stop:[1-9]\d* \[MainThread\] stopped: ", stopped[0]), stopped[0]


# -- access log ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "shown"),
    [
        (None, r"INFO tornado_ws_runner\.access: "),  # the default: lines made directly
        (
            "%(levelname)s [%(process)d] %(name)s: %(message)s",
            r"INFO \[\d+\] tornado_ws_runner\.access: ",
        ),
    ],
    ids=["default-format", "format-through-logging"],
)
def test_access_log_has_one_line_per_open_close_and_event(
    app: Path, spawn: Spawner, fmt: str | None, shown: str
) -> None:
    """stderr gets one INFO access line per open, close and event (id, name, status, time),
    in the default format (made without a LogRecord) and in one that needs a record."""
    if fmt is not None:
        write_runner(app, f"logging: {{format: '{fmt}'}}\n")
    daemon = spawn.serving("--conf", str(app / "runner.yaml"))

    async def scenario() -> str:
        async with connect(daemon.url) as client:  # closes with 1000
            me: str = (await reply_body(client, "whoami"))["connectionId"]
            await reply_body(client, "echo", {"x": 1})
            with pytest.raises(ErrorResponse) as missing:
                await client.call("no_such_event", timeout=DEADLINE)
            assert missing.value.status_code == 501
        return me

    me = asyncio.run(scenario())
    daemon.wait_for(rf"{me} on_disconnect 200 ")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0

    access = [line for line in daemon.lines if f"tornado_ws_runner.access: {me} " in line]
    prefix = shown + re.escape(me)
    expected = [
        prefix + r" open from 127\.0\.0\.1 \(.+\)$",
        prefix + r" whoami 200 \d+\.\dms$",
        prefix + r" echo 200 \d+\.\dms$",
        prefix + r" no_such_event 501 \d+\.\dms$",
        prefix + r" closed \(1000\)$",
        prefix + r" on_disconnect 200 \d+\.\dms$",
    ]
    assert len(access) == len(expected), "\n".join(access)
    for line, pattern in zip(access, expected, strict=True):
        assert re.search(pattern, line), f"{line!r} does not match {pattern!r}"


def test_a_relative_pidfile_is_taken_from_the_working_directory(
    app: Path, tmp_path: Path, spawn: Spawner
) -> None:
    """--daemon --pidfile rel.pid run in DIR writes DIR/rel.pid (not /rel.pid: a daemon
    works in /)."""
    log = tmp_path / "daemon.log"
    write_runner(app, f"logging: {{file: {log}}}\n")
    pidfile = tmp_path / "rel.pid"
    spawn.track_detached(str(pidfile))
    result = run_cli(
        "--conf", str(app / "runner.yaml"), "--daemon", "--pidfile", "rel.pid", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    pid = wait_until("the pidfile in the working directory", lambda: _pid_in(pidfile))
    assert pid_alive(pid)
    wait_until("the serving line in the log file", lambda: _ports_in(log))
    _stop_detached(pid, pidfile)


def test_sighup_takes_up_runner_yaml_live_keys_and_names_those_needing_a_restart(
    app: Path, spawn: Spawner
) -> None:
    """SIGHUP after runner.yaml changed: a live key (limits.max_message_size) holds at
    once for the connections opened after it (Tornado reads the limit when a connection
    opens); a key that needs a restart (listen.host) is logged."""
    runner_yaml = write_runner(app, "logging: {access: false}\nlimits: {max_message_size: 65536}\n")
    daemon = spawn.serving("--conf", str(runner_yaml))

    async def scenario() -> None:
        client = await Client.open(daemon.url)
        big = "x" * 40_000
        assert await reply_body(client, "echo", big) == big
        _rewrite(runner_yaml, "max_message_size: 65536", "max_message_size: 20000")
        _rewrite(
            runner_yaml, "listen: {host: 127.0.0.1, port: 0}", "listen: {host: 127.0.0.2, port: 0}"
        )
        mark = len(daemon.lines)
        daemon.signal(signal.SIGHUP)
        match, _ = await asyncio.to_thread(
            daemon.wait_for, r"take effect at a restart", DEADLINE, mark
        )
        assert "listen.host" in match.string and "max_message_size" not in match.string
        await asyncio.to_thread(daemon.wait_for, r"reloaded \S+config\.yaml", DEADLINE, mark)
        async with connect(daemon.url) as late:  # still 127.0.0.1: the host waits for a restart
            with pytest.raises(ConnectionClosed) as refused:
                await late.call("echo", big, timeout=DEADLINE)
        assert refused.value.code == 1009, "a 40 KB frame is over the new 20 KB limit"
        await client.close()

    asyncio.run(scenario())
