"""The ``tornado-ws-runner`` command.

Exit status: 0 after a clean stop (or a good ``--check``), 2 for a configuration
error (one line per mistake, naming the file and the key), 1 for any other failure to
start (a port in use names the port). Expected failures print no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .._version import __version__
from ..engine import Service
from ..engine.config import read_yaml
from ..errors import ConfigError, ConfigErrors, ConfigIssue, StartupError
from ..log import configure, runner_log
from ..management.app import read_management_token
from ..runner import WsRunner, load_service, run_on_loop
from ..settings import RunnerSettings, load_settings, tls_context
from .pidfile import PidFile
from .systemd import Notifier

__all__ = ["DEFAULT_CONF", "main"]

DEFAULT_CONF = "/etc/tornado-ws-runner/runner.yaml"
_LEVELS = ("trace", "debug", "info", "warning", "error", "critical")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tornado-ws-runner",
        description="Serve a Configurapi config.yaml as a WebSocket API (Tornado).",
    )
    p.add_argument(
        "--conf",
        metavar="PATH",
        help=f"runner.yaml (default {DEFAULT_CONF}; with --api and no --conf, every default)",
    )
    p.add_argument("--api", metavar="PATH", help="the config.yaml to serve (overrides 'api')")
    p.add_argument("--port", type=int, help="WebSocket port (overrides listen.port)")
    p.add_argument("--management-port", type=int, help="overrides management.port")
    p.add_argument("--log-level", choices=_LEVELS, help="overrides logging.level")
    p.add_argument(
        "--check",
        action="store_true",
        help="validate runner.yaml, the API config and its handlers, then exit (0 good, 2 bad)",
    )
    p.add_argument(
        "--daemon", action="store_true", help="detach from the terminal (needs --pidfile)"
    )
    p.add_argument("--pidfile", metavar="PATH", help="pidfile to write and lock")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _settings(args: argparse.Namespace) -> RunnerSettings:
    if args.conf is None:
        # --api alone serves with every default; otherwise the default runner.yaml.
        settings = RunnerSettings() if args.api else load_settings(DEFAULT_CONF)
    else:
        settings = load_settings(args.conf)
    issues = []
    for flag, value in (("--port", args.port), ("--management-port", args.management_port)):
        if value is not None and not 0 <= value <= 65535:
            issues.append(ConfigIssue(flag, f"{value} is not a port (0-65535)"))
    if issues:
        raise ConfigError("command line", issues)
    if args.api:
        settings.api = os.path.abspath(args.api)
    if args.port is not None:
        settings.listen.port = args.port
    if args.management_port is not None:
        settings.management.port = args.management_port
    if args.log_level:
        settings.logging.level = args.log_level
    return settings


def _settings_with_the_api_checked_too(args: argparse.Namespace) -> RunnerSettings:
    """The settings; when runner.yaml is wrong, config.yaml's mistakes are reported with
    its own (config.yaml as runner.yaml's ``api`` names it, or --api)."""
    try:
        return _settings(args)
    except ConfigError as runner_error:
        api = _api_named(args)
        if api is None or any(issue.key == "api" for issue in runner_error.issues):
            raise  # no config.yaml to read, or its mistake is runner.yaml's already
        try:
            load_service(RunnerSettings(api=api))
        except ConfigError as api_error:
            raise ConfigErrors([runner_error, api_error]) from None
        raise


def _api_named(args: argparse.Namespace) -> str | None:
    """config.yaml's path from --api or runner.yaml's ``api``, read on its own."""
    if args.api:
        return os.path.abspath(args.api)
    conf = Path(args.conf or DEFAULT_CONF)
    try:
        data, _ = read_yaml(conf)
    except ConfigError:
        return None
    api = data.get("api", RunnerSettings.api) if isinstance(data, dict) else RunnerSettings.api
    return str(conf.resolve().parent / api) if isinstance(api, str) else None


def _check(settings: RunnerSettings) -> Service:
    """Loads everything a start would load, without binding or running anything."""
    if settings.tls.enabled:
        tls_context(settings)
    if settings.management.enabled:
        read_management_token(settings)
    return load_service(settings)


def _daemonize(runner: WsRunner, settings: RunnerSettings, pidfile: PidFile) -> None:
    import daemon  # python-daemon: only needed in this mode

    context = daemon.DaemonContext(
        pidfile=pidfile,
        files_preserve=[s.fileno() for s in runner.sockets()],
        working_directory="/",
        umask=0o022,
    )
    context.open()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings_with_the_api_checked_too(args)
        if args.daemon and not args.pidfile:
            raise ConfigError("command line", [ConfigIssue("--daemon", "needs --pidfile PATH")])
        service = _check(settings)
        if args.check:
            what = settings.source or "defaults"
            print(f"{what}: ok ({len(service.routes)} events from {settings.api})")
            return 0
        log = settings.logging
        if args.daemon and not (log.file or log.syslog):
            log.syslog = True
        if log.syslog and not log.file and not os.path.exists(log.syslog_address):
            where = "--daemon sends them to syslog" if args.daemon else "logging.syslog is on"
            issue = ConfigIssue(
                "logging",
                f"{where}, but {log.syslog_address} does not exist: set logging.file",
            )
            raise ConfigError(settings.source or "runner.yaml", [issue])
        runner = WsRunner(
            settings,
            service,
            reread=lambda: _settings(args),
            relog=lambda new: configure(
                new.level, new.format, new.file, new.syslog, new.syslog_address
            ),
        )
        # Taken from this directory: a daemon's working directory is /.
        pidfile = PidFile(os.path.abspath(args.pidfile)) if args.pidfile else None
        if pidfile is not None and (owner := pidfile.owner()):
            raise StartupError(f"already running as pid {owner} (pidfile {pidfile.path})")
        runner.bind()
        if args.daemon and pidfile is not None:
            _daemonize(runner, settings, pidfile)
        elif pidfile is not None:
            pidfile.acquire()
        configure(log.level, log.format, log.file, log.syslog, log.syslog_address)
        if pidfile is not None and pidfile.replaced:
            runner_log.warning(
                "replaced a stale pidfile %s (pid %s)", pidfile.path, pidfile.replaced
            )
        notifier = Notifier()
        try:
            run_on_loop(runner.serve(notifier), settings.event_loop)
        finally:
            notifier.close()
            if pidfile is not None:
                pidfile.release()
        return 0
    except (ConfigError, ConfigErrors) as exc:
        print(exc, file=sys.stderr)
        return 2
    except StartupError as exc:
        # Before configure() the logger has no handler: logging too would print the
        # message twice (Python's last-resort handler writes to stderr as well).
        if runner_log.handlers:
            runner_log.error("%s", exc)
        if not any(type(h) is logging.StreamHandler for h in runner_log.handlers):
            print(f"tornado-ws-runner: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
