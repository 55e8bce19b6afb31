"""Phase one of loading config.yaml: validate the YAML into typed, frozen specs.

Every mistake is collected with its key path and YAML line and raised together as one
``ConfigError``, so a developer fixes the whole file in one pass. Handlers are not
looked up here; ``service.build`` does that once, in phase two.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, ConfigIssue

__all__ = [
    "ENVIRONMENT_VARIABLES",
    "LOG_LEVELS",
    "ApiConfig",
    "EventSpec",
    "ImportSpec",
    "PolicySpec",
    "environment_name",
    "load_api_config",
    "read_yaml",
    "suggest",
]

#: The Configurapi log levels, least to most verbose (Node ranks ``debug`` above ``trace``).
LOG_LEVELS = ("none", "error", "info", "trace", "debug")
#: Where the environment name for ``when:`` comes from, first match wins.
ENVIRONMENT_VARIABLES = ("TORNADO_WS_RUNNER_ENV", "NODE_ENV")
_TOP_KEYS = ("import", "api")
_EVENT_KEYS = ("name", "policies", "logLevel", "when")
_POLICY_OPTION_KEYS = ("parameters", "logLevel")


@dataclass(frozen=True)
class ImportSpec:
    """A module to take handlers from: a dotted name, or a file path made absolute."""

    target: str
    is_path: bool
    key: str
    line: int | None


@dataclass(frozen=True)
class PolicySpec:
    handler: str
    parameters: tuple[Any, ...]
    log_level: str | None
    key: str
    line: int | None


@dataclass(frozen=True)
class EventSpec:
    name: str
    policies: tuple[PolicySpec, ...]
    log_level: str
    when: str | None
    key: str
    line: int | None


@dataclass(frozen=True)
class ApiConfig:
    """A validated config.yaml: only the events enabled for this environment."""

    path: Path
    imports: tuple[ImportSpec, ...]
    events: tuple[EventSpec, ...]

    @property
    def directory(self) -> Path:
        return self.path.parent


def environment_name() -> str | None:
    for variable in ENVIRONMENT_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    return None


def suggest(word: str, choices: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or nothing."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def read_yaml(path: Path) -> tuple[Any, dict[str, int]]:
    """Parses a YAML file safely; returns the data and the line of every key path."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [ConfigIssue("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError(str(path), [ConfigIssue("", f"cannot read: {reason}")]) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(str(path), [ConfigIssue("", f"invalid YAML: {problem}", line)]) from None
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    if node is not None:
        _record_lines(node, "", lines)
    return data, lines


def _record_lines(node: yaml.Node, key: str, lines: dict[str, int]) -> None:
    lines[key] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = f"{key}.{key_node.value}" if key else str(key_node.value)
            lines[child] = key_node.start_mark.line + 1
            _record_lines(value_node, child, lines)
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, f"{key}[{index}]", lines)


class _Checker:
    """Collects issues for one file, each with the YAML line of its key."""

    def __init__(self, lines: dict[str, int]) -> None:
        self.lines = lines
        self.issues: list[ConfigIssue] = []

    def line(self, key: str) -> int | None:
        """The line of ``key``, else of its nearest parent (a missing key has none)."""
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[: max(key.rfind("."), key.rfind("["), 0)]
        return None

    def fail(self, key: str, message: str) -> None:
        self.issues.append(ConfigIssue(key, message, self.line(key)))

    def unknown_keys(self, mapping: dict[Any, Any], known: tuple[str, ...], key: str) -> None:
        for name in mapping:
            if name not in known:
                where = f"{key}.{name}" if key else str(name)
                self.fail(where, f"unknown key{suggest(name, known)}")


def load_api_config(path: str | os.PathLike[str], environment: str | None = None) -> ApiConfig:
    """Reads and validates config.yaml; ``environment`` defaults to ``environment_name()``."""
    file = Path(path).resolve()
    data, lines = read_yaml(file)
    check = _Checker(lines)
    env = environment if environment is not None else environment_name()
    if not isinstance(data, dict):
        check.fail("", "the file must hold a mapping with an 'api' key")
        raise ConfigError(str(file), check.issues)
    check.unknown_keys(data, _TOP_KEYS, "")
    imports = _imports(data.get("import"), file.parent, check)
    events: list[EventSpec] = []
    api = data.get("api")
    if api is None:
        check.fail("api", "missing: the file needs 'api.events'")
    elif not isinstance(api, dict) or not isinstance(api.get("events"), list):
        check.fail("api.events", "missing or not a list of events")
    else:
        check.unknown_keys(api, ("events",), "api")
        seen: dict[str, str] = {}
        for index, raw in enumerate(api["events"]):
            spec = _event(raw, f"api.events[{index}]", check)
            if spec is None or (spec.when is not None and spec.when != env):
                continue
            if spec.name in seen:
                check.fail(
                    f"{spec.key}.name", f"'{spec.name}' is already defined at {seen[spec.name]}"
                )
                continue
            seen[spec.name] = spec.key
            events.append(spec)
    if check.issues:
        raise ConfigError(str(file), check.issues)
    return ApiConfig(file, tuple(imports), tuple(events))


def _imports(raw: Any, directory: Path, check: _Checker) -> list[ImportSpec]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        check.fail("import", "must be a list of module names or ./paths")
        return []
    result = []
    for index, entry in enumerate(raw):
        key = f"import[{index}]"
        if not isinstance(entry, str) or not entry.strip():
            check.fail(key, f"must be a module name or a ./path, not {entry!r}")
        elif entry.startswith("."):
            result.append(
                ImportSpec(str((directory / entry).resolve()), True, key, check.lines.get(key))
            )
        else:
            result.append(ImportSpec(entry, False, key, check.lines.get(key)))
    return result


def _log_level(raw: Any, key: str, check: _Checker) -> str | None:
    if raw is None:
        return None
    level = str(raw).lower()
    if level not in LOG_LEVELS:
        check.fail(
            key, f"'{raw}' is not one of {', '.join(LOG_LEVELS)}{suggest(level, LOG_LEVELS)}"
        )
        return None
    return level


def _event(raw: Any, key: str, check: _Checker) -> EventSpec | None:
    if not isinstance(raw, dict):
        check.fail(key, "an event must be a mapping with 'name' and 'policies'")
        return None
    check.unknown_keys(raw, _EVENT_KEYS, key)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        check.fail(
            f"{key}.name",
            "missing: every event needs a name"
            if name is None
            else f"must be a non-empty string, not {name!r}",
        )
    when = raw.get("when")
    if when is not None and not isinstance(when, (str, int, float)):
        check.fail(f"{key}.when", f"must be an environment name, not {when!r}")
    level = _log_level(raw.get("logLevel"), f"{key}.logLevel", check) or "trace"
    policies = raw.get("policies")
    specs: list[PolicySpec] = []
    if not isinstance(policies, list):
        check.fail(
            f"{key}.policies",
            "missing: every event needs a list of policies"
            if policies is None
            else "must be a list of policies",
        )
    else:
        for index, policy in enumerate(policies):
            spec = _policy(policy, f"{key}.policies[{index}]", check)
            if spec is not None:
                specs.append(spec)
    if not isinstance(name, str) or not name:
        return None
    return EventSpec(
        name, tuple(specs), level, None if when is None else str(when), key, check.lines.get(key)
    )


def _policy(raw: Any, key: str, check: _Checker) -> PolicySpec | None:
    line = check.lines.get(key)
    if isinstance(raw, str) and raw:
        return PolicySpec(raw, (), None, key, line)
    if not isinstance(raw, dict) or not raw:
        check.fail(
            key, f"a policy is a handler name or a mapping 'handlerName: [parameters]', not {raw!r}"
        )
        return None
    names = [k for k in raw if k not in _POLICY_OPTION_KEYS]
    if len(names) != 1 or not isinstance(names[0], str):
        check.fail(key, f"a policy mapping names exactly one handler, found {names!r}")
        return None
    handler = names[0]
    value = raw[handler]
    if value is None:
        value = raw.get("parameters", [])
        if not isinstance(value, list):
            check.fail(f"{key}.parameters", "must be a list")
            return None
    elif "parameters" in raw:
        check.fail(
            f"{key}.parameters",
            f"give the parameters either under '{handler}' or under 'parameters', not both",
        )
        return None
    parameters = tuple(value) if isinstance(value, list) else (value,)
    level = _log_level(raw.get("logLevel"), f"{key}.logLevel", check)
    return PolicySpec(handler, parameters, level, key, line)
