"""WsRunner: one IOLoop serving clients (plain and TLS) and the management port.

Shutdown is stop accepting -> let events in flight finish (``timeouts.drain``) ->
close every connection with 1001 and run on_disconnect -> log what was cut.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import signal
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
from redis.exceptions import RedisError

from .cluster.node import ClusterNode
from .engine import Service
from .errors import ConfigError, StartupError
from .log import runner_log
from .management.app import answer_forwarded, deliver_local, make_management_app
from .metrics import Metrics
from .runtime import Phase, RunnerState
from .settings import (
    LIVE_KEYS,
    LoggingSettings,
    RunnerSettings,
    changed_keys,
    is_live,
    tls_context,
)
from .ws.connection import DECLARED_LOST
from .ws.handler import ClientHandler, disconnect_lost
from .ws.keepalive import KeepAlive
from .ws.registry import Registry
from .ws.sender import SendWatch
from .ws.server import ClientPortServer

__all__ = ["Notify", "WsRunner", "load_service", "run_on_loop"]

#: Receives systemd notify strings ("READY=1", "RELOADING=1", "STOPPING=1").
Notify = Callable[[str], None]
CLOSE_WAIT = 2.0  # seconds clients get to answer the 1001 close before the socket is dropped


def _bind(host: str, port: int, what: str, reuse_port: bool = False) -> list[socket.socket]:
    try:
        return tornado.netutil.bind_sockets(
            port, address=host or None, backlog=1024, reuse_port=reuse_port
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"cannot listen for {what} on {host}:{port}: port {port} is in use"
            ) from None
        raise StartupError(f"cannot listen for {what} on {host}:{port}: {exc.strerror}") from None


class _ClusterHost:
    """The daemon as its cluster node sees it (cluster/node.py's Host)."""

    def __init__(self, state: RunnerState) -> None:
        self.state = state

    async def answer(self, op: str, connection_id: str, data: str | None) -> tuple[int, Any]:
        return await answer_forwarded(self.state, op, connection_id, data)

    async def lost(self, connection_id: str, entry: dict[str, Any]) -> None:
        await disconnect_lost(self.state, connection_id, entry)

    def owned(self) -> dict[str, dict[str, Any]]:
        return {
            conn.id: conn.directory_entry()
            for conn in self.state.registry
            if conn.accepted and not conn.closing
        }

    def memberships(self) -> dict[str, set[str]]:
        return {conn.id: set(conn.groups) for conn in self.state.registry if conn.groups}

    async def deliver(self, connection_ids: list[str], frame: str) -> int:
        return await deliver_local(self.state, connection_ids, frame)

    def declared_lost(self) -> None:
        for conn in self.state.registry:
            conn.close(1012, "Service Restart", by=DECLARED_LOST)


def _dotted(settings: RunnerSettings, key: str) -> Any:
    value: Any = settings
    for part in key.split("."):
        value = getattr(value, part)
    return value


def load_service(settings: RunnerSettings, reload: bool = False) -> Service:
    """The API that ``settings`` name, loaded with the engine options runner.yaml sets.

    ``reload``: handler modules are imported afresh (SIGHUP). Raises ConfigError.
    """
    return Service.load(
        settings.api,
        environment=settings.environment,
        reload=reload,
        error_details=settings.error_details,
        handler_timeout=settings.timeouts.handler or None,
        blocking_warning=settings.timeouts.blocking_warning or None,
    )


def run_on_loop(main: Coroutine[Any, Any, None], event_loop: str = "auto") -> None:
    """``asyncio.run`` on the chosen loop: uvloop when asked for, or with ``auto`` when
    it is installed (Tornado then runs on it unchanged; docs/performance.md compares them).
    """
    if event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                raise StartupError("event_loop: uvloop is not installed") from None
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main)
            return
    asyncio.run(main)


class WsRunner:
    """The runner; ``run()`` blocks like the Node runner's, ``start``/``stop`` embed it."""

    def __init__(
        self,
        settings: RunnerSettings | None = None,
        service: Service | None = None,
        *,
        reread: Callable[[], RunnerSettings] | None = None,
        relog: Callable[[LoggingSettings], None] | None = None,
    ) -> None:
        """``service``: an already loaded API (the CLI's ``--check`` pass), else loaded at
        start. ``reread``: the settings as they are now (runner.yaml read again), for a
        reload to take up; ``relog`` applies new logging settings."""
        self.settings = settings or RunnerSettings()
        self._service = service
        self._reread = reread
        self._relog = relog
        self._app: tornado.web.Application | None = None
        self.state: RunnerState | None = None
        self.ports: dict[str, int] = {}
        self._servers: list[tornado.httpserver.HTTPServer] = []
        self._management: tornado.httpserver.HTTPServer | None = None
        self._keepalive: KeepAlive | None = None
        self._sockets: dict[str, list[socket.socket]] = {}
        self._tls_context: ssl.SSLContext | None = None

    # -- the Node-style entry point ---------------------------------------------------

    def run(
        self,
        port: int | None = None,
        config_path: str | None = None,
        *,
        s_port: int | None = None,
        key: str | None = None,
        cert: str | None = None,
        management_port: int | None = None,
    ) -> None:
        """Serves until SIGTERM or SIGINT, like ``new HttpRunner().run({port, configPath})``."""
        s = self.settings
        if port is not None:
            s.listen.port = port
        if config_path is not None:
            s.api = config_path
        if s_port is not None:
            s.tls.port = s_port
        if key is not None and cert is not None:
            s.tls.key, s.tls.cert = key, cert
        if management_port is not None:
            s.management.port = management_port
        run_on_loop(self.serve(), s.event_loop)

    async def serve(self, notify: Notify | None = None) -> None:
        """Starts, serves until a stop signal, and stops; SIGHUP reloads the API config."""
        notify = notify or (lambda _: None)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        reloads: set[asyncio.Task[Any]] = set()
        started = False

        def reload() -> None:
            if not started:
                runner_log.warning("SIGHUP while starting: ignored, the config is being loaded")
                return
            task = asyncio.ensure_future(self._reload_notified(notify))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        # Installed before start(): a signal that comes while starting (or right after the
        # "serving" line) must not kill the process with the default action, skipping the
        # clean stop and the pidfile's removal. A stop asked for meanwhile stops after start.
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload)
        try:
            await self.start()
            started = True
            notify("READY=1")
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if started:
                notify("STOPPING=1")
                await self.stop()

    async def _reload_notified(self, notify: Notify) -> None:
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            await self.reload()
        finally:
            notify("READY=1")

    # -- start / reload / stop ----------------------------------------------------

    async def start(self) -> None:
        """Loads the API, runs on_start, binds every port; raises ConfigError/StartupError."""
        s = self.settings
        service = self._service or load_service(s)
        try:
            await service.start()
        except Exception as exc:
            raise StartupError(f"on_start failed: {exc!r}") from exc
        registry = Registry()
        watch = SendWatch(send_buffer=s.limits.send_buffer, send_timeout=s.timeouts.send)
        metrics = Metrics()
        metrics.watch_connections(
            lambda: len(registry),
            lambda: (watch.frames_out, watch.bytes_out, watch.stalls, watch.slow_consumers),
        )
        loop = asyncio.get_running_loop()
        state = self.state = RunnerState(s, service, registry, watch, metrics, loop)
        app = self._app = tornado.web.Application(
            [(r".*", ClientHandler, {"state": state})],
            websocket_max_message_size=s.limits.max_message_size,
            log_function=lambda handler: None,
        )
        try:
            self._listen(app, state)
        except BaseException:
            self._close_servers()
            self.unbind()
            raise
        if s.cluster.enabled:
            await self._join_cluster(state)
        watch.start()
        if s.timeouts.ping_interval:
            ping = s.timeouts.ping_interval
            self._keepalive = KeepAlive(registry, ping, s.timeouts.ping_timeout or ping)
            self._keepalive.start()
        state.phase = Phase.READY
        loop_kind = type(asyncio.get_running_loop()).__module__.split(".")[0]
        runner_log.info("running on the %s event loop", loop_kind)
        runner_log.info(
            "serving %s on %s", s.api, ", ".join(f"{k} :{v}" for k, v in self.ports.items())
        )

    async def _join_cluster(self, state: RunnerState) -> None:
        """Cluster mode: this daemon joins the others through Redis before it serves."""
        s = self.settings
        node = ClusterNode(s.cluster, s.management.base_url(), _ClusterHost(state))
        try:
            await node.start()
        except (OSError, RedisError) as exc:
            self._close_servers()
            raise StartupError(f"cannot join the cluster at {s.cluster.redis_url}: {exc}") from None
        state.cluster = node
        state.metrics.watch_cluster(node)

    def bind(self) -> None:
        """Binds every port now, so a daemon fails before it detaches from the terminal.

        Raises StartupError (a port in use names the port) or ConfigError (a TLS key or
        certificate that does not load). ``start()`` calls it when nobody did before.
        """
        if self._sockets:
            return
        s = self.settings
        try:
            if s.management.enabled:
                self._sockets["management"] = _bind(
                    s.management.host, s.management.port, "management"
                )
            self._sockets["listen"] = _bind(
                s.listen.host, s.listen.port, "WebSocket clients", s.listen.reuse_port
            )
            if s.tls.enabled:
                self._tls_context = tls_context(s)
                self._sockets["tls"] = _bind(s.tls.host or s.listen.host, s.tls.port, "WSS clients")
        except BaseException:
            self.unbind()
            raise
        for name, sockets in self._sockets.items():
            self.ports[name] = sockets[0].getsockname()[1]
        s.listen.port = self.ports["listen"]
        s.management.port = self.ports.get("management", s.management.port)
        s.tls.port = self.ports.get("tls", s.tls.port)

    def sockets(self) -> list[socket.socket]:
        """The bound listening sockets (a daemon keeps them open across detaching)."""
        return [sock for sockets in self._sockets.values() for sock in sockets]

    def unbind(self) -> None:
        for sock in self.sockets():
            sock.close()
        self._sockets.clear()

    def _listen(self, app: tornado.web.Application, state: RunnerState) -> None:
        self.bind()
        s = self.settings
        limits, timeouts = s.limits, s.timeouts
        http = {
            "max_header_size": limits.max_header_size,
            "idle_connection_timeout": timeouts.request_headers or None,
            "body_timeout": timeouts.request_body or None,
        }
        if "management" in self._sockets:
            self._management = tornado.httpserver.HTTPServer(
                make_management_app(state), max_body_size=limits.max_message_size, **http
            )
            self._management.add_sockets(self._sockets["management"])
        for name, tls in (("listen", None), ("tls", self._tls_context)):
            if name in self._sockets:
                server = ClientPortServer(
                    app, ssl_options=tls, max_body_size=limits.max_upgrade_body, **http
                )
                server.state = state
                server.add_sockets(self._sockets[name])
                self._servers.append(server)
        self._sockets.clear()

    async def reload(self) -> bool:
        """Swaps in a freshly loaded config.yaml and handlers, and runner.yaml's keys that
        can change live (the others are logged as needing a restart); keeps the old on
        failure."""
        state = self.state
        if state is None:
            return False
        try:
            settings = self._reread_settings()
            service = load_service(settings, reload=True)
            await service.start()
        except ConfigError as exc:
            runner_log.error("reload failed, the old config stays in service:\n%s", exc)
            return False
        except Exception as exc:
            runner_log.error("reload failed (on_start: %r), the old config stays in service", exc)
            return False
        await self._take_up(settings)
        state.service = service
        runner_log.info("reloaded %s: %d events", self.settings.api, len(service.routes))
        return True

    def _reread_settings(self) -> RunnerSettings:
        """The new settings: runner.yaml's live keys read again, the rest as running."""
        if self._reread is None:
            return self.settings
        new = self._reread()
        old = self.settings
        restart = [
            key
            for key in changed_keys(old, new)
            if not is_live(key) and not (key.endswith(".port") and _dotted(new, key) == 0)
        ]
        if restart:
            runner_log.warning(
                "runner.yaml: %s changed; these take effect at a restart", ", ".join(restart)
            )
        merged = copy.deepcopy(old)
        for key in LIVE_KEYS:
            section, _, name = key.partition(".")
            if name:
                setattr(getattr(merged, section), name, _dotted(new, key))
            else:
                setattr(merged, section, copy.deepcopy(getattr(new, section)))
        return merged

    async def _take_up(self, new: RunnerSettings) -> None:
        """Applies the live keys of ``new`` to what runs."""
        old, state = self.settings, self.state
        assert state is not None
        self.settings = state.settings = new
        state.watch.send_buffer = new.limits.send_buffer
        if new.timeouts.send != old.timeouts.send:
            state.watch.stop()
            state.watch.send_timeout = new.timeouts.send
            state.watch.start()
        if self._app is not None:
            self._app.settings["websocket_max_message_size"] = new.limits.max_message_size
        ping, timeout = new.timeouts.ping_interval, new.timeouts.ping_timeout
        if (ping, timeout) != (old.timeouts.ping_interval, old.timeouts.ping_timeout):
            if self._keepalive is not None:
                await self._keepalive.stop()
                self._keepalive = None
            if ping:
                self._keepalive = KeepAlive(state.registry, ping, timeout or ping)
                self._keepalive.start()
        if new.logging != old.logging and self._relog is not None:
            self._relog(new.logging)

    def _close_servers(self) -> None:
        for server in self._servers:
            server.stop()
        self._servers.clear()

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Drains events in flight, closes every connection with 1001, then stops."""
        state = self.state
        if state is None or state.phase is Phase.STOPPED:
            return
        timeout = self.settings.timeouts.drain if drain_timeout is None else drain_timeout
        state.phase = Phase.DRAINING
        self._close_servers()
        state.watch.stop()
        if self._keepalive is not None:
            await self._keepalive.stop()
        deadline = time.monotonic() + timeout
        if state.tasks:
            await asyncio.wait(set(state.tasks), timeout=timeout)
        closed = len(state.registry)
        for conn in state.registry:
            conn.close(1001, "Going Away", by="shutdown")
        remaining = max(0.0, deadline - time.monotonic())
        if state.tasks:
            await asyncio.wait(set(state.tasks), timeout=max(remaining, 1.0))
        cut = [task for task in state.tasks if not task.done()]
        for task in cut:
            task.cancel()
        if not await state.wait_sockets_closed(CLOSE_WAIT):
            for client in list(state.sockets):
                client.abort()
            # Tornado's frame loops end once they see their socket dropped.
            await state.wait_sockets_closed(CLOSE_WAIT)
        if state.cluster is not None:
            await state.cluster.stop()
        if self._management is not None:
            self._management.stop()
            await self._management.close_all_connections()
        state.phase = Phase.STOPPED
        runner_log.info(
            "stopped: %d connections closed, %d events cut by the drain timeout",
            closed,
            len(cut),
        )
