"""The ``tornado-ws-runner-client`` command: one call, or an interactive session.

Exit status (documented in ``--help``): 0 for a reply below 400 (and at the end of an
interactive session), 1 for an error reply, 2 for bad arguments, 3 when the connection
is refused or lost, 4 when the reply does not come within ``--timeout``. Expected
failures print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NoReturn, TextIO
from urllib.parse import urlsplit

from ..ws.codec import loads
from .connection import Client, connect
from .errors import ConnectionClosed
from .frames import as_json

__all__ = [
    "EXIT_CONNECTION",
    "EXIT_ERROR",
    "EXIT_PIPE",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "main",
]

PROG = "tornado-ws-runner-client"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_TIMEOUT = 4
#: stdout closed before the reply was printed: what a shell reports for SIGPIPE.
EXIT_PIPE = 128 + signal.SIGPIPE

_EPILOG = f"""\
With NAME: sends one message and prints each frame of the reply as one JSON line
(a stream: every chunk, then the done frame); pushes are not printed.

Without NAME: an interactive session, one message per line, either

  NAME [JSON]      the event and its payload:  echo {{"hello": "world"}}   ticks {{"count": 3}}
  {{...}}            a whole message, for params or headers:
                   {{"name": "hello", "params": {{"who": "Ada"}}}}

--header is added to every message; the client sets each message-id. Empty lines and
lines starting with # are skipped; a line that is neither form is reported and skipped.
A line is sent at once, without waiting for earlier replies. Replies and pushes are
printed as they arrive: indented JSON on a terminal, one JSON line per frame otherwise.
ctrl-D (or the end of piped input) ends it once the replies still due have come.
Line editing and history come from readline where Python has it.

exit status:
  0  a reply below 400; a session ended by ctrl-D or the end of input
  {EXIT_ERROR}  a reply of 400 or more (for a stream: its done frame)
  {EXIT_USAGE}  bad arguments (invalid JSON, a --header without '=')
  {EXIT_CONNECTION}  connection refused or lost; stderr gives the close code and reason
     (1008 and its message when on_connect refused it) or the HTTP status
  {EXIT_TIMEOUT}  no reply (or next frame of it) within --timeout
  {EXIT_PIPE}  stdout was closed before the reply was printed (| head -1)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not the usage block: the mistake is what the user needs to see."""
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def _strict_json(text: str) -> Any:
    """JSON as the runner reads it (NaN, Infinity and numbers past a float's range are
    refused), checked here, where the user can see which argument holds them."""
    try:
        return loads(text)
    except (ValueError, RecursionError) as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text!r}") from None


def _json_object(text: str) -> dict[str, Any]:
    value = _strict_json(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


def _header(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"not K=V: {text!r}")
    return key.strip(), value


def _url(text: str) -> str:
    if urlsplit(text).scheme not in ("ws", "wss"):
        raise argparse.ArgumentTypeError(f"not a ws:// or wss:// URL: {text!r}")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Call an event of a tornado-ws-runner service over WebSocket.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", metavar="URL", type=_url, help="ws:// or wss:// address, query included")
    p.add_argument("name", metavar="NAME", nargs="?", help="the event; none: interactive")
    p.add_argument("--payload", metavar="JSON", type=_strict_json, help="the message's payload")
    p.add_argument("--params", metavar="JSON", type=_json_object, help="the message's params")
    repeatable = (
        ("--header", "K=V", _header, "a message header"),
        ("--connect-header", "K=V", _header, "a header of the upgrade request, for on_connect"),
        ("--subprotocol", "NAME", str, "offer a subprotocol"),
    )
    for flag, metavar, kind, what in repeatable:
        p.add_argument(
            flag, metavar=metavar, type=kind, action="append", default=[], help=f"{what} (repeat)"
        )
    p.add_argument("--cafile", metavar="PATH", help="CA certificates to trust for wss://")
    p.add_argument(
        "--timeout", metavar="SECONDS", type=_seconds, help="wait at most this for each frame"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.name is None and (args.payload is not None or args.params is not None):
        parser.error("--payload and --params need NAME (in a session, give the payload per line)")
    args.headers = dict(args.header)
    try:
        return asyncio.run(_call(args) if args.name is not None else _session(args))
    except ConnectionClosed as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONNECTION
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of stdout left (``| head -1``): what it took is all it wanted.
        # Python would complain again flushing stdout at exit; it goes nowhere now.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE


def _connect(args: argparse.Namespace) -> contextlib.AbstractAsyncContextManager[Client]:
    return connect(
        args.url,
        subprotocols=args.subprotocol,
        headers=dict(args.connect_header),
        ca_certs=args.cafile,
    )


def _dumps(frame: Any, pretty: bool) -> str:
    if pretty:
        return json.dumps(as_json(frame), ensure_ascii=False, indent=2)
    return json.dumps(as_json(frame), ensure_ascii=False, separators=(",", ":"))


async def _call(args: argparse.Namespace) -> int:
    """One message; the exit status follows the status of the reply's last frame."""
    status = 0
    async with _connect(args) as client:
        replies = client.frames(
            args.name, args.payload, params=args.params, headers=args.headers, timeout=args.timeout
        )
        try:
            async for frame in replies:
                print(_dumps(frame, pretty=False), flush=True)
                status = frame.status_code
        except TimeoutError:
            print(f"{PROG}: no frame within {args.timeout} s", file=sys.stderr)
            return EXIT_TIMEOUT
    return EXIT_ERROR if status >= 400 else 0


# -- the interactive session ---------------------------------------------------------------


class _Console:
    """Where the session writes: frames on stdout, complaints on stderr.

    On a terminal with a prompt, a frame that arrives while a line is being typed is
    printed above it and the prompt and the typed text are drawn again, as a chat
    client would, instead of splitting the line being edited.
    """

    def __init__(self, pretty: bool, prompt: str, readline: ModuleType | None) -> None:
        self.pretty = pretty
        self.prompt = prompt
        self._readline = readline

    def show(self, frame: Any) -> None:
        self._write(sys.stdout, _dumps(frame, self.pretty))

    def complain(self, message: str) -> None:
        self._write(sys.stderr, f"{PROG}: {message}")

    def input_ended(self) -> None:
        """No prompt is drawn any more: what still comes goes below the last one."""
        if self.prompt:
            self.prompt = ""
            print(flush=True)

    def _write(self, stream: TextIO, text: str) -> None:
        if not self.prompt:
            print(text, file=stream, flush=True)
            return
        typed = self._readline.get_line_buffer() if self._readline is not None else ""
        stream.write(f"\r\x1b[K{text}\n")
        stream.flush()
        sys.stdout.write(f"{self.prompt}{typed}")
        sys.stdout.flush()


@dataclass(frozen=True)
class _Message:
    name: str
    payload: Any
    params: dict[str, Any] | None
    headers: dict[str, Any]


def _parse_line(line: str, headers: dict[str, Any]) -> _Message | None:
    """``NAME [JSON]``, or a whole message ``{"name": ...}``, with ``headers`` (the
    --header options) under the message's own; None for a line to skip.

    Raises ValueError saying what is wrong with the line.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if not text.startswith("{"):
        name, _, rest = text.partition(" ")
        try:
            payload = _strict_json(rest) if rest.strip() else None
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{name}: payload {exc}") from None
        return _Message(name, payload, None, headers)
    try:
        message = _strict_json(text)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"message {exc}") from None
    name, params, own = message.get("name"), message.get("params"), message.get("headers")
    if not isinstance(name, str) or not name:
        raise ValueError(f'a message needs a "name": {text!r}')
    if not isinstance(params, dict | None) or not isinstance(own, dict | None):
        raise ValueError(f'"params" and "headers" must be objects: {text!r}')
    return _Message(name, message.get("payload"), params, {**headers, **(own or {})})


def _start_line_reader(prompt: str, interactive: bool) -> asyncio.Queue[str | None]:
    """Lines from stdin, then None at the end, read in a thread of their own.

    A terminal is read with ``input()``, which is what gives readline's editing; it
    blocks, hence the thread. Anything else (a pipe, a file) is read with ``os.read``:
    ``input()`` would go through ``sys.stdin``'s buffer, whose lock a thread still
    blocked in it at exit makes the interpreter's shutdown fail. A daemon thread, so
    that the command exits when the connection goes while a line is being typed.
    """
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def deliver(line: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: the session has ended
            loop.call_soon_threadsafe(lines.put_nowait, line)

    def read_terminal() -> None:
        try:
            while True:
                deliver(input(prompt))
        except EOFError:
            pass
        finally:
            deliver(None)

    def read_stream() -> None:
        fd = sys.stdin.fileno()
        rest = b""
        try:
            while chunk := os.read(fd, 65536):
                *complete, rest = (rest + chunk).split(b"\n")
                for line in complete:
                    deliver(line.decode("utf-8", "replace"))
            if rest:
                deliver(rest.decode("utf-8", "replace"))
        finally:
            deliver(None)

    if sys.stdin is None:  # started with stdin closed: no input (fd 0 may be another file)
        lines.put_nowait(None)
        return lines
    reader = read_terminal if interactive else read_stream
    threading.Thread(target=reader, name="stdin", daemon=True).start()
    return lines


def _is_terminal(stream: TextIO | None) -> bool:
    """A closed standard stream is None in ``sys``: no terminal either."""
    return stream is not None and stream.isatty()


def _terminal() -> tuple[bool, ModuleType | None]:
    """(whether stdin and stdout are a terminal, the readline module when so and present).

    readline is imported only for a terminal: that import is what turns line editing
    on, and piped input needs none.
    """
    if not (_is_terminal(sys.stdin) and _is_terminal(sys.stdout)):
        return False, None
    try:
        import readline
    except ImportError:
        return True, None
    return True, readline


@contextlib.contextmanager
def _terminal_restored() -> Iterator[None]:
    """Puts the terminal back as it was: leaving while readline has it in its own mode
    (the connection closed mid-line, ctrl-C) would leave the shell without echo."""
    try:
        import termios
    except ImportError:  # not POSIX
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        yield
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _session(args: argparse.Namespace) -> int:
    interactive, readline = _terminal()
    console = _Console(_is_terminal(sys.stdout), "> " if interactive else "", readline)
    with _terminal_restored() if interactive else contextlib.nullcontext():
        async with _connect(args) as client:
            return await _run_session(client, console, interactive, args)


async def _run_session(
    client: Client, console: _Console, interactive: bool, args: argparse.Namespace
) -> int:
    async def show_pushes() -> None:
        async for frame in client.pushes():
            console.show(frame)

    async def call(message: _Message) -> None:
        try:
            async for frame in client.frames(
                message.name,
                message.payload,
                params=message.params,
                headers=message.headers,
                timeout=args.timeout,
            ):
                console.show(frame)
        except TimeoutError:
            console.complain(f"{message.name}: no frame within {args.timeout} s")
        except ConnectionClosed:
            pass  # the session reports the close once

    pushes = asyncio.ensure_future(show_pushes())
    calls: set[asyncio.Task[None]] = set()
    lines = _start_line_reader(console.prompt, interactive)
    while True:
        next_line = asyncio.ensure_future(lines.get())
        await asyncio.wait({next_line, pushes}, return_when=asyncio.FIRST_COMPLETED)
        if not next_line.done():  # pushes() ended: the connection is gone
            next_line.cancel()
            break
        line = next_line.result()
        if line is None:
            console.input_ended()
            break
        try:
            parsed = _parse_line(line, args.headers)
        except ValueError as exc:
            console.complain(str(exc))
            continue
        if parsed is not None:
            task = asyncio.ensure_future(call(parsed))
            calls.add(task)
            task.add_done_callback(calls.discard)
    if calls:
        await asyncio.wait(calls)
    if client.closed:  # by the server: say how, whatever pushes() made of it
        pushes.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await pushes
        console.input_ended()
        console.complain(f"connection closed ({client.close_code}): {client.close_reason}")
        return EXIT_CONNECTION
    await client.close()
    await pushes
    return 0
