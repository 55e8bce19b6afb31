"""The management port: operators (and handlers, via ``postback-url``) drive connections.

Routes (see docs/management.md)::

    GET    /@connections              ids of the open connections (alias /list_@connections)
    POST   /@connections/{id}         deliver the body to that client (alias
                                      /post_@connection?id={id})
    GET    /@connections/{id}         describe it
    DELETE /@connections/{id}         close it with 1000 (on_disconnect then runs)
    GET    /healthz                   liveness, never needs the token
    GET    /readyz                    readiness (503 while starting or draining), no token
    GET    /metrics                   Prometheus text exposition

Every answer is JSON (``/metrics`` excepted); every error is
``{"statusCode", "message", "details"}`` and never carries a traceback.

Request bodies are streamed (``stream_request_body``) so the size limit and the token
are checked from the headers, before a byte of the body is read: an oversized
``Content-Length`` answers 413 JSON at once, where Tornado on its own would answer a
bare ``400 Bad Request`` and drop the connection. A chunked body is counted as it
arrives and answered 413 as soon as it passes the limit.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from typing import Any

import tornado.httputil
import tornado.web

from ..cluster.node import ClusterUnavailable, ForwardTimeout
from ..errors import ConfigError, ConfigIssue, ConnectionGone
from ..log import management_log
from ..metrics import CONTENT_TYPE
from ..runtime import Phase, RunnerState
from ..settings import RunnerSettings
from ..ws import codec
from ..ws.connection import Connection
from .rules import JSON_TYPE, Problem, declared_length, forwarded_headers, message, parse_body

__all__ = ["answer_forwarded", "deliver_local", "make_management_app", "read_management_token"]

CLOSE_REASON = "closed by management"
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    """Token check, bounded body, JSON answers and JSON errors for every route."""

    #: Routes that answer without the token (probes from orchestrators and load balancers).
    public = False

    def initialize(self, state: RunnerState, token: str | None) -> None:
        self.state = state
        self.token = token
        self.limit = state.settings.limits.max_message_size
        self.chunks: list[bytes] = []
        self.received = 0
        #: An answer went out from prepare() or data_received(), not from the route.
        self.refused = False
        #: ... and before the body was read to its end: the connection closes after it.
        self.close_after = False
        #: prepare() let the request through: the route runs once the body is all read.
        #: An answer before that (a refusal from prepare(), a method Tornado refuses, a
        #: path argument that is not UTF-8) ends the connection, body or not: Tornado
        #: closes it after an answer to a request it has not read to its end.
        self.admitted = False

    # -- before and while the body arrives -----------------------------------------

    def prepare(self) -> None:
        try:
            if not self.public:
                self.check_token()
            declared = self.content_length()
            if declared is not None and declared > self.limit:
                self.too_large(f"The body is {declared} bytes")
        except Problem as problem:
            self.refuse(problem, body_pending=self.has_body())
            return
        if self.has_body():
            # data_received() counts the body against the limit and answers 413 itself;
            # Tornado's own check would answer a bare 400 first for a chunked body.
            self.lift_tornado_limit()
        self.admitted = True

    def lift_tornado_limit(self) -> None:
        lift = getattr(self.request.connection, "set_max_body_size", None)
        if lift is not None:
            lift(2**62)

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        """A path or query argument; percent-encoded bytes that are not UTF-8 are a 400
        that says so (Tornado's own 400 would carry no details)."""
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            what = f"'{name}'" if name else "The connection id"
            raise Problem(400, f"{what} is not valid UTF-8 once percent-decoded.") from None

    def content_length(self) -> int | None:
        """The body size the ``Content-Length`` header declares, as Tornado reads it."""
        value = self.request.headers.get("Content-Length")
        return None if value is None else declared_length(value)

    def has_body(self) -> bool:
        if "chunked" in self.request.headers.get("Transfer-Encoding", "").lower():
            return True
        declared = self.content_length()
        return declared is not None and declared > 0

    def check_token(self) -> None:
        if self.token is None:
            return
        scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise Problem(
                401,
                "Send the management token as 'Authorization: Bearer <token>'.",
                {"WWW-Authenticate": 'Bearer realm="tornado-ws-runner"'},
            )
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise Problem(
                401,
                "The bearer token is not valid.",
                {"WWW-Authenticate": 'Bearer realm="tornado-ws-runner", error="invalid_token"'},
            )

    def too_large(self, what: str) -> None:
        self.on_too_large()
        raise Problem(413, f"{what}; the limit is {self.limit} bytes.")

    def on_too_large(self) -> None:
        """Hook: what a route counts when its body is refused for its size."""

    def data_received(self, chunk: bytes) -> None:
        if self.refused:
            return
        self.received += len(chunk)
        if self.received > self.limit:
            self.chunks.clear()
            try:
                self.too_large(f"The body is more than {self.limit} bytes")
            except Problem as problem:
                self.refuse(problem, body_pending=True)
            return
        self.chunks.append(chunk)

    def refuse(self, problem: Problem, body_pending: bool) -> None:
        """Answers ``problem`` now, before the route runs.

        With body left unread Tornado closes the connection after this answer (the
        only way not to read it), so the answer says ``Connection: close``; and
        Tornado's own size check is lifted, which would otherwise write a bare
        ``400 Bad Request`` after this answer.
        """
        self.refused = True
        if body_pending:
            self.close_after = True
            self.lift_tornado_limit()
        management_log.info(
            "%s %s -> %d %s",
            self.request.method,
            self.request.path,
            problem.status_code,
            problem.details,
        )
        self.send_error(problem.status_code, exc_info=(Problem, problem, None))

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    # -- answers -----------------------------------------------------------------

    def send_json(self, value: Any, status: int = 200) -> None:
        self.send(codec.dumps(value), JSON_TYPE, status)

    def send(self, body: str | bytes, content_type: str, status: int = 200) -> None:
        if self.refused:  # a chunked body passed the limit: the 413 went out already
            return
        self.set_status(status)
        self.set_header("Content-Type", content_type)
        self.finish(body)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        details = ""
        if isinstance(exc, Problem):  # anything else may hold what a caller must not see
            details = exc.details
            for name, value in exc.headers.items():
                self.set_header(name, value)
        if status_code == 405:
            allowed = self.allowed_methods()
            self.set_header("Allow", ", ".join(allowed))
            details = (
                f"{self.request.method} is not allowed on {self.request.path}; "
                f"use {', '.join(allowed)}."
            )
        elif status_code == 404 and not details:
            details = f"No route {self.request.method} {self.request.path}."
        if self.close_after or not self.admitted:
            self.set_header("Connection", "close")
        self.set_header("Content-Type", JSON_TYPE)
        body = {"statusCode": status_code, "message": message(status_code), "details": details}
        self.finish(codec.dumps(body))

    def allowed_methods(self) -> list[str]:
        base = tornado.web.RequestHandler
        return [
            m
            for m in self.SUPPORTED_METHODS
            if getattr(type(self), m.lower(), None) is not getattr(base, m.lower(), None)
        ]

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        if isinstance(value, tornado.web.HTTPError):
            management_log.info(
                "%s %s -> %d %s",
                self.request.method,
                self.request.path,
                value.status_code,
                getattr(value, "details", "") or value.log_message or "",
            )
        else:
            management_log.error(
                "%s %s failed", self.request.method, self.request.path, exc_info=value
            )


class NotFoundHandler(BaseHandler):
    """Any path no route matches: 404 (after the token check, so routes stay private)."""

    def not_found(self, *args: Any) -> None:
        raise Problem(404)

    get = post = put = patch = delete = head = options = not_found


class HealthHandler(BaseHandler):
    public = True

    def get(self) -> None:
        self.send_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    """200 while serving; 503 while starting, draining or stopped."""

    public = True

    def get(self) -> None:
        phase = self.state.phase
        if phase is not Phase.READY:
            raise Problem(503, f"The runner is {phase.value}.")
        self.send_json({"status": phase.value})


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        self.send(self.state.metrics.exposition(), CONTENT_TYPE)


class ListHandler(BaseHandler):
    async def get(self) -> None:
        cluster = self.state.cluster
        if cluster is None:
            self.send_json(self.state.registry.ids())
            return
        try:
            self.send_json(await cluster.connection_ids())
        except ClusterUnavailable as exc:
            raise unavailable(exc) from None


def unavailable(exc: ClusterUnavailable) -> Problem:
    """503: the call needs the cluster's directory, and Redis does not answer."""
    return Problem(503, f"The cluster's directory (Redis) cannot be reached: {exc}")


class NodesHandler(BaseHandler):
    """``/@nodes``: the cluster's live nodes (cluster mode only)."""

    async def get(self) -> None:
        cluster = self.state.cluster
        if cluster is None:
            raise Problem(404, "Cluster mode is off: runner.yaml sets no cluster.redis_url.")
        try:
            self.send_json(await cluster.nodes())
        except ClusterUnavailable as exc:
            raise unavailable(exc) from None


class _ConnectionRoute(BaseHandler):
    """What the per-connection routes share: finding the connection, delivering to it."""

    def on_too_large(self) -> None:
        if self.request.method == "POST":
            self.state.metrics.postbacks.labels("too_large").inc()

    def connection(self, connection_id: str, outcome: str | None = None) -> Connection:
        """The open connection, else 410 (counted as a postback ``outcome`` if given)."""
        conn = self.state.registry.get(connection_id)
        if conn is None or conn.closing:
            if outcome:
                self.state.metrics.postbacks.labels(outcome).inc()
            raise Problem(410, f"No open connection '{connection_id}'.")
        return conn

    def is_remote(self, connection_id: str) -> bool:
        """Cluster mode, and not a connection open here: another node may hold it."""
        local = self.state.registry.get(connection_id)
        return self.state.cluster is not None and (local is None or local.closing)

    async def forward(self, op: str, connection_id: str, data: str | None) -> tuple[int, Any]:
        """The answer of the node that holds the connection (cluster mode); Redis out of
        reach (here or there) is 503, a node that does not answer in time 504."""
        cluster = self.state.cluster
        assert cluster is not None
        try:
            status, body = await cluster.forward(op, connection_id, data)
        except ClusterUnavailable as exc:
            raise unavailable(exc) from None
        except ForwardTimeout as exc:
            raise Problem(504, f"Node {exc} did not answer in time.") from None
        if status == 503:
            raise unavailable(ClusterUnavailable(f"from the node that holds {connection_id}"))
        return status, body

    def frame_of_body(self) -> str:
        """The frame a POST delivers: 200, the request's headers that go along, the body."""
        try:
            body = parse_body(self.body, self.request.headers.get("Content-Type", ""))
        except Problem:
            self.state.metrics.postbacks.labels("bad_request").inc()
            raise
        return codec.dumps(
            {"statusCode": 200, "headers": forwarded_headers(self.request.headers), "body": body}
        )

    async def deliver(self, connection_id: str) -> None:
        """Sends the body to the client as a 200 frame; answers 200 once it is flushed."""
        if self.refused:
            return
        postbacks = self.state.metrics.postbacks
        conn = self.connection(connection_id, outcome="gone")
        frame = self.frame_of_body()
        try:
            await conn.send(frame)
        except ConnectionGone:
            postbacks.labels("gone").inc()
            raise Problem(410, f"Connection '{connection_id}' closed before delivery.") from None
        postbacks.labels("delivered").inc()
        self.send_json({"connectionId": conn.id, "delivered": True})


class ConnectionHandler(_ConnectionRoute):
    """``/@connections/{id}``: describe the connection, post to it, close it; in cluster
    mode, one of another node through the directory and that node."""

    async def get(self, connection_id: str) -> None:
        cluster = self.state.cluster
        if not self.is_remote(connection_id):
            description = self.connection(connection_id).describe()
            if cluster is not None:
                description["node"] = cluster.node_id
            self.send_json(description)
            return
        assert cluster is not None
        try:
            remote = await cluster.describe(connection_id)
        except ClusterUnavailable as exc:
            raise unavailable(exc) from None
        if remote is None:
            raise Problem(410, f"No open connection '{connection_id}'.")
        self.send_json(remote)

    async def post(self, connection_id: str) -> None:
        if self.refused:
            return
        if self.is_remote(connection_id):
            await self.forwarded("post", connection_id, self.frame_of_body())
            return
        await self.deliver(connection_id)

    async def forwarded(self, op: str, connection_id: str, frame: str | None) -> None:
        """Answers with what the owning node answered (or 410, 503, 504)."""
        status, body = await self.forward(op, connection_id, frame)
        if status >= 400:
            raise Problem(status, f"No open connection '{connection_id}'.")
        if body is None:
            self.set_status(status)
            self.finish()
        else:
            self.send_json(body, status)

    async def delete(self, connection_id: str) -> None:
        if self.refused:
            return
        if self.is_remote(connection_id):
            await self.forwarded("delete", connection_id, None)
            return
        conn = self.connection(connection_id)
        conn.close(1000, CLOSE_REASON, by="management")
        management_log.info("closed %s on request from %s", conn.id, self.request.remote_ip)
        self.set_status(204)
        self.finish()


class PostAliasHandler(_ConnectionRoute):
    """``POST /post_@connection?id={id}``: the Node runner's name for the same POST."""

    async def post(self) -> None:
        if self.refused:
            return
        connection_id = self.get_query_argument("id", "")
        if not connection_id:
            self.state.metrics.postbacks.labels("bad_request").inc()
            raise Problem(400, "Name the connection: /post_@connection?id=<connection id>.")
        await self.deliver(connection_id)


class GroupHandler(_ConnectionRoute):
    """``/@groups/{group}``: its members, and a POST delivered to each of them."""

    async def get(self, group: str) -> None:
        cluster = self.state.cluster
        if cluster is None:
            self.send_json(self.state.registry.members(group))
            return
        try:
            self.send_json(await cluster.members(group))
        except ClusterUnavailable as exc:
            raise unavailable(exc) from None

    async def post(self, group: str) -> None:
        """Answers once every member has the frame flushed (or has gone meanwhile); in
        cluster mode, the members on every node."""
        if self.refused:
            return
        frame = self.frame_of_body()
        cluster = self.state.cluster
        if cluster is None:
            recipients = await deliver_local(self.state, self.state.registry.members(group), frame)
        else:
            try:
                recipients = await cluster.deliver_group(group, frame)
            except ClusterUnavailable as exc:
                raise unavailable(exc) from None
        self.send_json({"group": group, "recipients": recipients})


class GroupMemberHandler(_ConnectionRoute):
    """``/@groups/{group}/{id}``: a connection joins (PUT) or leaves (DELETE) a group.

    In cluster mode a change for another node's connection is made by that node, so
    each node knows the groups of its own connections (it writes them again when Redis
    comes back empty).
    """

    async def put(self, group: str, connection_id: str) -> None:
        if self.refused:
            return
        status = await self.change("join", group, connection_id)
        if status == 410:
            raise Problem(410, f"No open connection '{connection_id}'.")
        self.set_status(204)
        self.finish()

    async def delete(self, group: str, connection_id: str) -> None:
        """204 whether or not the connection was in the group, or is open at all."""
        if self.refused:
            return
        if await self.change("leave", group, connection_id) == 410 and self.state.cluster:
            try:  # no node holds it: what the directory may still hold of it goes
                await self.state.cluster.leave(group, connection_id)
            except ClusterUnavailable as exc:
                raise unavailable(exc) from None
        self.set_status(204)
        self.finish()

    async def change(self, op: str, group: str, connection_id: str) -> int:
        """Joins or leaves here, or on the node that holds the connection: 204 or 410."""
        if self.is_remote(connection_id):
            status, _ = await self.forward(op, connection_id, group)
            return status
        try:
            return await change_membership(self.state, op, group, connection_id)
        except ClusterUnavailable as exc:
            raise unavailable(exc) from None


async def deliver_local(state: RunnerState, connection_ids: list[str], frame: str) -> int:
    """A group's frame to each of these connections this daemon holds, at once; how many
    have it flushed (those gone meanwhile do not count)."""
    registry = state.registry
    members = [c for c in map(registry.get, connection_ids) if c is not None]
    sent = await asyncio.gather(*(c.send(frame) for c in members), return_exceptions=True)
    for outcome in sent:
        if isinstance(outcome, BaseException) and not isinstance(outcome, ConnectionGone):
            raise outcome
    recipients = sum(outcome is None for outcome in sent)
    state.metrics.group_deliveries.inc(recipients)
    return recipients


async def answer_forwarded(
    state: RunnerState, op: str, connection_id: str, data: str | None
) -> tuple[int, Any]:
    """What this node answers to a call another node forwarded for one of its
    connections: as the local route would (200 once flushed, 204, 410; 503 when a
    group change cannot reach Redis). ``data``: a POST's frame, a join's or leave's
    group."""
    conn = state.registry.get(connection_id)
    if conn is None or conn.closing:
        return 410, None
    if op == "delete":
        conn.close(1000, CLOSE_REASON, by="management")
        management_log.info("closed %s on a request forwarded by another node", conn.id)
        return 204, None
    if op == "post" and data is not None:
        try:
            await conn.send(data)
        except ConnectionGone:
            return 410, None
        state.metrics.postbacks.labels("delivered").inc()
        return 200, {"connectionId": conn.id, "delivered": True}
    if op in ("join", "leave") and data is not None:
        try:
            return await change_membership(state, op, data, connection_id), None
        except ClusterUnavailable:
            return 503, None
    return 400, None


async def change_membership(state: RunnerState, op: str, group: str, connection_id: str) -> int:
    """A connection of this node joins or leaves ``group``, here and in the cluster's
    directory: 204, or 410 for a join of a connection not open here."""
    if op == "join":
        if state.registry.get(connection_id) is None or not state.registry.join(
            group, connection_id
        ):
            return 410
    else:
        state.registry.leave(group, connection_id)
    if state.cluster is not None:
        membership = state.cluster.join if op == "join" else state.cluster.leave
        await membership(group, connection_id)
    return 204


def _access_logger(handler: tornado.web.RequestHandler) -> None:
    request = handler.request
    management_log.debug(
        "%d %s %s (%s) %.1fms",
        handler.get_status(),
        request.method,
        request.uri,
        request.remote_ip,
        request.request_time() * 1e3,
    )


def read_management_token(settings: RunnerSettings) -> str | None:
    """The token, read once at start; a token_file that gives no token is a ConfigError."""
    management = settings.management
    try:
        token = settings.management_token()
    except OSError as exc:
        issue = ConfigIssue(
            "management.token_file", f"cannot read {management.token_file}: {exc.strerror}"
        )
        raise ConfigError(settings.source or "runner.yaml", [issue]) from None
    if management.token_file and not management.token and not token:
        issue = ConfigIssue("management.token_file", f"{management.token_file} holds no token")
        raise ConfigError(settings.source or "runner.yaml", [issue])
    return token or None


def make_management_app(state: RunnerState) -> tornado.web.Application:
    """The management Application; every handler gets ``state`` and the token."""
    token = read_management_token(state.settings)
    host = state.settings.management.host
    if token is None and host not in _LOOPBACK:
        management_log.warning(
            "the management port listens on %s without a token: anyone who can reach it "
            "can list, message and close connections",
            host,
        )
    deps = {"state": state, "token": token}
    at = "(?:@|%40)"
    routes: list[tuple[str, type[BaseHandler], dict[str, Any]]] = [
        (rf"/{at}connections/?", ListHandler, deps),
        (rf"/list_{at}connections/?", ListHandler, deps),
        (rf"/{at}connections/([^/]+)/?", ConnectionHandler, deps),
        (rf"/post_{at}connection/?", PostAliasHandler, deps),
        (rf"/{at}nodes/?", NodesHandler, deps),
        (rf"/{at}groups/([^/]+)/?", GroupHandler, deps),
        (rf"/{at}groups/([^/]+)/([^/]+)/?", GroupMemberHandler, deps),
        (r"/healthz/?", HealthHandler, deps),
        (r"/readyz/?", ReadyHandler, deps),
        (r"/metrics/?", MetricsHandler, deps),
    ]
    log_function: Callable[[tornado.web.RequestHandler], None] = _access_logger
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=deps,
        log_function=log_function,
    )
