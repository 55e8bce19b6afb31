"""The client port's WebSocketHandler: socket -> codec -> engine -> codec -> socket.

Tornado reads the frames and calls ``on_message``; each message runs as a task of its
own, or, when the runner is not under load and its chain is all plain functions, at
once (``_start``). Backpressure is explicit at both ends. Reading: when
``limits.max_in_flight`` messages of a connection are running, ``on_message`` returns
an awaitable, and Tornado reads no further frame of that client until it resolves, so
a client that floods waits in its own TCP window. Writing: every frame goes through the
connection's send path (sender.py), which awaits the Future of Tornado's
``write_message``.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

import tornado.httputil
import tornado.iostream
import tornado.web
import tornado.websocket

from ..engine import ErrorResponse, Event, Identity, Request, Response, StreamResponse
from ..engine.deadline import first_step
from ..errors import ConnectionGone
from ..log import access, runner_log
from ..runtime import Phase, RunnerState
from . import codec, groups
from .connection import DECLARED_LOST, Connection

__all__ = ["ClientHandler"]

#: What an upgraded request's headers become: nothing reads or writes them after open().
_NO_HEADERS = tornado.httputil.HTTPHeaders()


class ClientHandler(tornado.websocket.WebSocketHandler):
    """One client connection; its state lives in a ``Connection`` in the registry."""

    #: The connection's stream once open, which ``abort`` closes.
    iostream: tornado.iostream.IOStream | None = None

    def initialize(self, state: RunnerState) -> None:
        self.state = state
        self.conn: Connection | None = None

    # -- the upgrade -------------------------------------------------------------

    def prepare(self) -> None:
        """Refuses an upgrade while draining or from an Origin not allowed; Tornado then
        answers it with ``write_error``. (``max_connections`` is held by the server,
        server.py, from the connection's accept.)"""
        state = self.state
        if state.phase is not Phase.READY:
            state.metrics.rejected.labels("draining").inc()
            raise tornado.web.HTTPError(503, reason="Service Unavailable")
        origin = self.request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin):
            state.metrics.rejected.labels("origin").inc()
            raise tornado.web.HTTPError(403, reason="Forbidden")

    def _origin_allowed(self, origin: str) -> bool:
        allowed = self.state.settings.limits.allowed_origins
        return not allowed or origin in allowed or "*" in allowed

    def check_origin(self, origin: str) -> bool:
        """Always true: prepare() has checked Origin against the list already. Tornado 6.6
        calls this only for what it deems cross-origin (not for Origin equal to Host, nor
        for Sec-Fetch-Site: same-origin), so the list cannot be enforced here alone."""
        return True

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return subprotocols[0] if subprotocols else None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A refused upgrade (503, 403) answers an error frame's JSON as its body."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        reason = getattr(exc, "reason", None) or tornado.httputil.responses.get(
            status_code, "Unknown"
        )
        self.finish(codec.error_frame(status_code, reason, "", None))

    # -- open / close ------------------------------------------------------------

    def open(self, *args: Any, **kwargs: Any) -> Awaitable[None] | None:
        """Registers the connection; with an ``on_connect`` event, returns its run, which
        Tornado awaits before it reads the client's first frame."""
        self.set_nodelay(True)
        assert self.ws_connection is not None
        self.iostream = self.ws_connection.stream
        state = self.state
        settings = state.settings
        request = self.request
        conn = Connection(
            state.registry,
            state.watch,
            self,
            source_ip=request.remote_ip,
            user_agent=request.headers.get("User-Agent"),
            subprotocol=self.selected_subprotocol,
        )
        if settings.management.enabled:
            conn.postback_url = f"{settings.management.base_url()}/@connections/{conn.id}"
        conn.headers = {
            "connection-id": conn.id,
            "postback-url": conn.postback_url,
            "push-function": conn.push,
            "sec-websocket-protocol": conn.subprotocol,
        }
        conn.on_closed = self._after_close
        self.conn = conn
        groups.bind(state)  # this connection's tasks start from this context
        state.sockets.add(self)
        state.registry.add(conn)
        state.metrics.opened.inc()
        if settings.logging.access:
            access.line("%s open from %s (%s)", conn.id, conn.source_ip, conn.user_agent or "-")
        if not state.service.has_event("on_connect"):
            self._release_handshake()
            self._accept(conn)
            return None
        headers = {k: ", ".join(request.headers.get_list(k)) for k in request.headers}
        self._release_handshake()
        url = urlsplit(request.uri or "/")
        query = {k: v[0].decode("utf-8", "replace") for k, v in request.query_arguments.items()}
        connect = Event(codec.connect_request("on_connect", headers, query, url.path, conn.headers))
        # A tracked task: shutdown drains on_connect like any event in flight, and a
        # close meanwhile runs on_disconnect only after it (see _disconnect).
        conn.connecting = state.track(asyncio.ensure_future(self._connect(conn, connect)))
        return self._connected(conn, connect)

    async def _connected(self, conn: Connection, connect: Event) -> None:
        """Waits for on_connect; a failed one closes the connection with 1008."""
        assert conn.connecting is not None
        started = time.perf_counter()
        try:
            response = await conn.connecting
        except asyncio.CancelledError:
            self.on_close()  # cut by shutdown: Tornado aborts without calling on_close
            raise
        self._log_event(conn, connect, response, started)
        if response.status_code >= 400:
            self.state.metrics.rejected.labels("on_connect").inc()
            reason = response.message if isinstance(response, ErrorResponse) else "Policy Violation"
            # A close frame's reason may hold at most 123 bytes of UTF-8.
            conn.close(1008, str(reason).encode("utf-8")[:123].decode("utf-8", "ignore"))

    def _release_handshake(self) -> None:
        """Lets go of what only the handshake needed, once open() has read it.

        The request would hold it all for the connection's life: the upgrade's headers,
        its HTTP/1 connection (the same headers again, a Future, the peer's context) and
        the HTTP/1 request loop. After the upgrade Tornado uses none of them; the request
        keeps its URI, query and remote_ip.
        """
        request = self.request
        request.headers = _NO_HEADERS
        request.connection = None
        request.server_connection = None

    async def _connect(self, conn: Connection, connect: Event) -> Response:
        response = await self.state.service.process(connect)
        if response.status_code < 400:
            conn.identity = connect.identity
            self._accept(conn)
        return response

    def _accept(self, conn: Connection) -> None:
        """on_connect passed (or there is none): the connection is addressable."""
        conn.accepted = True
        if self.state.cluster is not None:
            self.state.cluster.registered(conn.id, conn.directory_entry())

    def on_close(self) -> None:
        if self.conn is not None:
            self.conn.mark_closed(self.close_code)
        self.state.socket_closed(self)

    def on_pong(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.pong_at = self.state.loop.time()

    def _after_close(self, conn: Connection) -> None:
        """Runs on_disconnect once, whichever side or path closed the connection."""
        self.state.metrics.closed.inc()
        if conn.accepted and self.state.cluster is not None:
            self.state.cluster.unregistered(conn.id)
        self.state.track(asyncio.ensure_future(self._disconnect(conn)))

    async def _disconnect(self, conn: Connection) -> None:
        state = self.state
        groups.bind(state)  # a task of its own, maybe started outside the connection's context
        connecting = conn.connecting
        if connecting is not None and not connecting.done():
            if state.phase is not Phase.READY:
                # Shutdown closes connections only after the drain: on_connect is cut.
                connecting.cancel()
            await asyncio.wait([connecting])  # on_connect first, and its identity
        if state.settings.logging.access:
            access.line("%s closed (%s)", conn.id, conn.close_code or self.close_code or "-")
        if not state.service.has_event("on_disconnect") or conn.closed_by == DECLARED_LOST:
            return
        headers = {**conn.headers, "disconnect-reason": conn.closed_by}
        event = Event(codec.disconnect_request(headers), identity=conn.identity)
        started = time.perf_counter()
        response = await state.service.process(event)
        self._log_event(conn, event, response, started)

    def abort(self) -> None:
        """Drops the TCP connection now, for a client that no longer reads: Tornado's
        ``close()`` waits up to 5 s for the client's close frame, which such a client
        never sends (and forgets its protocol object, so this keeps the stream)."""
        if self.iostream is not None:
            self.iostream.close()

    # -- messages ----------------------------------------------------------------

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        """Starts the message's event (see ``_start``); returns what Tornado waits for
        before it reads this client's next frame.

        That is one turn of the loop, in which the event takes its first step (a message
        that never waits is answered in it): reading at once would find nothing yet on
        the socket, and each empty read costs system calls for Tornado to register for
        the next one. When ``max_in_flight`` events are running, it is the start of
        this one, once a slot frees. A plain method, not a coroutine: Tornado would
        wrap a coroutine in one more task per message.
        """
        conn = self.conn
        if conn is None or conn.closing:
            return None
        state = self.state
        state.metrics.received(len(message))
        conn.last_active_at = time.time()
        if conn.in_flight >= state.settings.limits.max_in_flight:
            return self._start_when_free(conn, message)
        self._start(conn, message)
        turn = state.loop.create_future()  # only Tornado waits on it: never cancelled
        state.loop.call_soon(turn.set_result, None)
        return turn

    def _start(self, conn: Connection, message: str | bytes) -> None:
        """Runs the message's event as a task; or, when the runner is not under load
        (its send path holds no replies) and the event's chain is all plain functions
        (``Service.runs_plain``), takes its first step here and now, so a lone
        client's reply leaves in this turn of the loop instead of the next. That step
        runs in a copy of the context, as a task's would; if it has to wait, a task
        goes on from where it stopped."""
        state = self.state
        if state.phase is not Phase.READY:
            # Shutting down: the drain waits for the events already taken up; one started
            # now could be cut by the 1001 close with its reply lost. Not taken up, the
            # message goes unanswered and the 1001 tells the client so.
            return
        request, message_id = codec.parse_message(message, conn.headers)
        conn.in_flight += 1  # _handle gives it back, however it ends
        handling = self._handle(conn, request, message_id)
        if state.watch.holding or not (
            isinstance(request, ErrorResponse) or state.service.runs_plain(request.name)
        ):
            # Held in the runner's set (asyncio keeps only weak references to tasks),
            # which shutdown drains; the task removes itself as it ends (_handle).
            state.tasks.add(state.loop.create_task(handling))
            return
        context = contextvars.copy_context()
        rest = context.run(first_step, handling)
        if rest is not None:
            state.tasks.add(state.loop.create_task(rest, context=context))

    async def _start_when_free(self, conn: Connection, message: str | bytes) -> None:
        while conn.in_flight >= self.state.settings.limits.max_in_flight:
            if conn.slot_free is None or conn.slot_free.done():
                conn.slot_free = asyncio.get_running_loop().create_future()
            await conn.slot_free
            if conn.closing:
                return
        self._start(conn, message)

    async def _handle(
        self, conn: Connection, request: Request | ErrorResponse, message_id: Any
    ) -> None:
        """Answers one message with exactly one frame (a stream: its chunks, then one
        done frame), whatever the message and the handlers' response hold."""
        answering = False
        try:
            if isinstance(request, ErrorResponse):
                response: Response = request
            else:
                event = Event(request, identity=conn.identity)
                started = time.perf_counter()
                response = await self.state.service.process(event)
                self._log_event(conn, event, response, started)
            answering = True
            if isinstance(response, StreamResponse):
                # A task of its own, which a client that leaves cancels (Sender.streams):
                # this one may be running outside any task (_start).
                await self.state.loop.create_task(self._stream(conn, response, message_id))
            else:
                waiting = conn.send_last(codec.reply(response, message_id, self._encoding_failed))
                if waiting is not None:
                    await waiting
        except ConnectionGone:
            pass
        except Exception:
            runner_log.exception("%s a message failed outside its handlers", conn.id)
            if not answering:
                error = ErrorResponse("Internal Server Error", 500)
                with suppress(ConnectionGone):
                    waiting = conn.send_last(codec.reply(error, message_id, self._encoding_failed))
                    if waiting is not None:
                        await waiting
        finally:
            # The task leaves the runner's set itself: a done callback per message
            # would cost the loop one more callback to run. (Run outside a task of its
            # own, there is nothing to remove: Tornado's task is not in the set.)
            self.state.tasks.discard(asyncio.current_task(self.state.loop))
            conn.in_flight -= 1
            if conn.slot_free is not None and not conn.slot_free.done():
                conn.slot_free.set_result(None)

    def _encoding_failed(self, exc: Exception) -> ErrorResponse:
        runner_log.error("cannot encode the response as JSON: %r", exc)
        return self.state.service.error_response(exc)

    def _log_event(
        self, conn: Connection, event: Event, response: Response, started: float
    ) -> None:
        seconds = time.perf_counter() - started
        state = self.state
        state.metrics.event_done(
            event.name, state.service.has_event(event.name), response.status_code, seconds
        )
        if state.settings.logging.access:
            access.line(
                "%s %s %d %.1fms", conn.id, event.name or "-", response.status_code, seconds * 1e3
            )

    # -- push and streams ----------------------------------------------------------

    async def _stream(self, conn: Connection, response: StreamResponse, message_id: Any) -> None:
        """One frame per chunk, each produced only after the previous one was flushed."""
        task = asyncio.current_task()
        assert task is not None
        conn.add_stream(task)
        sid = codec.stream_id()
        chunks = _aiter(response.body)
        error: ErrorResponse | None = None
        try:
            try:
                async for chunk in chunks:
                    frame = codec.stream_chunk(response, chunk, sid, message_id)
                    await conn.send(frame)
                    self.state.metrics.stream_chunks.inc()
            except (ConnectionGone, asyncio.CancelledError):
                raise
            except Exception as exc:
                runner_log.warning("%s stream producer failed: %r", conn.id, exc)
                error = self.state.service.error_response(exc)
            waiting = conn.send_last(codec.stream_done(response, sid, message_id, error))
            if waiting is not None:
                await waiting
        except asyncio.CancelledError:
            if not conn.closing:
                raise
        finally:
            conn.discard_stream(task)
            try:
                await _close(chunks, response.body)
            except Exception as exc:
                runner_log.warning("%s stream producer failed to close: %r", conn.id, exc)


async def disconnect_lost(state: RunnerState, connection_id: str, entry: dict[str, Any]) -> None:
    """on_disconnect for a connection of a lost node (cluster mode), run here once, with
    its id, its identity and ``disconnect-reason: node-lost``."""
    if not state.service.has_event("on_disconnect"):
        return
    identity = None
    if entry.get("identity"):
        saved = entry["identity"]
        identity = Identity(saved.get("id"), saved.get("claims") or ())
        identity.issuer, identity.name = saved.get("issuer"), saved.get("name")
        identity.email = saved.get("email")
    headers = {"connection-id": connection_id, "disconnect-reason": "node-lost"}
    await state.service.process(Event(codec.disconnect_request(headers), identity=identity))


async def _aiter(body: Any) -> AsyncIterator[Any]:
    if hasattr(body, "__aiter__"):
        async for chunk in body:
            yield chunk
    else:
        for chunk in body if isinstance(body, Iterable) else [body]:
            yield chunk


async def _close(wrapper: AsyncIterator[Any], body: Any) -> None:
    """Closes the producer so its ``finally`` runs now, not at garbage collection."""
    await wrapper.aclose()  # type: ignore[attr-defined]
    closer = getattr(body, "aclose", None) or getattr(body, "close", None)
    if closer is not None:
        result = closer()
        if inspect.isawaitable(result):
            await result
