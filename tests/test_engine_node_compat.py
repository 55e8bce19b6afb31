"""A config.yaml written for the Node Configurapi engine loads and answers as documented."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from tornado_ws_runner import Event, JsonResponse, Request, Response, Service
from tornado_ws_runner.log import TRACE

NODE_APP = Path(__file__).parent / "fixtures" / "engine" / "node_app"

REFERENCE_EXAMPLE = Path(__file__).parent / "fixtures" / "engine" / "reference_example"


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORNADO_WS_RUNNER_ENV", raising=False)
    monkeypatch.delenv("NODE_ENV", raising=False)


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    """A copy of the reference doc's example config.yaml with its ./local_module."""
    app = tmp_path / "reference"
    shutil.copytree(REFERENCE_EXAMPLE, app, ignore=shutil.ignore_patterns("__pycache__"))
    return app / "config.yaml"


@pytest.fixture
def node_app(tmp_path: Path) -> Path:
    """A copy of the fixture app (config.yaml, ./local_module, handlers/, schemas/)."""
    app = tmp_path / "app"
    shutil.copytree(NODE_APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    return app / "config.yaml"


def answer(service: Service, request: Request) -> Response:
    return asyncio.run(service.process(Event(request)))


def test_reference_example_in_production(reference, monkeypatch):
    """The reference doc's example answers `Hi <hello>!` and runs someHandler in production."""
    monkeypatch.setenv("NODE_ENV", "production")
    service = Service.load(reference)
    response = answer(service, Request("get_v1_hello", params={"hello": "world"}))
    assert (response.status_code, response.body) == (200, "Hi world!")
    assert response.headers == {"x-some": "handled"}


def test_reference_example_elsewhere_has_no_event(reference):
    """Outside production the example's only event does not exist: 501."""
    service = Service.load(reference)
    assert not service.has_event("get_v1_hello")
    assert answer(service, Request("get_v1_hello")).status_code == 501


def test_reference_example_traces(reference, monkeypatch, caplog):
    """The example's `logLevel: trace` event logs each policy and the event at TRACE."""
    monkeypatch.setenv("NODE_ENV", "production")
    caplog.set_level(TRACE, logger="tornado_ws_runner.engine")
    service = Service.load(reference)
    answer(service, Request("get_v1_hello", query={"hello": "you"}))
    messages = [r.getMessage().split(" - ")[2].split(" [")[0] for r in caplog.records]
    assert messages == [
        "Executed setResponseHandler policy",
        "Executed someHandler policy",
        "Handled get_v1_hello",
    ]


def test_node_app_hello_from_query(node_app, monkeypatch):
    """In production, get_v1_hello greets the `hello` query key and runs the local module."""
    monkeypatch.setenv("NODE_ENV", "production")
    service = Service.load(node_app)
    response = answer(service, Request("get_v1_hello", query={"hello": "query"}))
    assert (response.status_code, response.body) == (200, "Hi query!")
    assert response.headers == {"x-handled-by": "someHandler"}


def test_node_app_unknown_event_reaches_catchall(node_app):
    """An event without a route reaches catchall, which resolves its own parameters."""
    service = Service.load(node_app)
    response = answer(service, Request("get_v1_hello", params={"who": "bob"}))
    assert (response.status_code, response.body) == (404, "Nothing here for bob.")


def test_node_app_json_response_from_payload(node_app):
    """setJsonResponseHandler builds `{pong: Hi <payload.from>}` with the JSON content type."""
    service = Service.load(node_app)
    request = Request("ping", params={"server": "s1"}, payload={"from": "alice"})
    response = answer(service, request)
    assert isinstance(response, JsonResponse)
    assert (response.status_code, response.body) == (200, {"pong": "Hi alice"})
    assert response.headers == {"Content-Type": "application/json", "x-served-by": "s1"}


def test_node_app_validates_against_schema(node_app):
    """An HTTP-style POST /greetings is post_greeting: validated, then answered by handlers/."""
    service = Service.load(node_app)
    ok = answer(service, Request(method="POST", path="/greetings", payload={"name": "bob"}))
    assert isinstance(ok, JsonResponse)
    assert (ok.status_code, ok.body) == (201, {"greeting": "Hello, bob!"})
    bad = answer(service, Request("post_greeting", payload={"name": "bob", "x": 1}))
    assert bad.status_code == 400
    assert "Additional properties are not allowed" in bad.body["details"]
    empty = answer(service, Request("post_greeting"))
    assert (empty.status_code, empty.body["details"]) == (400, "The request has no payload.")


def test_node_app_empty_payload_option(node_app):
    """put_greeting's ['emptyPayload'] accepts no payload but still checks a given one."""
    service = Service.load(node_app)
    assert answer(service, Request("put_greeting")).status_code == 204
    assert answer(service, Request("put_greeting", payload={"name": "x"})).status_code == 204
    assert answer(service, Request("put_greeting", payload={"name": 1})).status_code == 400


def test_node_app_events(node_app, monkeypatch: Any):
    """All of the app's events exist in production, as named in the file."""
    monkeypatch.setenv("NODE_ENV", "production")
    service = Service.load(node_app)
    for name in ("get_v1_hello", "ping", "post_greeting", "put_greeting", "catchall"):
        assert service.has_event(name)
