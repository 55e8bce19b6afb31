"""The event object, `$(...)` resolution, the response classes and Identity."""

from __future__ import annotations

import copy
import json
import uuid

import pytest

from tornado_ws_runner import (
    ErrorResponse,
    Event,
    Identity,
    JsonResponse,
    ListResponse,
    Request,
    Response,
    StreamResponse,
)

# --- the event --------------------------------------------------------------------------


def test_event_fields():
    """An event carries id, name, method, params, payload, request, a fresh response."""
    request = Request("getData", "POST", params={"id": 1}, payload={"foo": "bar"})
    event = Event(request)
    assert uuid.UUID(event.id).version == 4
    assert event.correlation_id == event.correlationId == event.id
    assert (event.name, event.method, event.version) == ("getData", "post", None)
    assert event.params == {"id": 1}
    assert event.payload == {"foo": "bar"}
    assert event.request is request
    assert event.identity is None
    assert type(event.response) is Response
    assert (event.response.status_code, event.response.body, event.response.headers) == (
        200,
        "",
        {},
    )


def test_event_ids_are_unique_and_responses_fresh():
    """Two events get different ids and different response objects."""
    first, second = Event(Request("a")), Event(Request("a"))
    assert first.id != second.id
    assert first.response is not second.response


def test_event_identity_given():
    """An identity passed to the event is its identity."""
    identity = Identity("bob")
    assert Event(Request("a"), identity).identity is identity


def test_params_are_a_new_dict_with_query_keys():
    """params holds request params plus query keys, in a dict of its own."""
    request = Request("a", params={"id": 1}, query={"q": "x", "id": "2"})
    event = Event(request)
    assert event.params == {"id": "2", "q": "x"}
    event.params["new"] = True
    assert request.params == {"id": 1}


def test_correlation_id_from_query_first():
    """The query's `correlationid` wins over the header."""
    request = Request("a", query={"correlationid": "q-1"}, headers={"correlation-id": "h-1"})
    assert Event(request).correlation_id == "q-1"


def test_correlation_id_from_header():
    """Without the query key, the `correlation-id` header is the correlation id."""
    assert Event(Request("a", headers={"correlation-id": "h-1"})).correlationId == "h-1"


@pytest.mark.parametrize(
    ("method", "path", "name", "version", "params"),
    [
        ("GET", "/users", "list_users", None, {}),
        ("GET", "/users/someone", "get_user", None, {"user": "someone"}),
        ("GET", "/users/someone/phones", "list_user_phones", None, {"user": "someone"}),
        (
            "GET",
            "/v1/users/bob/phones/1",
            "get_v1_user_phone",
            "v1",
            {"user": "bob", "phone": "1"},
        ),
        ("POST", "/v1/users/", "post_v1_user", "v1", {}),
        (
            "DELETE",
            "/users/someone/phones/123",
            "delete_user_phone",
            None,
            {"user": "someone", "phone": "123"},
        ),
        ("POST", "/@connections/abc", "post_@connection", None, {"@connection": "abc"}),
    ],
)
def test_http_path_rules(method, path, name, version, params):
    """Without a name, the event name and params come from the HTTP method and path."""
    event = Event(Request(method=method, path=path))
    assert (event.name, event.version) == (name, version)
    assert event.params == params


def test_http_path_copies_query_into_params():
    """Query keys join the ids taken from the path."""
    event = Event(Request(method="GET", path="/users/someone/phones", query={"q1": "v1"}))
    assert event.name == "list_user_phones"
    assert event.params == {"user": "someone", "q1": "v1"}


def test_named_request_ignores_path():
    """A request with a name keeps it; the path is not parsed."""
    event = Event(Request("hello", "GET", path="/users/bob"))
    assert (event.name, event.params) == ("hello", {})


# --- resolve ----------------------------------------------------------------------------


@pytest.fixture
def event(monkeypatch: pytest.MonkeyPatch) -> Event:
    monkeypatch.setenv("ENGINE_TEST_VALUE", "from-env")
    monkeypatch.delenv("ENGINE_TEST_UNSET", raising=False)
    return Event(
        Request(
            "e",
            params={
                "who": "bob",
                "n": 5,
                "obj": {"a": {"b": [10, 20]}},
                "none": None,
                "flag": True,
            },
            payload={"a": {"b": ["first", "second"]}, "from": "alice", "empty": None},
        )
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Hi $(who)!", "Hi bob!"),
        ("$(who)", "bob"),
        ("$(n)", 5),
        ("n=$(n)", "n=5"),
        ("$(obj.a.b)", [10, 20]),
        ("$(obj.a.b[1])", 20),
        ("$(obj)", {"a": {"b": [10, 20]}}),
        ("obj=$(obj.a)", 'obj={"b":[10,20]}'),
        ("$($env.ENGINE_TEST_VALUE)", "from-env"),
        ("$($event.payload.a)", {"b": ["first", "second"]}),
        ("$($event.payload.a.b[0])", "first"),
        ("Hi $($event.payload.from)", "Hi alice"),
        ("$(missing)", "$(missing)"),
        ("x $(missing) y $(who)", "x $(missing) y bob"),
        ("$(none)", "$(none)"),
        ("$(obj.a.zzz)", "$(obj.a.zzz)"),
        ("$(obj.a.b[7])", "$(obj.a.b[7])"),
        ("$($env.ENGINE_TEST_UNSET)", "$($env.ENGINE_TEST_UNSET)"),
        ("$($event.payload.nope)", "$($event.payload.nope)"),
        ("flag=$(flag)", "flag=true"),
        ("empty=$($event.payload.empty)", "empty=null"),
        ("$($event.payload.empty)", None),
        ("no reference", "no reference"),
        (42, 42),
        (None, None),
    ],
)
def test_resolve_values(event, value, expected):
    """Each reference form resolves; a whole-string reference keeps its type; text is JSON-like."""
    assert event.resolve(value) == expected


def test_resolve_whole_payload(event):
    """`$($event.payload)` is the payload itself."""
    assert event.resolve("$($event.payload)") is event.payload


def test_resolve_payload_missing_is_left_as_written():
    """`$($event.payload)` without a payload stays as written."""
    assert Event(Request("e")).resolve("$($event.payload)") == "$($event.payload)"


def test_resolve_recurses_into_lists_and_dicts(event):
    """Strings inside nested lists and dicts are resolved; keys are not."""
    value = {"$(who)": ["$(who)", {"n": "$(n)"}], "t": ("$(who)",)}
    assert event.resolve(value) == {"$(who)": ["bob", {"n": 5}], "t": ["bob"]}


def test_resolve_never_mutates_its_input(event):
    """resolve returns new containers; the input is unchanged."""
    value = {"body": ["Hi $(who)", {"n": "$(n)"}]}
    before = copy.deepcopy(value)
    resolved = event.resolve(value)
    assert value == before
    assert resolved is not value and resolved["body"] is not value["body"]


# --- responses --------------------------------------------------------------------------


def test_response_defaults_and_status_code_alias():
    """Response() is 200 with an empty body and headers; statusCode is an alias."""
    response = Response()
    assert (response.body, response.status_code, response.headers) == ("", 200, {})
    response.statusCode = 201
    assert response.status_code == response.statusCode == 201
    assert Response({"a": 1}, 202, {"x": "y"}).headers == {"x": "y"}


def test_error_response_from_string():
    """ErrorResponse has the JSON content type and a {statusCode, message, details} body."""
    error = ErrorResponse("Not Found.", 404, "no such user")
    assert isinstance(error, Exception) and isinstance(error, Response)
    assert error.headers == {"Content-Type": "application/json"}
    assert error.body == {"statusCode": 404, "message": "Not Found.", "details": "no such user"}
    assert (error.message, error.details, error.error) == ("Not Found.", "no such user", None)
    assert str(error) == "404 Not Found."


def test_error_response_defaults():
    """ErrorResponse() is a 500 Internal Server Error with empty details."""
    assert ErrorResponse().body == {
        "statusCode": 500,
        "message": "Internal Server Error",
        "details": "",
    }


def test_error_response_from_exception():
    """Built from an exception it takes its message and keeps it; no traceback by itself."""
    cause = ValueError("bad value")
    error = ErrorResponse(cause, 422)
    assert error.body == {"statusCode": 422, "message": "bad value", "details": ""}
    assert error.error is cause
    assert ErrorResponse(KeyError()).message == "KeyError"


def test_error_response_from_error_response():
    """Built from another ErrorResponse it copies status, message and details."""
    original = ErrorResponse("Conflict.", 409, "already there")
    copied = ErrorResponse(original)
    assert copied.body == original.body
    assert copied.status_code == 409


def test_error_response_with_details_updates_body():
    """with_details keeps the body in step."""
    error = ErrorResponse("Bad Request.", 400).with_details("field x")
    assert error.body["details"] == "field x"


def test_error_response_extra_headers():
    """Extra headers join the JSON content type."""
    error = ErrorResponse("No.", 403, headers={"x-why": "policy"})
    assert error.headers == {"Content-Type": "application/json", "x-why": "policy"}


def test_json_response():
    """JsonResponse sets the JSON content type and keeps other headers."""
    response = JsonResponse({"a": 1}, 201, {"x": "y"})
    assert (response.body, response.status_code) == ({"a": 1}, 201)
    assert response.headers == {"Content-Type": "application/json", "x": "y"}
    assert json.dumps(JsonResponse().body) == "null"


def test_list_response_content_range():
    """ListResponse says which page it holds in Content-Range."""
    page = ListResponse(["a", "b", "c"], 10, 100)
    assert page.body == ["a", "b", "c"]
    assert page.headers["Content-Range"] == "items 10-12/100"
    assert page.headers["Content-Type"] == "application/json"
    assert ListResponse(iter(["x", "y"])).headers["Content-Range"] == "items 0-1/2"


def test_stream_response_holds_its_iterable():
    """StreamResponse keeps the iterable as its body, unconsumed."""
    chunks = iter([1, 2])
    response = StreamResponse(chunks, 200, {"x": "y"})
    assert response.body is chunks
    assert (response.status_code, response.headers) == (200, {"x": "y"})
    assert list(response.body) == [1, 2]


# --- identity ---------------------------------------------------------------------------


@pytest.fixture
def identity() -> Identity:
    return Identity(
        "user-1",
        [
            {"type": "role", "value": "admin", "scope": "org-1"},
            {"type": "role", "value": "reader", "scope": ["org-1", "org-2"]},
            {"type": "email_verified", "value": True},
        ],
    )


def test_identity_fields(identity):
    """Identity keeps id and claims; issuer, name and email start unset."""
    assert identity.id == "user-1"
    assert len(identity.claims) == 3
    assert (identity.issuer, identity.name, identity.email) == (None, None, None)


def test_has_claim_single_values(identity):
    """has_claim matches type, value and scope exactly."""
    assert identity.has_claim("role", "admin", "org-1")
    assert not identity.has_claim("role", "admin", "org-2")
    assert not identity.has_claim("role", "owner", "org-1")
    assert identity.has_claim("email_verified", True)
    assert not identity.has_claim("role", "admin")


def test_has_claim_lists_of_values_and_scopes(identity):
    """Any of several values in any of several scopes is enough."""
    assert identity.hasClaim("role", ["owner", "admin"], "org-1")
    assert identity.hasClaim("role", ["owner", "admin"], ["org-9", "org-1"])
    assert not identity.hasClaim("role", ["owner", "admin"], ["org-2", "org-9"])


def test_has_claim_claim_with_scope_list(identity):
    """A claim whose scope is a list holds in each of its scopes."""
    assert identity.has_claim("role", "reader", "org-1")
    assert identity.has_claim("role", "reader", "org-2")
    assert not identity.has_claim("role", "reader", "org-3")


def test_get_claim_and_get_claims(identity):
    """get_claim returns the matching claim; get_claims every claim in that scope."""
    claim = identity.get_claim("role", "reader", "org-2")
    assert claim == {"type": "role", "value": "reader", "scope": ["org-1", "org-2"]}
    assert identity.getClaim("role", "reader", "org-3") is None
    assert identity.get_claims("role", "reader", "org-1") == [claim]
    assert identity.getClaims("role", "admin", "org-2") == []


def test_identity_claims_can_be_replaced(identity):
    """Assigning claims re-indexes them."""
    identity.claims = [{"type": "role", "value": "owner", "scope": "org-3"}]
    assert identity.has_claim("role", "owner", "org-3")
    assert not identity.has_claim("role", "admin", "org-1")
