"""runner.yaml: the daemon's own settings, as typed dataclasses with stated defaults.

Every limit and timeout the runner enforces is a field here, with its unit in the
name or the comment beside it. ``load_settings`` checks the whole file and reports every
mistake at once (unknown key with a did-you-mean, wrong type, out-of-range value,
missing file), each naming runner.yaml and the key.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import ssl
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine.config import read_yaml, suggest
from .errors import ConfigError, ConfigIssue

__all__ = [
    "Cluster",
    "Limits",
    "Listen",
    "LoggingSettings",
    "Management",
    "RunnerSettings",
    "Timeouts",
    "Tls",
    "changed_keys",
    "is_live",
    "load_settings",
    "tls_context",
]


@dataclass
class Listen:
    host: str = "0.0.0.0"
    port: int = 8000
    reuse_port: bool = False  # several daemons on one machine share the port (SO_REUSEPORT)


@dataclass
class Cluster:
    """Several daemons joined through Redis (CONTRACT section 7); on when redis_url is set."""

    redis_url: str | None = None  # redis://host:port/db or unix:///path/redis.sock
    key_prefix: str = "tornado-ws-runner:"  # several clusters may share one Redis
    node_id: str | None = None  # default: <hostname>-<pid>-<random>, new at every start
    heartbeat_interval: float = 2.0  # seconds between a node's heartbeats
    node_timeout: float = 10.0  # seconds without a heartbeat: the node is lost
    forward_timeout: float = 5.0  # seconds a management call forwarded to its node may take

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)


@dataclass
class Tls:
    """WSS on its own port, served only when both key and cert are given."""

    port: int = 8443
    host: str | None = None  # None: the same host as listen.host
    key: str | None = None
    cert: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.key and self.cert)


@dataclass
class Management:
    enabled: bool = True
    host: str = "127.0.0.1"  # loopback: only this machine may drive connections
    port: int = 9100
    token: str | None = None  # bearer token for every route but /healthz
    token_file: str | None = None  # or read the token from this file (first line)
    public_url: str | None = None  # base of postback-url; default http://<host>:<port>

    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"


@dataclass
class Limits:
    max_message_size: int = 1_048_576  # bytes; a larger frame closes with 1009
    max_connections: int = 10_000  # open and upgrading connections; beyond it HTTP 503
    max_in_flight: int = 16  # messages of one connection processed at once
    send_buffer: int = 1_048_576  # bytes queued for one client before senders wait
    allowed_origins: list[str] = field(default_factory=list)  # empty: any Origin
    max_header_size: int = 16_384  # bytes of a request's line and headers, on both ports
    max_upgrade_body: int = 4_096  # bytes an upgrade request may declare as its body


@dataclass
class Timeouts:
    handler: float = 30.0  # seconds an event's handlers may run before a 504 frame
    send: float = 30.0  # seconds a client may leave queued frames unread before it is dropped
    ping_interval: float = 20.0  # seconds between keep-alive pings; 0 turns pings off
    ping_timeout: float = 20.0  # seconds to wait for a pong before closing (0: the interval)
    drain: float = 10.0  # seconds events in flight may finish at shutdown
    blocking_warning: float = 0.1  # seconds a sync handler may block the loop unlogged; 0: off
    #: seconds a request's line and headers may take to arrive, on both ports, from the
    #: connection's start or from the previous answer on a kept-alive management
    #: connection (so also how long such a connection may idle); 0: an hour (Tornado's)
    request_headers: float = 10.0
    request_body: float = 30.0  # seconds a management request's body may take; 0: no limit


@dataclass
class LoggingSettings:
    level: str = "info"
    format: str = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    file: str | None = None  # log to this file instead of stderr
    syslog: bool = False  # log to the local syslog instead of stderr
    syslog_address: str = "/dev/log"  # the local syslog's socket
    access: bool = True  # one line per connection open/close and per event


@dataclass
class RunnerSettings:
    api: str = "config.yaml"  # the Configurapi config; relative to runner.yaml
    environment: str | None = None  # the name matched by `when:`; default from the env
    error_details: bool = False  # tracebacks in error bodies: for development only
    event_loop: str = "auto"  # asyncio, uvloop, or auto (uvloop when it is installed)
    listen: Listen = field(default_factory=Listen)
    tls: Tls = field(default_factory=Tls)
    management: Management = field(default_factory=Management)
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    cluster: Cluster = field(default_factory=Cluster)
    source: str | None = None  # the runner.yaml these came from, if any
    #: The line of each key path in that file, for errors found after loading (TLS).
    lines: dict[str, int] = field(default_factory=dict, repr=False)

    def management_token(self) -> str | None:
        return read_token(self.management)


#: What a running daemon takes up from runner.yaml on SIGHUP (a section: every key in
#: it); any other key changed needs a restart. The HTTP servers' own limits and the
#: sockets are made once, at start.
LIVE_KEYS = (
    "api",
    "environment",
    "error_details",
    "limits.max_message_size",
    "limits.max_connections",
    "limits.max_in_flight",
    "limits.send_buffer",
    "limits.allowed_origins",
    "timeouts.handler",
    "timeouts.send",
    "timeouts.ping_interval",
    "timeouts.ping_timeout",
    "timeouts.drain",
    "timeouts.blocking_warning",
    "logging",
)


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The key paths whose values differ between two settings (or two sections)."""
    changed: list[str] = []
    for f in dataclasses.fields(old):
        if f.name in _NOT_KEYS:
            continue
        path = f"{prefix}{f.name}"
        a, b = getattr(old, f.name), getattr(new, f.name)
        if dataclasses.is_dataclass(a):
            changed += changed_keys(a, b, f"{path}.")
        elif a != b:
            changed.append(path)
    return changed


def is_live(key: str) -> bool:
    return any(key == live or key.startswith(f"{live}.") for live in LIVE_KEYS)


def read_token(management: Management) -> str | None:
    if management.token:
        return management.token
    if management.token_file:
        lines = Path(management.token_file).read_text(encoding="utf-8").splitlines()
        return lines[0].strip() if lines else None
    return None


EVENT_LOOPS = ("auto", "asyncio", "uvloop")
_LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical")
_PORT_FIELDS = {"port"}
_NOT_KEYS = {"source", "lines"}  # RunnerSettings' fields that runner.yaml does not set
_AT_LEAST_ONE = {
    "max_message_size",
    "max_connections",
    "max_in_flight",
    "send_buffer",
    "max_header_size",
    "max_upgrade_body",
}
_PATH_FIELDS = {
    ("", "api"),
    ("tls", "key"),
    ("tls", "cert"),
    ("management", "token_file"),
    ("logging", "file"),
}


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return " or ".join(
            _type_name(a) if a is not type(None) else "null" for a in typing.get_args(tp)
        )
    if typing.get_origin(tp) is list:
        return "a list of strings"
    return names.get(tp, str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits ``tp`` (YAML's own types), and the value to keep."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return True, None
            if arg is not type(None):
                ok, kept = _coerce(value, arg)
                if ok:
                    return True, kept
        return False, value
    if typing.get_origin(tp) is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return ok, list(value) if ok else value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    return False, value


def _fill(
    target: Any, raw: Any, prefix: str, issues: list[ConfigIssue], lines: dict[str, int]
) -> None:
    fields = {f.name: f for f in dataclasses.fields(target) if f.name not in _NOT_KEYS}
    hints = typing.get_type_hints(type(target))
    if not isinstance(raw, dict):
        issues.append(ConfigIssue(prefix or "", "must be a mapping", lines.get(prefix)))
        return
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        line = lines.get(path)
        if key not in fields:
            issues.append(ConfigIssue(path, f"unknown key{suggest(key, fields)}", line))
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            _fill(getattr(target, key), value, path, issues, lines)
            continue
        ok, kept = _coerce(value, tp)
        if not ok:
            issues.append(ConfigIssue(path, f"must be {_type_name(tp)}, not {value!r}", line))
            continue
        problem = _range_problem(key, kept)
        if problem:
            issues.append(ConfigIssue(path, problem, line))
            continue
        setattr(target, key, kept)


def _range_problem(key: str, value: Any) -> str | None:
    if key == "event_loop" and value not in EVENT_LOOPS:
        return f"'{value}' is not one of {', '.join(EVENT_LOOPS)}{suggest(value, EVENT_LOOPS)}"
    if key == "event_loop" and value == "uvloop" and importlib.util.find_spec("uvloop") is None:
        return "uvloop is not installed (pip install uvloop)"
    if key in _PORT_FIELDS and not 0 <= value <= 65535:
        return f"{value} is not a port (0-65535)"
    if key == "level" and str(value).lower() not in _LOG_LEVELS:
        hint = suggest(str(value).lower(), _LOG_LEVELS)
        return f"'{value}' is not one of {', '.join(_LOG_LEVELS)}{hint}"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        return f"must not be negative, not {value}"
    if key in _AT_LEAST_ONE and value < 1:
        return "must be at least 1"
    return None


#: The folder systemd gives a unit's credentials (``LoadCredential=``); a path in
#: runner.yaml may start with it, so that secrets stay root-only files.
CREDENTIALS = "CREDENTIALS_DIRECTORY"
_CREDENTIAL_REFERENCES = (f"${{{CREDENTIALS}}}", f"${CREDENTIALS}")


def resolve_paths(settings: RunnerSettings, base: Path) -> None:
    """Makes the file paths of runner.yaml absolute, relative to its folder, with
    ``$CREDENTIALS_DIRECTORY`` replaced where it is set (a path naming it while it is
    not set is left as it is, for check_files to report)."""
    credentials = os.environ.get(CREDENTIALS)
    for section, name in _PATH_FIELDS:
        holder = getattr(settings, section) if section else settings
        value = getattr(holder, name)
        if not value:
            continue
        if any(ref in value for ref in _CREDENTIAL_REFERENCES):
            if not credentials:
                continue
            for ref in _CREDENTIAL_REFERENCES:
                value = value.replace(ref, credentials)
        setattr(holder, name, str((base / os.path.expanduser(value)).resolve()))


def check_files(settings: RunnerSettings, file: str, lines: dict[str, int]) -> list[ConfigIssue]:
    """The files runner.yaml names must be readable now, not at the first connection."""
    issues = []
    wanted = [
        ("api", settings.api),
        ("tls.key", settings.tls.key),
        ("tls.cert", settings.tls.cert),
        ("management.token_file", settings.management.token_file),
    ]
    for key, value in wanted:
        if not value:
            continue
        if any(ref in value for ref in _CREDENTIAL_REFERENCES):
            issues.append(
                ConfigIssue(
                    key,
                    f"{value} names ${CREDENTIALS}, which systemd sets only for a unit with "
                    "LoadCredential= (check it as the unit runs it: its ExecStartPre)",
                    lines.get(key),
                )
            )
            continue
        try:
            with open(value, "rb"):
                pass
        except OSError as exc:
            issues.append(ConfigIssue(key, f"cannot read {value}: {exc.strerror}", lines.get(key)))
    if bool(settings.tls.key) != bool(settings.tls.cert):
        issues.append(ConfigIssue("tls", "give both key and cert to serve WSS", lines.get("tls")))
    return issues


def load_settings(path: str | os.PathLike[str]) -> RunnerSettings:
    """Reads runner.yaml; relative paths in it are taken from its own folder."""
    file = Path(path).resolve()
    data, lines = read_yaml(file)
    settings = RunnerSettings(source=str(file), lines=lines)
    issues: list[ConfigIssue] = []
    if data is not None:
        _fill(settings, data, "", issues, lines)
    if not issues:
        resolve_paths(settings, file.parent)
        issues = check_files(settings, str(file), lines)
    if issues:
        raise ConfigError(str(file), issues)
    return settings


def tls_context(settings: RunnerSettings) -> ssl.SSLContext:
    """The server's TLS context; a certificate or key that does not load is a config
    error naming the one that is wrong (the certificate is read alone first)."""
    tls = settings.tls
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(tls.cert))
    except (OSError, ssl.SSLError) as exc:
        _tls_error(settings, "tls.cert", f"{tls.cert} is not a PEM certificate: {_reason(exc)}")
    try:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        reason = _reason(exc)
        if isinstance(exc, ssl.SSLError) and _looks_like_a_key(str(tls.key)):
            reason = f"it is not the key of {tls.cert} ({reason})"
        _tls_error(settings, "tls.key", f"cannot use {tls.key}: {reason}")
    return context


def _looks_like_a_key(path: str) -> bool:
    """A PEM private key, by its armour: what the ssl module cannot check on its own."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return "-----BEGIN" in text and "PRIVATE KEY-----" in text


def _reason(exc: OSError | ssl.SSLError) -> str:
    """What went wrong, without OpenSSL's source file and line."""
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or "unreadable").replace("_", " ").lower()
    return exc.strerror or str(exc)


def _tls_error(settings: RunnerSettings, key: str, message: str) -> typing.NoReturn:
    issue = ConfigIssue(key, message, settings.lines.get(key))
    raise ConfigError(settings.source or "runner.yaml", [issue]) from None
