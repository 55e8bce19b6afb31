"""Service.process: the pipeline order, routing, error mapping, timeouts and logging."""

from __future__ import annotations

import asyncio
import importlib
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from wsutil import until

from tornado_ws_runner import ErrorResponse, Event, Request, Response, Service
from tornado_ws_runner.log import TRACE

MODULES = Path(__file__).parent / "fixtures" / "engine" / "modules"

PIPELINE = """\
import: [engine_recorder]
api:
  events:
    - name: on_start
      policies: [{record_handler: on_start}]
    - name: on_first_request
      policies: [{record_handler: on_first_request}]
    - name: on_before_request
      policies: [{record_handler: on_before_request}]
    - name: hello
      policies:
        - record_handler: hello
        - setResponseHandler: [200, hi]
    - name: left_error
      policies: [leave_error_handler]
    - name: boom
      policies: [raise_handler]
    - name: post
      policies: [{record_handler: by_method}]
    - name: catchall
      policies: [{record_handler: catchall}]
    - name: on_success
      policies: [{record_handler: on_success}]
    - name: on_error
      policies: [{record_handler: on_error}]
    - name: on_after_request
      policies: [{record_handler: on_after_request}]
"""

ERRORS = """\
import json

from tornado_ws_runner import ErrorResponse, Response

RAISED = ErrorResponse("Gone.", 410, "it left")


class Teapot(Exception):
    status_code = 418


class NodeStyleError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.statusCode = 404


class NotAStatus(Exception):
    status_code = 200


def raise_error_response_handler(event):
    raise RAISED


def json_error_handler(event):
    json.loads("{not json")


def syntax_error_handler(event):
    raise SyntaxError("unexpected token")


def status_code_handler(event):
    raise Teapot("short and stout")


def node_status_code_handler(event):
    raise NodeStyleError("no such thing")


def not_a_status_handler(event):
    raise NotAStatus("status 200 is no error status")


def secret_error_handler(event):
    raise RuntimeError("password=hunter2")


def runner_error_handler(event):
    from tornado_ws_runner.errors import HandlerTimeout

    raise HandlerTimeout("backend at 10.0.0.7 timed out")


def own_attribute_handler(event):
    event.user = "ada"
    event.response = Response(event.user)
"""

ERRORS_CONFIG = """\
api:
  events:
    - name: raise_error_response
      policies: [raise_error_response_handler]
    - name: json_error
      policies: [json_error_handler]
    - name: syntax_error
      policies: [syntax_error_handler]
    - name: status_code
      policies: [status_code_handler]
    - name: node_status_code
      policies: [node_status_code_handler]
    - name: not_a_status
      policies: [not_a_status_handler]
    - name: secret_error
      policies: [secret_error_handler]
    - name: runner_error
      policies: [runner_error_handler]
    - name: own_attribute
      policies: [own_attribute_handler]
"""


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The engine_recorder module, on sys.path, with its records cleared."""
    monkeypatch.syspath_prepend(str(MODULES))
    module: ModuleType = importlib.import_module("engine_recorder")
    module.reset()
    yield module
    module.reset()


def run(service: Service, *requests: Request) -> list[Response]:
    """Processes the requests one after the other on one event loop."""

    async def main() -> list[Response]:
        return [await service.process(Event(request)) for request in requests]

    return asyncio.run(main())


def labels(recorder: Any) -> list[str]:
    return [label for label, _ in recorder.CALLS]


def error_service(write: Any, **options: Any) -> Service:
    write("handlers/errors.py", ERRORS)
    return Service.load(write("config.yaml", ERRORS_CONFIG), **options)


def test_pipeline_order_for_a_named_event(write, recorder):
    """on_start, on_first_request, on_before_request, the route, on_success, on_after_request."""
    service = Service.load(write("config.yaml", PIPELINE))
    [response] = run(service, Request("hello"))
    assert (response.status_code, response.body) == (200, "hi")
    assert recorder.CALLS == [
        ("on_start", "on_start"),
        ("on_first_request", "hello"),
        ("on_before_request", "hello"),
        ("hello", "hello"),
        ("on_success", "hello"),
        ("on_after_request", "hello"),
    ]


def test_on_start_and_on_first_request_run_once(write, recorder):
    """With many events, even concurrent ones, on_start and on_first_request run once each."""
    service = Service.load(write("config.yaml", PIPELINE))

    async def main() -> list[Response]:
        first = await asyncio.gather(*(service.process(Event(Request("hello"))) for _ in range(5)))
        return [*first, await service.process(Event(Request("hello")))]

    responses = asyncio.run(main())
    assert [r.body for r in responses] == ["hi"] * 6
    assert labels(recorder).count("on_start") == 1
    assert labels(recorder).count("on_first_request") == 1
    assert labels(recorder).count("hello") == 6
    assert labels(recorder)[0] == "on_start"


def test_start_runs_on_start_before_any_event(write, recorder):
    """Service.start() runs on_start once; processing events later does not rerun it."""
    service = Service.load(write("config.yaml", PIPELINE))

    async def main() -> None:
        await service.start()
        assert recorder.CALLS == [("on_start", "on_start")]
        await service.start()
        await service.process(Event(Request("hello")))

    asyncio.run(main())
    assert labels(recorder).count("on_start") == 1


def test_on_start_failure_propagates_from_start(write, recorder):
    """A failing on_start makes start() raise, so a daemon refuses to start."""
    recorder.FAIL.add("on_start")
    service = Service.load(write("config.yaml", PIPELINE))
    with pytest.raises(RuntimeError, match="on_start failed"):
        asyncio.run(service.start())


def test_on_first_request_failure_answers_the_event_and_is_retried(write, recorder):
    """A failing on_first_request answers with the error, skips the route; the next retries."""
    recorder.FAIL.add("on_first_request")
    service = Service.load(write("config.yaml", PIPELINE))
    first, second = run(service, Request("hello"), Request("hello"))
    assert first.status_code == 500
    assert first.body == {"statusCode": 500, "message": "Internal Server Error", "details": ""}
    assert (second.status_code, second.body) == (200, "hi")
    assert labels(recorder) == [
        "on_start",
        "on_first_request",
        "on_error",
        "on_first_request",
        "on_before_request",
        "hello",
        "on_success",
        "on_after_request",
    ]


def test_route_by_method_when_no_event_has_the_name(write, recorder):
    """An unknown name is routed to the event named after its method."""
    service = Service.load(write("config.yaml", PIPELINE))
    run(service, Request("unknown", "POST"))
    assert ("by_method", "unknown") in recorder.CALLS
    assert "catchall" not in labels(recorder)


def test_route_to_catchall(write, recorder):
    """Neither name nor method routes: the catchall event runs."""
    service = Service.load(write("config.yaml", PIPELINE))
    [response] = run(service, Request("unknown", "PUT"))
    assert response.status_code == 200
    assert ("catchall", "unknown") in recorder.CALLS
    assert labels(recorder)[-2:] == ["on_success", "on_after_request"]


def test_no_route_is_501(write, recorder):
    """Without name, method or catchall routes the answer is 501 Not Implemented."""
    config = PIPELINE.replace("    - name: catchall\n", "    - name: unused_catchall\n")
    service = Service.load(write("config.yaml", config))
    [response] = run(service, Request("x"))
    assert response.status_code == 501
    assert response.body == {
        "statusCode": 501,
        "message": "Not Implemented.",
        "details": "Route for 'x' event could not be found.",
    }
    assert response.headers == {"Content-Type": "application/json"}
    assert labels(recorder)[-3:] == ["on_before_request", "on_error", "on_after_request"]


def test_no_route_with_an_empty_config(write):
    """A config with no events answers every event 501."""
    service = Service.load(write("config.yaml", "api:\n  events: []\n"))
    [response] = run(service, Request("x"))
    assert response.status_code == 501


def test_error_response_left_on_the_event_is_a_failure(write, recorder):
    """An ErrorResponse left as event.response skips on_success and runs on_error."""
    service = Service.load(write("config.yaml", PIPELINE))
    [response] = run(service, Request("left_error"))
    assert response.body == {
        "statusCode": 409,
        "message": "Conflict.",
        "details": "left on the event",
    }
    assert labels(recorder)[-3:] == ["leave_error", "on_error", "on_after_request"]
    assert "on_success" not in labels(recorder)


def test_exception_runs_on_error_not_on_success(write, recorder):
    """A raising handler runs on_error and on_after_request, not on_success."""
    service = Service.load(write("config.yaml", PIPELINE))
    [response] = run(service, Request("boom"))
    assert response.status_code == 500
    assert labels(recorder)[-3:] == ["raise", "on_error", "on_after_request"]


def test_on_error_failure_is_only_logged(write, recorder, caplog):
    """If on_error fails, the failure is logged and the original error response stays."""
    recorder.FAIL.add("on_error")
    service = Service.load(write("config.yaml", PIPELINE))
    [response] = run(service, Request("left_error"))
    assert response.status_code == 409
    assert "on_after_request" in labels(recorder)
    failures = [r for r in caplog.records if "on_error failed" in r.getMessage()]
    assert [(r.name, r.levelno) for r in failures] == [("tornado_ws_runner.engine", logging.ERROR)]
    assert "RuntimeError('on_error failed')" in failures[0].getMessage()


def test_on_after_request_runs_after_success_and_failure(write, recorder):
    """on_after_request runs for every event, answered or failed."""
    service = Service.load(write("config.yaml", PIPELINE))
    run(service, Request("hello"), Request("boom"), Request("left_error"))
    assert labels(recorder).count("on_after_request") == 3


def test_on_after_request_failure_is_mapped_like_other_errors(write, recorder):
    """A failing on_after_request replaces the response with the mapped error, runs on_error."""
    recorder.FAIL.add("on_after_request")
    service = Service.load(write("config.yaml", PIPELINE))
    [response] = run(service, Request("hello"))
    assert response.body == {"statusCode": 500, "message": "Internal Server Error", "details": ""}
    assert labels(recorder)[-3:] == ["on_success", "on_after_request", "on_error"]


def test_raised_error_response_is_used_as_is(write):
    """A raised ErrorResponse is the response, status, message and details unchanged."""
    [response] = run(error_service(write), Request("raise_error_response"))
    assert isinstance(response, ErrorResponse)
    assert response.body == {"statusCode": 410, "message": "Gone.", "details": "it left"}


def test_json_decode_error_is_400(write):
    """A JSON decoding error is a 400 whose details say what was wrong."""
    [response] = run(error_service(write), Request("json_error"))
    assert response.body == {
        "statusCode": 400,
        "message": "Bad Request.",
        "details": "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
    }


def test_syntax_error_is_400(write):
    """A SyntaxError is a 400 whose details are its message."""
    [response] = run(error_service(write), Request("syntax_error"))
    assert response.body == {
        "statusCode": 400,
        "message": "Bad Request.",
        "details": "unexpected token",
    }


def test_status_code_attribute(write):
    """An exception with a status_code attribute answers with it and its message."""
    [response] = run(error_service(write), Request("status_code"))
    assert response.body == {"statusCode": 418, "message": "short and stout", "details": ""}


def test_node_status_code_attribute(write):
    """An exception with a statusCode attribute (Node style) answers with it and its message."""
    [response] = run(error_service(write), Request("node_status_code"))
    assert response.body == {"statusCode": 404, "message": "no such thing", "details": ""}


def test_status_code_that_is_no_error_is_500(write):
    """A status_code outside 400-599 does not count: the answer is a plain 500."""
    [response] = run(error_service(write), Request("not_a_status"))
    assert response.body == {"statusCode": 500, "message": "Internal Server Error", "details": ""}


def test_unexpected_exception_is_hidden(write):
    """Any other exception is 500 Internal Server Error; its message is not shown."""
    [response] = run(error_service(write), Request("secret_error"))
    assert response.body == {"statusCode": 500, "message": "Internal Server Error", "details": ""}
    assert "hunter2" not in str(response.body)


def test_error_details_show_message_and_traceback(write):
    """With error_details=True the message is the exception text and details the traceback."""
    [response] = run(error_service(write, error_details=True), Request("secret_error"))
    assert response.status_code == 500
    assert response.body["message"] == "password=hunter2"
    details = response.body["details"]
    assert details.startswith("Traceback (most recent call last):")
    assert "errors.py" in details and "in secret_error_handler" in details
    assert details.rstrip().endswith("RuntimeError: password=hunter2")


def test_error_details_keep_existing_details(write):
    """error_details never replaces details an ErrorResponse already has."""
    service = error_service(write, error_details=True)
    gone, missing = run(service, Request("raise_error_response"), Request("nowhere"))
    assert gone.body["details"] == "it left"
    assert missing.body["details"] == "Route for 'nowhere' event could not be found."


HANG = """\
import asyncio
import time


async def hang_handler(event):
    event.response.headers["x-waiting"] = "yes"
    await asyncio.Event().wait()


async def own_timeout_handler(event):
    raise TimeoutError("my own timeout")


async def quick_handler(event):
    event.response.body = "quick"


def block_then_wait_handler(event):
    time.sleep(0.1)  # the fault under test: blocks the loop past the deadline
    return asyncio.sleep(0)


async def own_deadline_handler(event):
    try:
        async with asyncio.timeout(0.01):
            await asyncio.Event().wait()
    except TimeoutError:
        event.response.body = "my deadline passed"


async def many_waits_handler(event):
    for _ in range(3):
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    event.response.body = "waited"
"""

HANG_CONFIG = """\
api:
  events:
    - name: hang
      policies: [hang_handler]
    - name: own_timeout
      policies: [own_timeout_handler]
    - name: quick
      policies: [quick_handler]
    - name: block_then_wait
      policies: [block_then_wait_handler]
    - name: own_deadline
      policies: [own_deadline_handler]
    - name: many_waits
      policies: [many_waits_handler]
"""


def test_handler_timeout_is_504(write):
    """A chain running past handler_timeout answers 504 Gateway Timeout."""
    write("handlers/hang.py", HANG)
    service = Service.load(write("config.yaml", HANG_CONFIG), handler_timeout=0.05)
    hang, quick = run(service, Request("hang"), Request("quick"))
    assert hang.body == {
        "statusCode": 504,
        "message": "Gateway Timeout.",
        "details": "The handlers of 'hang' ran longer than 0.05s.",
    }
    assert quick.body == "quick"


def test_the_deadline_counts_from_the_start_not_from_the_first_wait(write):
    """A chain that blocks past handler_timeout, then waits, is cut at that wait: 504."""
    write("handlers/hang.py", HANG)
    service = Service.load(write("config.yaml", HANG_CONFIG), handler_timeout=0.05)
    [response] = run(service, Request("block_then_wait"))
    assert response.status_code == 504


def test_a_handlers_own_asyncio_timeout_cancels_only_its_own_wait(write):
    """asyncio.timeout inside a handler binds to the event's task, under the deadline."""
    write("handlers/hang.py", HANG)
    service = Service.load(write("config.yaml", HANG_CONFIG), handler_timeout=5)
    own, quick = run(service, Request("own_deadline"), Request("quick"))
    assert (own.status_code, own.body) == (200, "my deadline passed")
    assert quick.body == "quick"


def test_a_chain_that_waits_several_times_finishes_under_the_deadline(write):
    """Every wait of a chain is awaited in turn, with or without a deadline."""
    write("handlers/hang.py", HANG)
    for timeout in (None, 5):
        service = Service.load(write("config.yaml", HANG_CONFIG), handler_timeout=timeout)
        [response] = run(service, Request("many_waits"))
        assert (response.status_code, response.body) == (200, "waited")


def test_cancelling_the_event_reaches_a_waiting_handler(write):
    """A cancel (shutdown cutting an event) reaches the handler and ends process()."""
    write("handlers/hang.py", HANG)
    service = Service.load(write("config.yaml", HANG_CONFIG), handler_timeout=5)

    async def main() -> None:
        event = Event(Request("hang"))
        task = asyncio.ensure_future(service.process(event))
        await until(lambda: event.response.headers.get("x-waiting"), "the hang handler to wait")
        assert not task.done(), "the hang handler waits"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_handler_raising_timeout_error_is_500(write):
    """A handler's own TimeoutError is an ordinary failure (500), not the deadline."""
    write("handlers/hang.py", HANG)
    service = Service.load(write("config.yaml", HANG_CONFIG), handler_timeout=5)
    [response] = run(service, Request("own_timeout"))
    assert response.body == {"statusCode": 500, "message": "Internal Server Error", "details": ""}


def test_no_handler_timeout_by_default(write):
    """Without handler_timeout, a TimeoutError of a handler is also a 500."""
    write("handlers/hang.py", HANG)
    service = Service.load(write("config.yaml", HANG_CONFIG))
    assert service.handler_timeout is None
    [response] = run(service, Request("own_timeout"))
    assert response.status_code == 500


# --- events do not share state ----------------------------------------------------------

SHARED = """\
import asyncio

from tornado_ws_runner import Response


async def yield_handler(event):
    await asyncio.sleep(0)


def mutate_handler(event, data):
    data["seen"].append(event.params["who"])
    event.response = Response(data)
"""

SHARED_CONFIG = """\
api:
  events:
    - name: greet
      policies:
        - yield_handler
        - setResponseHandler:
            - 200
            - greeting: Hi $(who)
              who: [$(who)]
            - x-who: $(who)
        - yield_handler
    - name: mutate
      policies:
        - yield_handler
        - mutate_handler: [{seen: []}]
"""


def test_concurrent_events_resolve_their_own_values(write):
    """Events resolving the same configured parameters concurrently each see their own."""
    write("handlers/shared.py", SHARED)
    service = Service.load(write("config.yaml", SHARED_CONFIG))
    names = ["ann", "bob", "cyd", "dan"]

    async def main() -> list[Response]:
        events = [Event(Request("greet", params={"who": who})) for who in names]
        return list(await asyncio.gather(*(service.process(event) for event in events)))

    responses = asyncio.run(main()) + run(service, Request("greet", params={"who": "eve"}))
    assert [r.body for r in responses] == [
        {"greeting": f"Hi {who}", "who": [who]} for who in [*names, "eve"]
    ]
    assert [r.headers for r in responses] == [{"x-who": who} for who in [*names, "eve"]]


def test_handler_mutating_a_parameter_does_not_affect_the_next_event(write):
    """A handler that changes its dict parameter gets a fresh copy on every event."""
    write("handlers/shared.py", SHARED)
    service = Service.load(write("config.yaml", SHARED_CONFIG))

    async def main() -> list[Response]:
        return list(
            await asyncio.gather(
                *(service.process(Event(Request("mutate", params={"who": w}))) for w in "ab")
            )
        )

    responses = asyncio.run(main()) + run(service, Request("mutate", params={"who": "c"}))
    assert [r.body for r in responses] == [{"seen": ["a"]}, {"seen": ["b"]}, {"seen": ["c"]}]


# --- logging ----------------------------------------------------------------------------

LOGGED = """\
import: [engine_recorder]
api:
  events:
    - name: traced
      policies:
        - record_handler
        - setResponseHandler: [200, ok]
    - name: info_level
      logLevel: info
      policies: [record_handler]
    - name: none_level
      logLevel: none
      policies: [raise_handler]
    - name: quiet_policy
      policies:
        - record_handler:
          logLevel: error
        - setResponseHandler: [200, ok]
    - name: boom
      policies: [raise_handler]
    - name: left_error
      policies: [leave_error_handler]
"""


def trace_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == TRACE and r.name == "tornado_ws_runner.engine"
    ]


def test_trace_logs_policies_and_events(write, recorder, caplog):
    """At TRACE, each policy's "Executed" line and the event's "Handled" line are logged."""
    caplog.set_level(TRACE, logger="tornado_ws_runner.engine")
    service = Service.load(write("config.yaml", LOGGED))
    event = Event(Request("traced", headers={"correlation-id": "corr-1"}))
    asyncio.run(service.process(event))
    lines = trace_lines(caplog)
    assert len(lines) == 3
    assert lines[0].startswith(f"{event.id} - corr-1 - Executed record_handler policy [")
    assert lines[1].startswith(f"{event.id} - corr-1 - Executed setResponseHandler policy [")
    assert lines[2].startswith(f"{event.id} - corr-1 - Handled traced [")
    assert all(line.endswith("ms]") for line in lines)
    assert logging.getLevelName(TRACE) == "TRACE"


@pytest.mark.parametrize("name", ["info_level", "none_level"])
def test_no_trace_lines_below_trace_level(write, recorder, caplog, name):
    """An event with logLevel info or none logs no "Executed" or "Handled" lines."""
    caplog.set_level(TRACE, logger="tornado_ws_runner.engine")
    service = Service.load(write("config.yaml", LOGGED))
    asyncio.run(service.process(Event(Request(name))))
    assert trace_lines(caplog) == []


def test_policy_log_level_silences_one_policy(write, recorder, caplog):
    """A policy with logLevel error logs no "Executed" line; the others still do."""
    caplog.set_level(TRACE, logger="tornado_ws_runner.engine")
    service = Service.load(write("config.yaml", LOGGED))
    asyncio.run(service.process(Event(Request("quiet_policy"))))
    lines = trace_lines(caplog)
    assert [line.split(" - ")[2].split(" [")[0] for line in lines] == [
        "Executed setResponseHandler policy",
        "Handled quiet_policy",
    ]


def test_no_trace_lines_when_trace_is_off(write, recorder, caplog):
    """With the logger above TRACE nothing is traced."""
    caplog.set_level(logging.DEBUG, logger="tornado_ws_runner.engine")
    service = Service.load(write("config.yaml", LOGGED))
    asyncio.run(service.process(Event(Request("traced"))))
    assert trace_lines(caplog) == []


def test_unexpected_failure_logged_with_traceback(write, recorder, caplog):
    """An unexpected exception is logged at ERROR on tornado_ws_runner.engine with its traceback."""
    caplog.set_level(logging.INFO, logger="tornado_ws_runner.engine")
    service = Service.load(write("config.yaml", LOGGED))
    event = Event(Request("boom"))
    asyncio.run(service.process(event))
    [record] = [r for r in caplog.records if r.name == "tornado_ws_runner.engine"]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == f"{event.id} - {event.id} - Failed to handle boom: boom"
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


def test_error_response_failure_logged_at_info(write, recorder, caplog):
    """An ErrorResponse failure is logged at INFO, without a traceback."""
    caplog.set_level(logging.INFO, logger="tornado_ws_runner.engine")
    service = Service.load(write("config.yaml", LOGGED))
    event = Event(Request("left_error"))
    asyncio.run(service.process(event))
    [record] = [r for r in caplog.records if r.name == "tornado_ws_runner.engine"]
    assert record.levelno == logging.INFO
    assert record.getMessage().endswith("Failed to handle left_error: 409 Conflict.")
    assert record.exc_info is None


def test_log_level_none_does_not_log_failures(write, recorder, caplog):
    """An event with logLevel none does not log its failures."""
    caplog.set_level(TRACE, logger="tornado_ws_runner.engine")
    service = Service.load(write("config.yaml", LOGGED))
    [response] = run(service, Request("none_level"))
    assert response.status_code == 500
    assert [r for r in caplog.records if r.name == "tornado_ws_runner.engine"] == []


def test_runner_error_answers_its_public_message_only(write):
    """A RunnerError keeps its status but shows the client its public message, not str()."""
    (response,) = run(error_service(write), Request("runner_error"))
    assert response.body == {"statusCode": 504, "message": "Gateway Timeout.", "details": ""}


def test_handler_may_add_its_own_event_attributes(write):
    """As in Node, a handler can hang its own data on the event."""
    (response,) = run(error_service(write), Request("own_attribute"))
    assert (response.status_code, response.body) == (200, "ada")


PLAIN_HANDLERS = """\
def plain_handler(event):
    pass


async def async_handler(event):
    pass
"""

PLAIN = """\
api:
  events:
    - name: plain
      policies: [plain_handler]
    - name: waits
      policies: [plain_handler, async_handler]
"""


def test_runs_plain_names_the_events_whose_every_step_is_a_plain_function(write):
    """Only once the service has warmed up. An async handler in an event's chain rules
    that event out; one in a hook around every event, all of them; an unconfigured name
    goes as catchall does (without one, its 501 calls nothing)."""
    write("handlers/plain.py", PLAIN_HANDLERS)
    service = Service.load(write("config.yaml", PLAIN))
    assert not service.runs_plain("plain")
    run(service, Request("plain"))
    assert [service.runs_plain(n) for n in ("plain", "waits", "unknown")] == [True, False, True]
    for hook, expected in (("on_after_request", [False, False]), ("catchall", [True, False])):
        config = f"{PLAIN}    - name: {hook}\n      policies: [async_handler]\n"
        hooked = Service.load(write("config.yaml", config))
        run(hooked, Request("plain"))
        assert [hooked.runs_plain(n) for n in ("plain", "unknown")] == expected, hook
