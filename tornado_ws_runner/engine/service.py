"""The Configurapi pipeline: lifecycle hooks, routing, error mapping, timing logs.

``Service.load`` runs both phases of loading (validate, then resolve every handler
once), so processing an event does no name lookups beyond one dict get per step.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import inspect
import json
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, ConfigIssue, RunnerError
from ..log import TRACE, engine_log
from .config import LOG_LEVELS, ApiConfig, EventSpec, load_api_config, suggest
from .deadline import Suspended, first_step
from .event import Event, Request
from .handlers import discover_handlers
from .responses import ErrorResponse, Response

__all__ = ["COMPLETE", "CONTINUE", "LIFECYCLE_EVENTS", "Result", "Service"]


class Result(enum.Enum):
    """What a handler may return: COMPLETE ends its event's chain."""

    CONTINUE = "continue"
    COMPLETE = "complete"


COMPLETE = Result.COMPLETE
CONTINUE = Result.CONTINUE

#: Events the pipeline runs by itself; a client cannot route to them by name.
LIFECYCLE_EVENTS = frozenset(
    {
        "on_start",
        "on_first_request",
        "on_before_request",
        "on_success",
        "on_error",
        "on_after_request",
        "catchall",
    }
)
_RANK = {level: rank for rank, level in enumerate(LOG_LEVELS)}
#: Bad input raised in the pipeline (a RunnerError such as BadInput maps earlier).
_BAD_INPUT = (json.JSONDecodeError, SyntaxError)


class Policy:
    """One resolved step of a chain: the handler and its configured parameters.

    ``blocking_warning`` (seconds, None for none; the Service sets it) is how long a call
    of a sync handler may take before a warning says it blocked the event loop: a sync
    handler runs on the loop, so while it runs no other connection is served.
    """

    __slots__ = (
        "blocking_warning",
        "copy_parameters",
        "handler",
        "is_async",
        "name",
        "parameters",
        "trace",
    )

    def __init__(
        self, name: str, handler: Callable[..., Any], parameters: tuple[Any, ...], trace: bool
    ):
        self.name = name
        self.handler = handler
        self.parameters = parameters
        # Handlers may change a dict or list they are given; copies keep events apart.
        self.copy_parameters = any(isinstance(p, (dict, list)) for p in parameters)
        self.trace = trace
        self.is_async = inspect.iscoroutinefunction(handler)
        self.blocking_warning: float | None = None

    def call(self, event: Event) -> Any:
        """The handler's result: an async handler's is its coroutine, for the route to
        await. A plain call, so a sync handler costs no coroutine of its own."""
        parameters = copy.deepcopy(self.parameters) if self.copy_parameters else self.parameters
        if not self.blocking_warning or self.is_async:
            return self.handler(event, *parameters)
        started = time.perf_counter()
        try:
            return self.handler(event, *parameters)
        finally:  # a handler that blocked, then raised, blocked all the same
            blocked = time.perf_counter() - started
            if blocked > self.blocking_warning:
                engine_log.warning(
                    "handler %s of event %s blocked the event loop for %.3fs",
                    self.name,
                    event.name or "(unnamed)",
                    blocked,
                )


class Route:
    __slots__ = ("log_errors", "name", "policies", "trace")

    def __init__(self, spec: EventSpec, policies: list[Policy]):
        self.name = spec.name
        self.policies = tuple(policies)
        self.trace = _RANK[spec.log_level] >= _RANK["trace"]
        self.log_errors = _RANK[spec.log_level] >= _RANK["error"]

    async def run(self, event: Event) -> None:
        for policy in self.policies:
            traced = policy.trace and engine_log.isEnabledFor(TRACE)
            started = time.perf_counter() if traced else 0.0
            try:
                result = policy.call(event)
                if policy.is_async:
                    result = await result
                # Most sync handlers return None; isawaitable's ABC check is the costly part.
                elif result is not None and inspect.isawaitable(result):
                    # A task of its own: a chain of plain functions may be run outside any
                    # task (Service.runs_plain), and this awaitable's code may ask for
                    # its task (asyncio.timeout does).
                    result = await asyncio.ensure_future(result)
                if result is COMPLETE:
                    break
            finally:
                if started:
                    engine_log.log(
                        TRACE,
                        "%s - %s - Executed %s policy [%.3fms]",
                        event.id,
                        event.correlation_id,
                        policy.name,
                        (time.perf_counter() - started) * 1e3,
                    )


def _all_plain(route: Route | None) -> bool:
    return route is None or not any(policy.is_async for policy in route.policies)


def build_routes(config: ApiConfig, reload: bool = False) -> dict[str, Route]:
    """Phase two: resolve every policy's handler, reporting all missing ones at once."""
    handlers, issues = discover_handlers(config, reload)
    # With a handler source that failed to load, a missing name is most likely one of
    # its handlers: one line lists them, with no did-you-mean among the others.
    failed_sources = bool(issues)
    unresolved: list[tuple[str, int | None]] = []
    routes: dict[str, Route] = {}
    for spec in config.events:
        policies = []
        for policy in spec.policies:
            handler = handlers.get(policy.handler)
            if handler is None and failed_sources:
                unresolved.append((policy.handler, policy.line))
                continue
            if handler is None:
                issues.append(
                    ConfigIssue(
                        policy.key,
                        f"no handler named '{policy.handler}'{suggest(policy.handler, handlers)}",
                        policy.line,
                    )
                )
                continue
            level = policy.log_level or spec.log_level
            policies.append(
                Policy(policy.handler, handler, policy.parameters, _RANK[level] >= _RANK["trace"])
            )
        routes[spec.name] = Route(spec, policies)
    if unresolved:
        names = ", ".join(sorted({name for name, _ in unresolved}))
        issues.append(
            ConfigIssue(
                "api.events",
                f"{len(unresolved)} {'policy names' if len(unresolved) == 1 else 'policies name'}"
                f" handlers not found ({names}): "
                "the handler files that failed to load above may hold them",
                unresolved[0][1],
            )
        )
    if issues:
        raise ConfigError(str(config.path), issues)
    return routes


class Service:
    """Runs events through the configured chains, as Configurapi's Service.process does.

    ``handler_timeout`` (seconds, None for none) bounds each event's main chain; past
    it the event answers 504. It cannot interrupt a handler that blocks the event loop.
    ``error_details`` puts tracebacks into error bodies; off by default, because they
    reveal code and file paths to clients. ``blocking_warning`` (seconds, None or 0 for
    none) logs a warning naming any sync handler whose call took longer: it blocked the
    event loop, so every connection waited meanwhile.
    """

    def __init__(
        self,
        config: ApiConfig,
        routes: dict[str, Route],
        *,
        error_details: bool = False,
        handler_timeout: float | None = None,
        blocking_warning: float | None = None,
    ) -> None:
        self.config = config
        self.routes = routes
        self.error_details = error_details
        self.handler_timeout = handler_timeout
        self.blocking_warning = blocking_warning or None
        for route in routes.values():
            for policy in route.policies:
                policy.blocking_warning = self.blocking_warning
        self._started: asyncio.Future[None] | None = None
        self._ready = "on_first_request" not in routes
        # The hooks around every event, looked up once: the routes never change.
        self._before = routes.get("on_before_request")
        self._success = routes.get("on_success")
        self._after = routes.get("on_after_request")
        self._catchall = routes.get("catchall")
        self._traced = any(route.trace for route in routes.values())
        # The events whose every step is a plain function (runs_plain).
        hooks = [routes.get(name) for name in ("on_before_request", "on_success", "on_error")]
        plain_hooks = all(_all_plain(route) for route in [*hooks, self._after])
        self._plain = {name for name, route in routes.items() if plain_hooks and _all_plain(route)}
        self._plain_unrouted = plain_hooks and _all_plain(self._catchall)
        self._first_lock: asyncio.Lock | None = None
        #: on_start and on_first_request have succeeded: process() goes straight on.
        self._warm = False

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        environment: str | None = None,
        reload: bool = False,
        error_details: bool = False,
        handler_timeout: float | None = None,
        blocking_warning: float | None = None,
    ) -> Service:
        config = load_api_config(path, environment)
        return cls(
            config,
            build_routes(config, reload),
            error_details=error_details,
            handler_timeout=handler_timeout,
            blocking_warning=blocking_warning,
        )

    def has_event(self, name: str) -> bool:
        return name in self.routes

    def runs_plain(self, name: str | None) -> bool:
        """Whether processing an event named ``name`` calls only plain functions (no
        ``async def`` handler in its chain or in the hooks around it) once the service
        has started: its first step then runs no coroutine of the application, so a
        caller may take that step outside any task of its own (the client port does,
        when it is not under load, to answer in the turn the message came in)."""
        if not self._warm:
            return False
        return name in self._plain or (name not in self.routes and self._plain_unrouted)

    async def start(self) -> None:
        """Runs ``on_start`` once; its failure propagates, so a daemon refuses to start."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._on_start())
        await self._started

    async def _on_start(self) -> None:
        route = self.routes.get("on_start")
        if route is not None:
            await route.run(Event(Request("on_start")))

    async def process(self, event: Event) -> Response:
        """Runs the whole pipeline for ``event`` and returns its final response."""
        if not self._warm and not await self._warm_up(event):
            return event.response
        started = time.perf_counter() if self._traced else 0.0
        try:
            timeout = self.handler_timeout
            if timeout is None:
                await self._main(event)
            else:
                # The deadline is a timer on the loop; a chain that finishes without
                # waiting (most do) never needs it, so it is armed only when the chain
                # first waits, for what is left of the timeout after its first step. A
                # chain that blocks cannot be cut either way (blocking_warning reports it).
                began = time.perf_counter()
                rest = first_step(self._main(event))
                if rest is not None:
                    left = timeout - (time.perf_counter() - began)
                    await self._finish_within(rest, left, event, timeout)
        except Exception as error:
            await self._handle_error(event, error)
        after = self._after
        if after is not None:
            try:
                await after.run(event)
            except Exception as error:
                await self._handle_error(event, error)
        route = self.routes.get(event.name) if self._traced else None
        if route is not None and route.trace and engine_log.isEnabledFor(TRACE):
            engine_log.log(
                TRACE,
                "%s - %s - Handled %s [%.3fms]",
                event.id,
                event.correlation_id,
                event.name,
                (time.perf_counter() - started) * 1e3,
            )
        return event.response

    async def _warm_up(self, event: Event) -> bool:
        """``on_start`` done, then ``on_first_request`` until it succeeds once; False
        when it failed now (``event`` holds its error response)."""
        if self._started is None or not self._started.done() or self._started.exception():
            await self.start()
        if not self._ready and not await self._first_request(event):
            return False
        self._warm = True
        return True

    async def _first_request(self, event: Event) -> bool:
        """Runs ``on_first_request`` until it succeeds once; False when it failed now."""
        if self._first_lock is None:
            self._first_lock = asyncio.Lock()
        async with self._first_lock:
            if self._ready:
                return True
            try:
                await self.routes["on_first_request"].run(event)
            except Exception as error:
                await self._handle_error(event, error)
                return False
            self._ready = True
            return True

    @staticmethod
    async def _finish_within(rest: Suspended, left: float, event: Event, timeout: float) -> None:
        # The deadline cancels the task it was made in, which must be the one that goes
        # on with the chain; the first step may have run outside it (runs_plain). One
        # turn of the loop first, then, in whichever task drives this.
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            rest.close()
            raise
        deadline = asyncio.timeout(left)
        try:
            async with deadline:
                await rest
        except TimeoutError:
            if not deadline.expired():
                raise
            raise ErrorResponse(
                "Gateway Timeout.",
                504,
                f"The handlers of '{event.name}' ran longer than {timeout:g}s.",
            ) from None

    async def _main(self, event: Event) -> None:
        routes = self.routes
        before = self._before
        if before is not None:
            await before.run(event)
        route = routes.get(event.name) or routes.get(event.method) or self._catchall
        if route is None:
            raise ErrorResponse(
                "Not Implemented.", 501, f"Route for '{event.name}' event could not be found."
            )
        await route.run(event)
        if isinstance(event.response, ErrorResponse):
            raise event.response
        success = self._success
        if success is not None:
            await success.run(event)

    def error_response(self, error: Exception) -> ErrorResponse:
        """Maps an exception to the response a client gets.

        An ErrorResponse stands as it is; a JSON or syntax error is 400; an exception
        with a ``status_code`` (or ``statusCode``) keeps it and its message; anything
        else is 500 ``Internal Server Error``, its message only with error details on,
        since it may name files or data the client should not see.
        """
        if isinstance(error, ErrorResponse):
            response = error
        elif isinstance(error, RunnerError):
            response = ErrorResponse(error.public_message, error.status_code)
            response.error = error
        elif isinstance(error, _BAD_INPUT):
            # A SyntaxError's str() names the file and line: only its message goes out.
            detail = error.msg if isinstance(error, SyntaxError) else str(error)
            response = ErrorResponse("Bad Request.", 400, detail)
        else:
            status = getattr(error, "status_code", None) or getattr(error, "statusCode", None)
            if isinstance(status, int) and 400 <= status <= 599:
                response = ErrorResponse(error, status)
            elif self.error_details:
                response = ErrorResponse(error, 500)
            else:
                response = ErrorResponse("Internal Server Error", 500)
                response.error = error
        if self.error_details and response.error is not None and not response.details:
            response.with_details("".join(traceback.format_exception(response.error)))
        return response

    async def _handle_error(self, event: Event, error: Exception) -> None:
        response = self.error_response(error)
        event.response = response
        route = self.routes.get(event.name)
        if route is None or route.log_errors:
            unexpected = response.status_code >= 500 and not isinstance(error, ErrorResponse)
            engine_log.log(
                40 if unexpected else 20,
                "%s - %s - Failed to handle %s: %s",
                event.id,
                event.correlation_id,
                event.name or "(unnamed)",
                error if not isinstance(error, ErrorResponse) else response,
                exc_info=error if unexpected else None,
            )
        on_error = self.routes.get("on_error")
        if on_error is not None:
            try:
                await on_error.run(event)
            except Exception as reason:
                engine_log.error(
                    "%s - %s - on_error failed: %r", event.id, event.correlation_id, reason
                )
