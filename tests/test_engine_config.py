"""config.yaml: what loads, how each key and policy form is read, and every error message."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tornado_ws_runner import ConfigError, Event, Request, Response, Service
from tornado_ws_runner.engine import load_api_config

MODULES = Path(__file__).parent / "fixtures" / "engine" / "modules"

PARAMS_HANDLER = """\
from tornado_ws_runner import Response


def params_handler(event, *params):
    event.response = Response(list(params))
"""


@pytest.fixture
def modules(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Puts the fixture modules on sys.path, for imports by dotted name."""
    monkeypatch.syspath_prepend(str(MODULES))
    return MODULES


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the environment name of the shell that runs it."""
    monkeypatch.delenv("TORNADO_WS_RUNNER_ENV", raising=False)
    monkeypatch.delenv("NODE_ENV", raising=False)


def answer(service: Service, name: str, **fields: Any) -> Response:
    return asyncio.run(service.process(Event(Request(name, **fields))))


def load_error(path: Path) -> tuple[str, ConfigError]:
    """Loads ``path`` expecting a ConfigError; returns the file name it reports and it."""
    with pytest.raises(ConfigError) as caught:
        Service.load(path)
    return str(path.resolve()), caught.value


def single_error(write: Any, text: str) -> str:
    file, error = load_error(write("config.yaml", text))
    assert len(error.issues) == 1, str(error)
    assert error.file == file
    return str(error).replace(file, "FILE")


# --- what loads -------------------------------------------------------------------------


def test_import_dotted_module_name(write, modules):
    """A dotted module name in `import:` is imported and its handlers are usable."""
    path = write(
        "config.yaml",
        """\
        import:
          - engine_fixture_pkg.dotted
        api:
          events:
            - name: hello
              policies:
                - dotted_handler
        """,
    )
    assert answer(Service.load(path), "hello").body == "from engine_fixture_pkg.dotted"


def test_import_relative_module_file_resolved_against_config_folder(write, tmp_path, monkeypatch):
    """`./name` loads name.py from the config's folder, whatever the working directory."""
    write("app/local.py", "def local_handler(event):\n    event.response.body = 'local'\n")
    path = write(
        "app/config.yaml",
        """\
        import:
          - ./local
        api:
          events:
            - name: hello
              policies:
                - local_handler
        """,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert answer(Service.load(path), "hello").body == "local"


def test_import_relative_path_with_py_suffix_and_subfolder(write):
    """`./lib/tools.py` (a file in a subfolder, suffix given) is loaded too."""
    write("lib/tools.py", "def tools_handler(event):\n    event.response.body = 'tools'\n")
    path = write(
        "config.yaml",
        """\
        import: [./lib/tools.py]
        api:
          events:
            - name: hello
              policies: [tools_handler]
        """,
    )
    assert answer(Service.load(path), "hello").body == "tools"


def test_import_relative_package_folder(write):
    """`./pkg` loads a package folder's __init__.py, whose relative imports work."""
    write("pkg/impl.py", "def pkg_handler(event):\n    event.response.body = 'package'\n")
    write("pkg/__init__.py", "from .impl import pkg_handler\n\n__all__ = ['pkg_handler']\n")
    path = write(
        "config.yaml",
        """\
        import: [./pkg]
        api:
          events:
            - name: hello
              policies: [pkg_handler]
        """,
    )
    assert answer(Service.load(path), "hello").body == "package"


def test_event_keys_are_read(write):
    """name, policies, logLevel and when are read into the event's spec."""
    path = write(
        "config.yaml",
        """\
        api:
          events:
            - name: hello
              logLevel: INFO
              policies:
                - setResponseHandler: [200, hi]
                  logLevel: error
            - name: quiet
              policies: [setResponseHandler]
        """,
    )
    config = load_api_config(path)
    hello, quiet = config.events
    assert (hello.name, hello.log_level, hello.when) == ("hello", "info", None)
    assert [(p.handler, p.parameters, p.log_level) for p in hello.policies] == [
        ("setResponseHandler", (200, "hi"), "error")
    ]
    assert quiet.log_level == "trace"
    assert config.directory == path.resolve().parent


def test_every_policy_form(write):
    """Bare string, list, scalar, `parameters:` and logLevel forms pass the right parameters."""
    write("handlers/params.py", PARAMS_HANDLER)
    path = write(
        "config.yaml",
        """\
        api:
          events:
            - name: bare
              policies:
                - params_handler
            - name: listed
              policies:
                - params_handler: [1, two, {three: 3}]
            - name: scalar
              policies:
                - params_handler: only
            - name: scalar_list_value
              policies:
                - params_handler: [[a, b]]
            - name: parameters_key
              policies:
                - params_handler:
                  parameters: [x, y]
            - name: null_without_parameters
              policies:
                - params_handler: null
            - name: with_log_level
              policies:
                - params_handler: [p]
                  logLevel: error
        """,
    )
    service = Service.load(path)
    bodies = {
        name: answer(service, name).body
        for name in (
            "bare",
            "listed",
            "scalar",
            "scalar_list_value",
            "parameters_key",
            "null_without_parameters",
            "with_log_level",
        )
    }
    assert bodies == {
        "bare": [],
        "listed": [1, "two", {"three": 3}],
        "scalar": ["only"],
        "scalar_list_value": [["a", "b"]],
        "parameters_key": ["x", "y"],
        "null_without_parameters": [],
        "with_log_level": ["p"],
    }


WHEN_CONFIG = """\
api:
  events:
    - name: hello
      when: production
      policies:
        - setResponseHandler: [200, production]
    - name: hello
      when: staging
      policies:
        - setResponseHandler: [200, staging]
    - name: always
      policies:
        - setResponseHandler: [200, always]
"""


def test_when_takes_the_environment_from_node_env(write, monkeypatch):
    """With only NODE_ENV set, it names the environment for `when:`."""
    monkeypatch.setenv("NODE_ENV", "production")
    service = Service.load(write("config.yaml", WHEN_CONFIG))
    assert answer(service, "hello").body == "production"
    assert answer(service, "always").body == "always"


def test_when_prefers_tornado_ws_runner_env(write, monkeypatch):
    """TORNADO_WS_RUNNER_ENV wins over NODE_ENV."""
    monkeypatch.setenv("NODE_ENV", "production")
    monkeypatch.setenv("TORNADO_WS_RUNNER_ENV", "staging")
    service = Service.load(write("config.yaml", WHEN_CONFIG))
    assert answer(service, "hello").body == "staging"


def test_when_without_environment_drops_the_event(write):
    """With no environment name, events with `when:` do not exist; the others do."""
    service = Service.load(write("config.yaml", WHEN_CONFIG))
    assert not service.has_event("hello")
    assert answer(service, "hello").status_code == 501
    assert answer(service, "always").body == "always"


def test_when_environment_argument_overrides_variables(write, monkeypatch):
    """Service.load(environment=...) beats the environment variables."""
    monkeypatch.setenv("TORNADO_WS_RUNNER_ENV", "staging")
    service = Service.load(write("config.yaml", WHEN_CONFIG), environment="production")
    assert answer(service, "hello").body == "production"


def test_disabled_event_handlers_are_not_looked_up(write):
    """An event dropped by `when:` may name a handler that does not exist here."""
    path = write(
        "config.yaml",
        """\
        api:
          events:
            - name: cloud_only
              when: cloud
              policies: [cloudOnlyHandler]
        """,
    )
    assert not Service.load(path).has_event("cloud_only")


# --- error messages ---------------------------------------------------------------------


def test_error_missing_file(tmp_path):
    """A missing file is reported with its full path."""
    file, error = load_error(tmp_path / "nope.yaml")
    assert str(error) == f"{file}: file not found"


def test_error_invalid_yaml_names_the_line(write):
    """Invalid YAML is reported with the parser's problem and its line."""
    text = """\
        api:
          events:
            - name: x
              policies:
                - a: b: c
        """
    assert single_error(write, text) == "FILE:5: invalid YAML: mapping values are not allowed here"


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", ""])
def test_error_not_a_mapping(write, text):
    """A file that is not a mapping (a list, a scalar, empty) is refused."""
    assert single_error(write, text) == "FILE: the file must hold a mapping with an 'api' key"


def test_error_missing_api(write):
    """A file without `api` is refused, naming the key."""
    assert single_error(write, "import: []\n") == "FILE: api: missing: the file needs 'api.events'"


def test_error_missing_events(write):
    """`api` without `events` is refused at the line of `api`."""
    text = "# comment\napi:\n  other: 1\n"
    assert single_error(write, text) == "FILE:2: api.events: missing or not a list of events"


def test_error_events_not_a_list(write):
    """`api.events` that is a mapping is refused at its own line."""
    text = "api:\n  events:\n    hello: {}\n"
    assert single_error(write, text) == "FILE:2: api.events: missing or not a list of events"


def test_error_event_not_a_mapping(write):
    """An event that is a bare string is refused, naming its index and line."""
    text = """\
        api:
          events:
            - name: ok
              policies: [setResponseHandler]
            - hello
        """
    assert single_error(write, text) == (
        "FILE:5: api.events[1]: an event must be a mapping with 'name' and 'policies'"
    )


def test_error_missing_name(write):
    """An event without a name is refused at the event's line."""
    text = """\
        api:
          events:
            - policies: [setResponseHandler]
        """
    assert single_error(write, text) == (
        "FILE:3: api.events[0].name: missing: every event needs a name"
    )


def test_error_name_not_a_string(write):
    """A name that is not a string is refused at the name's line."""
    text = """\
        api:
          events:
            - policies: [setResponseHandler]
              name: [a, b]
        """
    assert single_error(write, text) == (
        "FILE:4: api.events[0].name: must be a non-empty string, not ['a', 'b']"
    )


def test_error_unknown_top_level_key(write):
    """An unknown top-level key is refused with the closest known key."""
    text = """\
        imports: [x]
        api:
          events: []
        """
    assert single_error(write, text) == "FILE:1: imports: unknown key (did you mean 'import'?)"


def test_error_unknown_event_key_and_missing_policies(write):
    """`polices` is an unknown key (did you mean 'policies'?) and policies are then missing."""
    file, error = load_error(
        write(
            "config.yaml",
            """\
            api:
              events:
                - name: hello
                  polices:
                    - setResponseHandler
            """,
        )
    )
    assert str(error).splitlines() == [
        f"{file}:4: api.events[0].polices: unknown key (did you mean 'policies'?)",
        f"{file}:3: api.events[0].policies: missing: every event needs a list of policies",
    ]


def test_error_unknown_key_without_suggestion(write):
    """An unknown key far from every known key gets no suggestion."""
    text = """\
        api:
          events:
            - name: hello
              policies: [setResponseHandler]
              zzz: 1
        """
    assert single_error(write, text) == "FILE:5: api.events[0].zzz: unknown key"


def test_error_bad_event_log_level(write):
    """A misspelt event logLevel lists the levels and suggests the closest."""
    text = """\
        api:
          events:
            - name: hello
              logLevel: tarce
              policies: [setResponseHandler]
        """
    assert single_error(write, text) == (
        "FILE:4: api.events[0].logLevel: 'tarce' is not one of "
        "none, error, info, trace, debug (did you mean 'trace'?)"
    )


def test_error_bad_policy_log_level(write):
    """A policy's bad logLevel names the policy's key path and line."""
    text = """\
        api:
          events:
            - name: hello
              policies:
                - setResponseHandler: [200]
                  logLevel: loud
        """
    assert single_error(write, text) == (
        "FILE:6: api.events[0].policies[0].logLevel: 'loud' is not one of "
        "none, error, info, trace, debug"
    )


def test_error_policies_not_a_list(write):
    """`policies` given as a mapping is refused."""
    text = """\
        api:
          events:
            - name: hello
              policies:
                setResponseHandler: [200]
        """
    assert single_error(write, text) == (
        "FILE:4: api.events[0].policies: must be a list of policies"
    )


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            "42",
            "a policy is a handler name or a mapping 'handlerName: [parameters]', not 42",
        ),
        (
            "{}",
            "a policy is a handler name or a mapping 'handlerName: [parameters]', not {}",
        ),
        (
            "{a: [1], b: [2]}",
            "a policy mapping names exactly one handler, found ['a', 'b']",
        ),
        (
            "{parameters: [1]}",
            "a policy mapping names exactly one handler, found []",
        ),
    ],
)
def test_error_bad_policy_shape(write, policy, message):
    """A policy that is neither a name nor a one-handler mapping is refused."""
    text = f"api:\n  events:\n    - name: hello\n      policies:\n        - {policy}\n"
    assert single_error(write, text) == f"FILE:5: api.events[0].policies[0]: {message}"


def test_error_parameters_given_both_ways(write):
    """Parameters under the handler name and under `parameters:` at once are refused."""
    text = """\
        api:
          events:
            - name: hello
              policies:
                - setResponseHandler: [200]
                  parameters: [201]
        """
    assert single_error(write, text) == (
        "FILE:6: api.events[0].policies[0].parameters: give the parameters either under "
        "'setResponseHandler' or under 'parameters', not both"
    )


def test_error_parameters_not_a_list(write):
    """`parameters:` that is not a list is refused."""
    text = """\
        api:
          events:
            - name: hello
              policies:
                - setResponseHandler:
                  parameters: 200
        """
    assert single_error(write, text) == (
        "FILE:6: api.events[0].policies[0].parameters: must be a list"
    )


def test_error_duplicate_event_names(write):
    """A second event of the same name is refused, pointing at the first."""
    text = """\
        api:
          events:
            - name: hello
              policies: [setResponseHandler]
            - name: hello
              policies: [setResponseHandler]
        """
    assert single_error(write, text) == (
        "FILE:5: api.events[1].name: 'hello' is already defined at api.events[0]"
    )


def test_error_bad_when(write):
    """A `when` that is not a plain name is refused."""
    text = """\
        api:
          events:
            - name: hello
              when: [a]
              policies: [setResponseHandler]
        """
    assert single_error(write, text) == (
        "FILE:4: api.events[0].when: must be an environment name, not ['a']"
    )


def test_error_import_not_a_list(write):
    """`import` given as one string is refused."""
    text = """\
        import: configurapi-handler-json
        api:
          events: []
        """
    assert single_error(write, text) == "FILE:1: import: must be a list of module names or ./paths"


def test_error_import_entry_not_a_string(write):
    """An `import` entry that is not a string is refused at its line."""
    text = """\
        import:
          - configurapi-handler-json
          - 5
        api:
          events: []
        """
    assert single_error(write, text) == (
        "FILE:3: import[1]: must be a module name or a ./path, not 5"
    )


def test_error_unknown_handler_with_suggestion(write):
    """An unknown handler names the policy's key path and line and suggests a handler."""
    text = """\
        api:
          events:
            - name: one
              policies: [setResponseHandler]
            - name: two
              policies: [setResponseHandler]
            - name: three
              policies:
                - setResponseHandlr: [200]
        """
    assert single_error(write, text) == (
        "FILE:9: api.events[2].policies[0]: no handler named 'setResponseHandlr' "
        "(did you mean 'setResponseHandler'?)"
    )


def test_error_unknown_handler_without_suggestion(write):
    """An unknown handler far from every name gets no suggestion."""
    text = "api:\n  events:\n    - name: a\n      policies: [zzz]\n"
    assert single_error(write, text) == (
        "FILE:4: api.events[0].policies[0]: no handler named 'zzz'"
    )


def test_error_import_that_raises(write, tmp_path):
    """A module that raises on import is reported with the exception and its place."""
    write("broken.py", "x = 1\nraise RuntimeError('broken on purpose')\n")
    path = write(
        "config.yaml",
        """\
        import:
          - configurapi-handler-json
          - ./broken
        api:
          events: []
        """,
    )
    broken = tmp_path.resolve() / "broken"
    assert single_error(write, path.read_text()) == (
        f"FILE:3: import[1]: cannot import '{broken}': "
        "RuntimeError: broken on purpose (broken.py:2)"
    )


def test_error_import_of_missing_module(write):
    """A dotted name that does not exist is reported without import machinery noise."""
    text = "import: [no_such_module_for_engine_tests]\napi:\n  events: []\n"
    assert single_error(write, text) == (
        "FILE:1: import[0]: cannot import 'no_such_module_for_engine_tests': "
        "ModuleNotFoundError: No module named 'no_such_module_for_engine_tests'"
    )


def test_error_import_failing_inside_the_module_names_its_line(write):
    """A module whose own import fails is reported at the module's line."""
    write("uses_missing.py", "'''Needs a missing module.'''\nimport no_such_dependency_xyz\n")
    text = "import: [./uses_missing]\napi:\n  events: []\n"
    message = single_error(write, text)
    assert message.startswith("FILE:1: import[0]: cannot import '")
    assert message.endswith(
        "ModuleNotFoundError: No module named 'no_such_dependency_xyz' (uses_missing.py:2)"
    )


def test_error_handlers_folder_file_that_raises(write):
    """A file of handlers/ that raises is reported under its handlers/ name."""
    write("handlers/bad.py", "raise ValueError('nope')\n")
    assert single_error(write, "api:\n  events: []\n") == (
        "FILE: handlers/bad.py: cannot load: ValueError: nope (bad.py:1)"
    )


def test_several_errors_in_one_config_error(write):
    """Every mistake of a file is reported at once, each on its own line, in file order."""
    file, error = load_error(
        write(
            "config.yaml",
            """\
            imports: []
            api:
              events:
                - name: a
                  logLevel: tarce
                  policies: [setResponseHandler]
                - name: a
                  policies: [setResponseHandler]
                - policies:
                    - 42
                - nonsense
            """,
        )
    )
    assert [(issue.key, issue.line) for issue in error.issues] == [
        ("imports", 1),
        ("api.events[0].logLevel", 5),
        ("api.events[1].name", 7),
        ("api.events[2].name", 9),
        ("api.events[2].policies[0]", 10),
        ("api.events[3]", 11),
    ]
    assert str(error).splitlines() == [issue.render(file) for issue in error.issues]
    assert str(error).splitlines()[2] == (
        f"{file}:7: api.events[1].name: 'a' is already defined at api.events[0]"
    )


def test_a_failing_import_is_named_once_and_the_handlers_it_left_missing_in_one_line(write):
    """A handler source that fails: its error, then one line for the policies whose
    handlers were not found (no did-you-mean), at the first of them."""
    write("broken.py", "raise RuntimeError('x')\n")
    file, error = load_error(
        write(
            "config.yaml",
            """\
            import: [./broken]
            api:
              events:
                - name: a
                  policies: [missingOneHandler]
                - name: b
                  policies:
                    - setResponseHandler
                    - missingTwoHandler: [1]
            """,
        )
    )
    assert [(issue.key, issue.line) for issue in error.issues] == [
        ("import[0]", 1),
        ("api.events", 5),
    ]
    assert "RuntimeError: x (broken.py:1)" in error.issues[0].message
    summary = error.issues[1].message
    assert "2 policies" in summary and "missingOneHandler, missingTwoHandler" in summary
    assert "did you mean" not in summary
    assert error.file == file


SHARED_CONFIG = """\
api:
  events:
    - name: hello
      policies: [greetHandler]
"""


def test_handler_files_import_a_shared_module_of_their_folder_and_reload_sees_it(write):
    """handlers/_shared.py (a leading _: not loaded as a handler file itself) is importable
    from a handler file; after it changes, a reload serves the new code."""
    write("handlers/_shared.py", "GREETING = 'hello'\n")
    write(
        "handlers/greet.py",
        "import _shared\nfrom tornado_ws_runner import Response\n\n\n"
        "def greetHandler(event):\n    event.response = Response(_shared.GREETING)\n",
    )
    path = write("config.yaml", SHARED_CONFIG)
    assert answer(Service.load(path), "hello").body == "hello"
    write("handlers/_shared.py", "GREETING = 'hello again'\n")
    assert answer(Service.load(path, reload=True), "hello").body == "hello again"


def test_a_missing_handler_file_is_named_without_python_internals(write):
    """import: [./gone.py] that does not exist: its key, the file, the reason; no frame of
    Python's own modules (pathlib) as its place."""
    _, error = load_error(write("config.yaml", "import: [./gone.py]\n" + SHARED_CONFIG))
    first = str(error.issues[0])
    assert "import[0]" in first and "gone.py" in first and "FileNotFoundError" in first
    assert "pathlib" not in str(error) and ".py:" not in first.split("gone.py", 1)[1]
