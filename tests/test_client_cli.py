"""The ``tornado-ws-runner-client`` command, run as a real process against a real runner
on 127.0.0.1: one call (JSON lines, exit status 0/1/2/3/4) and the interactive session
(piped, and on a terminal through a pty)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from wsutil import PROBE, TIMEOUT, Serve, bounded, free_port, until, ws_url

#: The console script installed beside the interpreter running the tests.
SCRIPT = Path(sys.executable).parent / "tornado-ws-runner-client"
PIPE = asyncio.subprocess.PIPE


@contextlib.asynccontextmanager
async def started(*args: str, **options: Any) -> AsyncIterator[asyncio.subprocess.Process]:
    """The command as a subprocess of this test (``options`` for create_subprocess_exec:
    pipes unless told); killed at the end if still running."""
    options = {"stdin": PIPE, "stdout": PIPE, "stderr": PIPE, **options}
    proc = await asyncio.create_subprocess_exec(str(SCRIPT), *args, **options)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await bounded(proc.wait())


async def run(*args: str, stdin: bytes = b"") -> tuple[int, list[dict[str, Any]], str]:
    """Runs the command to its end: (exit status, stdout's JSON lines, stderr)."""
    async with started(*args) as proc:
        out, err = await bounded(proc.communicate(stdin), 3 * TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, [json.loads(line) for line in out.decode().splitlines()], err.decode()


async def next_frame(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await bounded(proc.stdout.readline())
    assert line, "stdout ended"
    frame: dict[str, Any] = json.loads(line)
    return frame


async def type_line(proc: asyncio.subprocess.Process, line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line.encode() + b"\n")
    await bounded(proc.stdin.drain())


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("tornado-ws-runner-client: "), stderr


# -- one call ----------------------------------------------------------------------------------


async def test_a_call_prints_its_reply_as_one_json_line_and_exits_0(serve: Serve) -> None:
    """--header goes on the message, --connect-header on the upgrade request."""
    runner = await serve()
    code, frames, err = await run(
        ws_url(runner), "echo", "--payload", '{"a": [1, "é"]}', "--params", '{"id": 7}',
        "--header", "X-Trace=t=1", "--connect-header", "Authorization=Bearer t0k",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert PROBE.connects[-1].request.headers["authorization"] == "Bearer t0k"
    assert "authorization" not in PROBE.events[-1].request.headers  # the upgrade's only
    [frame] = frames
    assert frame["statusCode"] == 200 and frame["headers"]["x-echo"] == "yes"
    assert frame["body"]["payload"] == {"a": [1, "é"]} and frame["body"]["params"] == {"id": 7}
    assert PROBE.events[-1].request.headers["x-trace"] == "t=1"
    assert frame["headers"]["message-id"] == PROBE.events[-1].request.headers["message-id"]


async def test_a_stream_prints_every_chunk_then_the_done_frame(serve: Serve) -> None:
    runner = await serve()
    code, frames, _ = await run(ws_url(runner), "stream", "--params", '{"n": 3}')
    assert code == 0
    assert [f["headers"]["x-stream"] for f in frames] == ["chunk", "chunk", "chunk", "done"]
    assert [f["body"] for f in frames[:3]] == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_stdout_closed_early_ends_it_quietly_with_141(serve: Serve) -> None:
    """``| head -1``: the reader takes one line and leaves; the command stops (exit
    status 128 + SIGPIPE, as a shell reports a command SIGPIPE ended), no traceback."""
    runner = await serve()
    read_end, write_end = os.pipe()
    async with started(
        ws_url(runner), "stream", "--params", '{"n": 5000}', stdout=write_end
    ) as proc:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:
            first = await bounded(asyncio.to_thread(reader.readline))
        assert json.loads(first)["headers"]["x-stream"] == "chunk"
        assert proc.stderr is not None
        err = await bounded(proc.stderr.read())
        assert await bounded(proc.wait()) == 141
    assert "Traceback" not in err.decode() and "Exception" not in err.decode(), err


@pytest.mark.parametrize(
    ("name", "statuses"),
    [("teapot", [418]), ("nope", [501]), ("failingStream", [200, 200, 200, 500])],
)
async def test_an_error_reply_is_printed_and_exits_1(
    serve: Serve, name: str, statuses: list[int]
) -> None:
    """An error frame, or a stream whose done frame carries the producer's error: 1."""
    runner = await serve()
    code, frames, err = await run(ws_url(runner), name)
    assert (code, err) == (1, "")
    assert [f["statusCode"] for f in frames] == statuses


@pytest.mark.parametrize(
    "args",
    [
        ["URL", "echo", "--payload", "{bad"],
        ["URL", "echo", "--payload", "NaN"],
        ["URL", "echo", "--payload", "[1e400]"],
        ["URL", "echo", "--params", "[1]"],
        ["URL", "echo", "--header", "no-equals-sign"],
        ["URL", "echo", "--timeout", "-1"],
        ["URL", "echo", "--nonsense"],
        ["URL", "--payload", "{}"],  # a payload needs NAME
        ["http://127.0.0.1/", "echo"],
        [],
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str]) -> None:
    """Checked before any connection (nothing listens on the port)."""
    url = f"ws://127.0.0.1:{free_port()}/"
    argv = [url if arg == "URL" else arg for arg in args]
    done = subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, timeout=TIMEOUT * 3)
    assert (done.returncode, done.stdout) == (2, "")
    no_traceback(done.stderr)


async def test_a_refusal_by_on_connect_exits_3_with_the_close_code_and_reason(
    serve: Serve,
) -> None:
    runner = await serve()
    code, frames, err = await run(ws_url(runner, "/?reject=raise&reason=Nope"), "echo")
    assert (code, frames) == (3, [])
    no_traceback(err)
    assert "1008" in err and "Nope" in err


async def test_nothing_listening_exits_3() -> None:
    code, frames, err = await run(f"ws://127.0.0.1:{free_port()}/", "echo")
    assert (code, frames) == (3, [])
    no_traceback(err)
    assert "refused" in err.lower()


async def test_no_reply_within_the_timeout_exits_4(serve: Serve) -> None:
    runner = await serve()
    gate = ["--payload", '{"gate": "never"}']
    code, frames, err = await run(ws_url(runner), "block", *gate, "--timeout", "0.2")
    PROBE.open("never")  # lets the handler end before the runner stops
    assert (code, frames) == (4, [])
    no_traceback(err)


def test_help_documents_the_session_syntax_and_the_exit_status() -> None:
    """--help, also through ``python -m tornado_ws_runner.client``."""
    for command in ([str(SCRIPT)], [sys.executable, "-m", "tornado_ws_runner.client"]):
        done = subprocess.run(
            [*command, "--help"], capture_output=True, text=True, timeout=TIMEOUT * 3
        )
        assert done.returncode == 0
        assert "NAME [JSON]" in done.stdout and "exit status" in done.stdout
        assert "1008" in done.stdout and "ctrl-D" in done.stdout


# -- the interactive session -------------------------------------------------------------------


async def test_a_piped_session_prints_json_lines_and_exits_0_at_the_end_of_input(
    serve: Serve,
) -> None:
    """Each line is one call, NAME [JSON] or a whole message; pushes are printed too;
    a bad line is reported and skipped; the end of input waits for the replies due."""
    runner = await serve()
    lines = "\n".join(
        [
            'echo {"a": 1}',
            '{"name": "echo", "params": {"id": 3}, "headers": {"X-Line": "yes"}}',
            "# a comment, then an empty line",
            "",
            "echo {bad",
            "push 5",
            "teapot",
        ]
    )
    code, frames, err = await run(ws_url(runner), "--header", "X-All=1", stdin=lines.encode())
    assert code == 0
    assert len(err.strip().splitlines()) == 1 and "echo: payload not JSON" in err
    bodies = [f["body"] for f in frames]
    assert len(frames) == 5
    assert any(isinstance(b, dict) and b.get("payload") == {"a": 1} for b in bodies)
    assert any(isinstance(b, dict) and b.get("params") == {"id": 3} for b in bodies)
    assert {"pushed": 5} in bodies and {"replied": True} in bodies
    assert [f["statusCode"] for f in frames].count(418) == 1
    assert [e.request.headers.get("x-line") for e in PROBE.events] in (["yes", None], [None, "yes"])
    assert all(e.request.headers["x-all"] == "1" for e in PROBE.events)


async def test_session_calls_do_not_wait_for_one_another_and_pushes_show_as_they_come(
    serve: Serve,
) -> None:
    """A call still waiting does not hold up the next line's reply; a push is printed
    when it arrives, between lines."""
    runner = await serve()
    async with started(ws_url(runner)) as proc:
        await type_line(proc, 'block {"gate": "g"}')
        await until(lambda: PROBE.counters["started"] == 1, "block to be running")
        await type_line(proc, 'echo "after block"')
        assert (await next_frame(proc))["body"]["payload"] == "after block"
        await type_line(proc, 'pushLater {"gate": "p"}')
        await until(lambda: PROBE.flags.get("push_waiting"), "pushLater to be waiting")
        PROBE.open("p")
        push = await next_frame(proc)
        assert push["body"] == {"late": True} and "message-id" not in push["headers"]
        assert (await next_frame(proc))["statusCode"] == 200  # pushLater's own reply
        PROBE.open("g")
        assert (await next_frame(proc))["body"] == {"gate": "g"}
        assert proc.stdin is not None
        proc.stdin.close()
        assert await bounded(proc.wait()) == 0


async def test_a_session_the_server_refuses_exits_3_without_waiting_for_input(
    serve: Serve,
) -> None:
    """on_connect refusing: the session ends with 3 and the close code and reason while
    stdin is still open."""
    runner = await serve()
    async with started(ws_url(runner, "/?reject=raise&reason=Nope")) as proc:
        assert await bounded(proc.wait()) == 3
        assert proc.stderr is not None
        err = (await bounded(proc.stderr.read())).decode()
    no_traceback(err)
    assert "1008" in err and "Nope" in err


async def test_on_a_terminal_frames_are_indented_and_ctrl_d_exits_0(serve: Serve) -> None:
    """Through a pty: a prompt, indented JSON, and ctrl-D on an empty line ends it."""
    runner = await serve()
    loop = asyncio.get_running_loop()
    controller, terminal = os.openpty()
    seen = bytearray()

    def readable() -> None:
        try:
            seen.extend(os.read(controller, 65536))
        except OSError:  # the command exited: EIO on Linux
            loop.remove_reader(controller)

    loop.add_reader(controller, readable)
    env = {**os.environ, "TERM": "dumb"}
    try:
        tty = {"stdin": terminal, "stdout": terminal, "stderr": terminal}
        async with started(ws_url(runner), env=env, **tty) as proc:
            os.close(terminal)  # the child has its own copy
            terminal = -1
            await until(lambda: b"> " in seen, "the prompt")
            os.write(controller, b'echo {"hi": 1}\n')
            await until(lambda: b'    "hi": 1\r\n' in seen, "the indented reply")
            os.write(controller, b"\x04")
            assert await bounded(proc.wait()) == 0
    finally:
        if terminal >= 0:
            os.close(terminal)
        loop.remove_reader(controller)
        os.close(controller)
    text = seen.decode()
    assert '{\r\n  "statusCode": 200,\r\n  "headers": {' in text
    assert "Traceback" not in text
