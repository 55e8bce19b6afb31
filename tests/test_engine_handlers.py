"""Handlers: how they are found, how they are called, and the standard handlers."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
import yaml

from tornado_ws_runner import ConfigError, Event, JsonResponse, Request, Response, Service


def answer(service: Service, name: str, **fields: Any) -> Response:
    return asyncio.run(service.process(Event(Request(name, **fields))))


def missing_handlers(write: Any, names: list[str], imports: list[str] | None = None) -> set[str]:
    """Loads a config naming each handler once; returns the names the engine did not find."""
    config: dict[str, Any] = {
        "api": {"events": [{"name": f"e{i}", "policies": [n]} for i, n in enumerate(names)]}
    }
    if imports:
        config["import"] = imports
    try:
        Service.load(write("config.yaml", yaml.safe_dump(config)))
    except ConfigError as error:
        found = (re.match(r"no handler named '([^']+)'", i.message) for i in error.issues)
        return {match.group(1) for match in found if match}
    return set()


def chain(write: Any, *policies: Any, name: str = "e", extra: str = "") -> Service:
    """A service with one event whose chain is ``policies`` (YAML flow values)."""
    lines = "\n".join(f"        - {p}" for p in policies)
    text = f"api:\n  events:\n    - name: {name}\n      policies:\n{lines}\n{extra}"
    return Service.load(write("config.yaml", text))


# --- discovery --------------------------------------------------------------------------

NAMES = """\
class ThingHandler:
    pass


class _Callable:
    def __call__(self, event):
        pass


def echoHandler(event):
    pass


def ECHO_HANDLER(event):
    pass


def my_handler(event):
    pass


def handler(event):
    pass


def _private_handler(event):
    pass


def handler_helper(event):
    pass


instance_handler = _Callable()
"""


def test_functions_ending_in_handler_any_case_are_handlers(write):
    """Public functions whose names end in 'handler' (any case) are registered, others not."""
    write("names.py", NAMES)
    missing = missing_handlers(
        write,
        [
            "echoHandler",
            "ECHO_HANDLER",
            "my_handler",
            "handler",
            "ThingHandler",
            "_private_handler",
            "handler_helper",
            "instance_handler",
        ],
        ["./names"],
    )
    assert missing == {"ThingHandler", "_private_handler", "handler_helper", "instance_handler"}


def test_dunder_all_is_respected(write):
    """A module's __all__ limits its handlers to the names it lists."""
    write(
        "listed.py",
        "__all__ = ['listed_handler']\n\n\n"
        "def listed_handler(event):\n    pass\n\n\n"
        "def unlisted_handler(event):\n    pass\n",
    )
    assert missing_handlers(write, ["listed_handler", "unlisted_handler"], ["./listed"]) == {
        "unlisted_handler"
    }


def test_empty_dunder_all_exports_nothing(write):
    """An empty __all__ means the module exports no handler."""
    write("hidden.py", "__all__ = []\n\n\ndef hidden_handler(event):\n    pass\n")
    assert missing_handlers(write, ["hidden_handler"], ["./hidden"]) == {"hidden_handler"}


def test_handlers_folder_beside_config(write):
    """Every .py file of handlers/ beside config.yaml adds its handlers; _files are skipped."""
    write("handlers/a.py", "def a_handler(event):\n    event.response.body = 'a'\n")
    write("handlers/b.py", "def bHandler(event):\n    pass\n")
    write("handlers/_shared.py", "def shared_handler(event):\n    pass\n")
    write("handlers/notes.txt", "def text_handler(event): pass\n")
    write("handlers/sub/deep.py", "def deep_handler(event):\n    pass\n")
    assert missing_handlers(
        write, ["a_handler", "bHandler", "shared_handler", "text_handler", "deep_handler"]
    ) == {"shared_handler", "text_handler", "deep_handler"}


def test_later_sources_override_earlier(write):
    """Later imports beat earlier ones; handlers/ files (by name order) beat imports."""
    for source in ("first", "second"):
        write(
            f"{source}.py",
            f"def same_handler(event):\n    event.response.body = '{source}'\n\n\n"
            f"def {source}_only_handler(event):\n    event.response.body = '{source} only'\n",
        )
    text = (
        "import: [./first, ./second]\napi:\n  events:\n"
        "    - name: same\n      policies: [same_handler]\n"
        "    - name: first\n      policies: [first_only_handler]\n"
    )
    service = Service.load(write("config.yaml", text))
    assert answer(service, "same").body == "second"
    assert answer(service, "first").body == "first only"

    write("handlers/a.py", "def same_handler(event):\n    event.response.body = 'a.py'\n")
    write("handlers/b.py", "def same_handler(event):\n    event.response.body = 'b.py'\n")
    service = Service.load(write("config.yaml", text))
    assert answer(service, "same").body == "b.py"
    assert answer(service, "first").body == "first only"


def test_imports_override_standard_handlers(write):
    """A module may replace a standard handler by defining one of the same name."""
    write(
        "custom.py",
        "def setResponseHandler(event, *params):\n    event.response.body = 'custom'\n",
    )
    service = chain(write, "setResponseHandler: [200, standard]", extra="import: [./custom]\n")
    assert answer(service, "e").body == "custom"


def test_node_package_names_load_unchanged(write):
    """Importing the Node handler packages works and their handlers are the standard ones."""
    text = (
        "import:\n  - configurapi-handler-http\n  - configurapi-handler-json\n"
        "  - configurapi-handler-ws\napi:\n  events:\n"
        "    - name: e\n      policies:\n"
        "        - setJsonResponseHandler: [201, {ok: true}]\n"
    )
    response = answer(Service.load(write("config.yaml", text)), "e")
    assert isinstance(response, JsonResponse)
    assert (response.status_code, response.body) == (201, {"ok": True})


def test_standard_handlers_need_no_import(write):
    """The standard handlers exist without any import, under Node and snake_case names."""
    names = [
        "setResponseHandler",
        "setResponseBodyHandler",
        "setResponseHeaderHandler",
        "setResponseStatusCodeHandler",
        "setJsonResponseHandler",
        "validateJsonRequestHandler",
        "set_response_handler",
        "set_response_body_handler",
        "set_response_header_handler",
        "set_response_status_code_handler",
        "set_json_response_handler",
        "validate_json_request_handler",
    ]
    assert missing_handlers(write, names) == set()


# --- calling handlers -------------------------------------------------------------------

CALLS = """\
import asyncio

from tornado_ws_runner import COMPLETE, CONTINUE, Response


def add_handler(event, a, b):
    event.response = Response(a + b)


async def async_add_handler(event, a, b):
    await asyncio.sleep(0)
    event.response = Response(a + b)


def args_handler(event, *args):
    event.response = Response({"event": event.name, "args": list(args)})


def append_handler(event, label):
    body = event.response.body
    items = body if isinstance(body, list) else [body] if body else []
    event.response = Response([*items, label])


def complete_handler(event):
    return COMPLETE


async def async_complete_handler(event):
    return COMPLETE


def continue_handler(event, value):
    return {"continue": CONTINUE, "true": True, "text": "complete", "zero": 0}[value]
"""


def test_sync_handler_gets_event_and_parameters(write):
    """A sync handler is called as handler(event, *parameters)."""
    write("handlers/calls.py", CALLS)
    assert answer(chain(write, "add_handler: [2, 3]"), "e").body == 5
    assert answer(chain(write, "args_handler: [x, 1]", name="named"), "named").body == {
        "event": "named",
        "args": ["x", 1],
    }


def test_async_handler_is_awaited(write):
    """An async handler is awaited before the chain goes on."""
    write("handlers/calls.py", CALLS)
    service = chain(write, "async_add_handler: [a, b]", "append_handler: [c]")
    assert answer(service, "e").body == ["ab", "c"]


@pytest.mark.parametrize("handler", ["complete_handler", "async_complete_handler"])
def test_complete_ends_the_chain(write, handler):
    """Returning COMPLETE skips the rest of the event's policies."""
    write("handlers/calls.py", CALLS)
    service = chain(write, "append_handler: [a]", handler, "append_handler: [b]")
    assert answer(service, "e").body == ["a"]


@pytest.mark.parametrize("value", ["continue", "true", "text", "zero"])
def test_other_return_values_continue(write, value):
    """Any return value but COMPLETE (CONTINUE, True, 'complete', 0) continues the chain."""
    write("handlers/calls.py", CALLS)
    service = chain(
        write, "append_handler: [a]", f"continue_handler: ['{value}']", "append_handler: [b]"
    )
    assert answer(service, "e").body == ["a", "b"]


def test_complete_ends_only_its_own_chain(write):
    """COMPLETE in on_before_request ends that chain; the route and on_success still run."""
    write("handlers/calls.py", CALLS)
    text = """\
        api:
          events:
            - name: on_before_request
              policies: [{append_handler: before}, complete_handler, {append_handler: skipped}]
            - name: e
              policies: [{append_handler: route}, complete_handler]
            - name: on_success
              policies: [{append_handler: success}]
        """
    service = Service.load(write("config.yaml", text))
    assert answer(service, "e").body == ["before", "route", "success"]


# --- standard handlers ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["setResponseHandler", "set_response_handler"])
def test_set_response_handler(write, name):
    """setResponseHandler sets status, resolved body and resolved headers."""
    service = chain(write, f'{name}: ["201", "Hi $(who)!", {{x-who: $(who)}}]')
    response = answer(service, "e", params={"who": "bob"})
    assert type(response) is Response
    assert (response.status_code, response.body, response.headers) == (
        201,
        "Hi bob!",
        {"x-who": "bob"},
    )


def test_set_response_handler_defaults(write):
    """setResponseHandler with no parameters gives 200 and an empty body."""
    response = answer(chain(write, "setResponseHandler"), "e")
    assert (response.status_code, response.body, response.headers) == (200, "", {})


def test_set_response_handler_resolves_params(write):
    """The documented example: `Hi $(who)!` greets the event's param."""
    service = chain(write, 'setResponseHandler: [200, "Hi $(who)!"]', name="hello")
    response = answer(service, "hello", params={"who": "bob"})
    assert (response.status_code, response.body) == (200, "Hi bob!")


@pytest.mark.parametrize("name", ["setResponseBodyHandler", "set_response_body_handler"])
def test_set_response_body_handler(write, name):
    """setResponseBodyHandler changes only the body, resolved, keeping status and headers."""
    service = chain(
        write,
        "setResponseStatusCodeHandler: [202]",
        "setResponseHeaderHandler: [x-a, b]",
        f"{name}: [{{from: $($event.payload.from)}}]",
    )
    response = answer(service, "e", payload={"from": "alice"})
    assert (response.status_code, response.body, response.headers) == (
        202,
        {"from": "alice"},
        {"x-a": "b"},
    )


@pytest.mark.parametrize("name", ["setResponseHeaderHandler", "set_response_header_handler"])
def test_set_response_header_handler(write, name):
    """setResponseHeaderHandler sets one header to a resolved value."""
    response = answer(chain(write, f"{name}: [x-env, $($env.ENGINE_HEADER)]"), "e")
    assert response.headers == {"x-env": "$($env.ENGINE_HEADER)"}


def test_set_response_header_from_environment(write, monkeypatch):
    """A header value may come from an environment variable."""
    monkeypatch.setenv("ENGINE_HEADER", "from-env")
    response = answer(chain(write, "setResponseHeaderHandler: [x-env, $($env.ENGINE_HEADER)]"), "e")
    assert response.headers == {"x-env": "from-env"}


@pytest.mark.parametrize(
    "name", ["setResponseStatusCodeHandler", "set_response_status_code_handler"]
)
def test_set_response_status_code_handler(write, name):
    """setResponseStatusCodeHandler sets the status (a string is converted)."""
    response = answer(chain(write, "setResponseBodyHandler: [kept]", f'{name}: "204"'), "e")
    assert (response.status_code, response.body) == (204, "kept")


@pytest.mark.parametrize("name", ["setJsonResponseHandler", "set_json_response_handler"])
def test_set_json_response_handler(write, name):
    """setJsonResponseHandler sets a JsonResponse with the JSON content type."""
    service = chain(write, f"{name}: [200, {{pong: Hi $($event.payload.from)}}, {{x-a: b}}]")
    response = answer(service, "e", payload={"from": "alice"})
    assert isinstance(response, JsonResponse)
    assert response.body == {"pong": "Hi alice"}
    assert response.headers == {"Content-Type": "application/json", "x-a": "b"}


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name"],
}


@pytest.fixture
def validating(write: Any) -> Service:
    """Events checked against schemas/<event name>.json beside config.yaml."""
    write("schemas/person.json", json.dumps(SCHEMA))
    write("schemas/optional.json", json.dumps(SCHEMA))
    write("schemas/optional_scalar.json", json.dumps(SCHEMA))
    write("schemas/snake.json", json.dumps(SCHEMA))
    write("schemas/broken.json", '{"type": "nonsense"}')
    text = """\
        api:
          events:
            - name: person
              policies: [validateJsonRequestHandler, {setResponseHandler: [200, valid]}]
            - name: optional
              policies:
                - validateJsonRequestHandler: [[emptyPayload]]
                - setResponseHandler: [200, valid]
            - name: optional_scalar
              policies:
                - validateJsonRequestHandler: emptyPayload
                - setResponseHandler: [200, valid]
            - name: snake
              policies: [validate_json_request_handler, {setResponseHandler: [200, valid]}]
            - name: no_schema
              policies: [validateJsonRequestHandler]
            - name: broken
              policies: [validateJsonRequestHandler]
            - name: catchall
              policies: [validateJsonRequestHandler]
        """
    return Service.load(write("config.yaml", text))


@pytest.mark.parametrize("name", ["person", "snake"])
def test_validate_valid_payload_passes(validating, name):
    """A payload matching the schema goes on down the chain."""
    assert answer(validating, name, payload={"name": "bob", "age": 3}).body == "valid"


def test_validate_invalid_payload_is_400(validating):
    """A payload breaking the schema is 400 with every problem in the details."""
    response = answer(validating, "person", payload={"age": -1})
    assert response.body == {
        "statusCode": 400,
        "message": "Bad Request.",
        "details": "(root): 'name' is a required property; age: -1 is less than the minimum of 0",
    }


def test_validate_string_payload_is_parsed(validating):
    """A payload given as JSON text is parsed before validation."""
    assert answer(validating, "person", payload='{"name": "bob"}').body == "valid"
    assert answer(validating, "person", payload='{"age": 1}').status_code == 400


def test_validate_payload_that_is_not_json_is_400(validating):
    """A text payload that is not JSON is 400."""
    response = answer(validating, "person", payload="{nope")
    assert response.status_code == 400
    assert response.body["details"].startswith("The payload is not JSON: ")


@pytest.mark.parametrize("payload", [None, ""])
def test_validate_missing_payload_is_400(validating, payload):
    """No payload is 400 unless the handler was given 'emptyPayload'."""
    response = answer(validating, "person", payload=payload)
    assert response.body == {
        "statusCode": 400,
        "message": "Bad Request.",
        "details": "The request has no payload.",
    }


@pytest.mark.parametrize("name", ["optional", "optional_scalar"])
def test_validate_empty_payload_allowed(validating, name):
    """['emptyPayload'] (or the scalar 'emptyPayload') lets an event without payload through."""
    assert answer(validating, name).body == "valid"
    assert answer(validating, name, payload={"age": 1}).status_code == 400


def test_validate_missing_schema_is_500(validating):
    """An event with no schema file answers 500."""
    response = answer(validating, "no_schema", payload={"a": 1})
    assert response.body == {
        "statusCode": 500,
        "message": "Internal Server Error",
        "details": "no JSON schema for 'no_schema'",
    }


def test_validate_bad_schema_is_500(validating):
    """A schema file that is not a valid JSON schema answers 500."""
    response = answer(validating, "broken", payload={"a": 1})
    assert response.status_code == 500
    assert response.body["details"].startswith("bad JSON schema for 'broken': ")


def test_validate_schema_name_cannot_leave_schemas_folder(validating, write):
    """An event name like '../outside' does not read a .json file outside schemas/."""
    write("outside.json", json.dumps(SCHEMA))
    response = answer(validating, "../outside", payload={"name": "bob"})
    assert response.body == {
        "statusCode": 500,
        "message": "Internal Server Error",
        "details": "no JSON schema for '../outside'",
    }
