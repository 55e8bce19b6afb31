"""The ``tornado-ws-runner`` command's exit codes and messages, run as a real process."""

from __future__ import annotations

import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import tornado
from procutil import SCRIPT, Spawner, clean_env, run_cli, write_runner
from wsutil import openssl_certificate

from tornado_ws_runner import __version__

#: A certificate and key (test.key beside it) that ship with Tornado's own tests.
TORNADO_TEST_CERT = Path(tornado.__file__).parent / "test" / "test.crt"


def test_console_script_is_installed() -> None:
    """The console script the other tests start exists beside the interpreter."""
    assert SCRIPT.is_file(), f"{SCRIPT} missing: install the package (pip install -e .)"


def test_version_prints_the_version() -> None:
    """--version prints the program name and the package version, exit 0."""
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tornado-ws-runner {__version__}"


def test_check_good_config(app: Path) -> None:
    """--check on a good runner.yaml + config.yaml + handlers exits 0 and says ok."""
    result = run_cli("--conf", str(app / "runner.yaml"), "--check")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert str(app / "runner.yaml") in result.stdout
    assert "Traceback" not in result.stderr


def test_check_good_tls(app: Path) -> None:
    """--check loads a good TLS key and certificate (Tornado's test pair) and exits 0."""
    shutil.copy(TORNADO_TEST_CERT, app / "server.crt")
    shutil.copy(TORNADO_TEST_CERT.with_suffix(".key"), app / "server.key")
    write_runner(app, "tls: {host: 127.0.0.1, port: 0, key: server.key, cert: server.crt}\n")
    result = run_cli("--conf", str(app / "runner.yaml"), "--check")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def _unknown_key(app: Path) -> tuple[list[str], list[str]]:
    write_runner(app, "limits: {max_in_flihgt: 4}\n")
    return [], ["runner.yaml:5:", "limits.max_in_flihgt", "unknown key", "did you mean"]


def _wrong_type(app: Path) -> tuple[list[str], list[str]]:
    (app / "runner.yaml").write_text(
        "api: config.yaml\nlisten: {host: 127.0.0.1, port: eighty}\n", encoding="utf-8"
    )
    return [], ["runner.yaml:2:", "listen.port", "must be an integer", "eighty"]


def _missing_runner_yaml(app: Path) -> tuple[list[str], list[str]]:
    (app / "runner.yaml").unlink()
    return [], ["runner.yaml", "not found"]


def _missing_api_file(app: Path) -> tuple[list[str], list[str]]:
    (app / "config.yaml").unlink()
    return [], ["runner.yaml:1:", "api", str(app / "config.yaml")]


def _tls_key_not_a_key(app: Path) -> tuple[list[str], list[str]]:
    (app / "server.key").write_text("this is not a private key\n", encoding="utf-8")
    shutil.copy(TORNADO_TEST_CERT, app / "server.crt")  # a good certificate
    write_runner(app, "tls: {host: 127.0.0.1, port: 0, key: server.key, cert: server.crt}\n")
    return [], ["runner.yaml", "tls.key", str(app / "server.key")]


def _port_out_of_range_in_file(app: Path) -> tuple[list[str], list[str]]:
    (app / "runner.yaml").write_text(
        "api: config.yaml\nlisten: {host: 127.0.0.1, port: 70000}\n", encoding="utf-8"
    )
    return [], ["runner.yaml:2:", "listen.port", "70000", "not a port"]


def _port_out_of_range_flag(app: Path) -> tuple[list[str], list[str]]:
    return ["--port", "70000"], ["command line", "--port", "70000", "not a port"]


def _unknown_handler(app: Path) -> tuple[list[str], list[str]]:
    config = app / "config.yaml"
    config.write_text(
        config.read_text(encoding="utf-8").replace("- echoHandler", "- echoHandlr"),
        encoding="utf-8",
    )
    return [], ["config.yaml:", "api.events[1].policies[0]", "echoHandlr", "echoHandler"]


def _invalid_yaml(app: Path) -> tuple[list[str], list[str]]:
    (app / "config.yaml").write_text("api:\n  events: [\n", encoding="utf-8")
    return [], [f"{app / 'config.yaml'}:3:", "invalid YAML"]


def _unknown_event_loop(app: Path) -> tuple[list[str], list[str]]:
    write_runner(app, "event_loop: uvlop\n")
    return [], ["runner.yaml:5:", "event_loop", "'uvlop' is not one of", "did you mean 'uvloop'"]


BAD_CONFIGS: dict[str, Callable[[Path], tuple[list[str], list[str]]]] = {
    "unknown key": _unknown_key,
    "wrong type": _wrong_type,
    "missing runner.yaml": _missing_runner_yaml,
    "missing api file": _missing_api_file,
    "tls key not a key": _tls_key_not_a_key,
    "port out of range in the file": _port_out_of_range_in_file,
    "port out of range on the command line": _port_out_of_range_flag,
    "unknown handler in config.yaml": _unknown_handler,
    "invalid YAML in config.yaml": _invalid_yaml,
    "unknown event loop": _unknown_event_loop,
}


@pytest.mark.parametrize("make", BAD_CONFIGS.values(), ids=list(BAD_CONFIGS))
def test_check_bad_config(app: Path, make: Callable[[Path], tuple[list[str], list[str]]]) -> None:
    """--check on a bad config exits 2 with one traceback-free line naming file and key."""
    extra_args, wanted = make(app)
    result = run_cli("--conf", str(app / "runner.yaml"), "--check", *extra_args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for part in wanted:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    assert result.stdout == ""


def test_check_reports_every_mistake_on_its_own_line(app: Path) -> None:
    """Two mistakes in runner.yaml give two lines, each naming the file, line and key."""
    (app / "runner.yaml").write_text(
        "api: config.yaml\n"
        "listen: {host: 127.0.0.1, port: 0}\n"
        "managment: {port: 0}\n"
        "timeouts: {drain: soon}\n",
        encoding="utf-8",
    )
    result = run_cli("--conf", str(app / "runner.yaml"), "--check")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    runner = str(app / "runner.yaml")
    assert lines[0].startswith(f"{runner}:3: managment: unknown key"), lines[0]
    assert "did you mean 'management'" in lines[0]
    assert lines[1].startswith(f"{runner}:4: timeouts.drain: must be"), lines[1]


def test_start_with_a_bad_config_exits_2(app: Path) -> None:
    """Without --check a bad config also exits 2 with the same one-line message."""
    _unknown_handler(app)
    result = run_cli("--conf", str(app / "runner.yaml"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "echoHandlr" in result.stderr


@pytest.mark.parametrize("flag", ["--port", "--management-port"])
def test_port_in_use_exits_1_naming_the_port(app: Path, flag: str) -> None:
    """A port already bound by someone else: exit 1, one message naming it, no traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--conf", str(app / "runner.yaml"), flag, str(port))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if str(port) in line]
    assert len(lines) == 1, result.stderr
    assert f"port {port} is in use" in lines[0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_port_flags_override_the_file(app: Path, spawn: Spawner) -> None:
    """--port and --management-port replace the ports of runner.yaml (the log names them)."""
    listen, management = _free_port(), _free_port()
    daemon = spawn.start(
        "--conf",
        str(app / "runner.yaml"),
        "--port",
        str(listen),
        "--management-port",
        str(management),
        "--log-level",
        "info",
    )
    assert daemon.wait_serving() == {"listen": listen, "management": management}
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert "Traceback" not in daemon.output


def test_a_secret_from_systemds_credentials_directory(app: Path, tmp_path: Path) -> None:
    """token_file may name $CREDENTIALS_DIRECTORY (LoadCredential=): read from there when
    systemd set it; without it, --check says so in one line naming the key."""
    write_runner(
        app,
        'management: {host: 127.0.0.1, port: 0, token_file: "${CREDENTIALS_DIRECTORY}/token"}\n',
    )
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "token").write_text("s3cret\n", encoding="utf-8")
    given = run_cli(
        "--conf",
        str(app / "runner.yaml"),
        "--check",
        env=clean_env(CREDENTIALS_DIRECTORY=str(credentials)),
    )
    assert given.returncode == 0, given.stderr
    missing = run_cli("--conf", str(app / "runner.yaml"), "--check")
    assert missing.returncode == 2
    lines = missing.stderr.strip().splitlines()
    assert any(
        "management.token_file" in line and "CREDENTIALS_DIRECTORY" in line for line in lines
    )
    assert "Traceback" not in missing.stderr


def test_api_alone_is_served_with_every_default(app: Path, tmp_path: Path) -> None:
    """--api without --conf (and no /etc runner.yaml needed): the defaults, checked."""
    result = run_cli("--api", str(app / "config.yaml"), "--check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("defaults: ok")


@pytest.mark.parametrize("daemon", [False, True])
def test_logs_to_a_missing_syslog_are_refused_in_one_line(
    app: Path, tmp_path: Path, daemon: bool
) -> None:
    """syslog on, or --daemon without logging.file (it then logs to syslog), while the
    syslog socket does not exist: exit 2 naming the key, instead of logs lost silently."""
    missing = tmp_path / "no-syslog-here"
    extra = (
        f"syslog: true, syslog_address: {missing}" if not daemon else f"syslog_address: {missing}"
    )
    write_runner(app, f"logging: {{{extra}}}\n")
    flags = ["--daemon", "--pidfile", str(tmp_path / "twr.pid")] if daemon else []
    result = run_cli("--conf", str(app / "runner.yaml"), *flags)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "logging" in line and str(missing) in line and "logging.file" in line
    assert not (tmp_path / "twr.pid").exists()


def test_runner_yaml_and_config_yaml_mistakes_are_reported_together(app: Path) -> None:
    """Both files wrong: one run names the mistakes of each (exit 2, no traceback)."""
    write_runner(app, "limits: {max_in_flihgt: 4}\n")
    config = app / "config.yaml"
    config.write_text(
        config.read_text(encoding="utf-8") + "\nbogus_top_level: 1\n", encoding="utf-8"
    )
    result = run_cli("--conf", str(app / "runner.yaml"), "--check")
    assert result.returncode == 2
    assert "runner.yaml:" in result.stderr and "limits.max_in_flihgt" in result.stderr
    assert "config.yaml:" in result.stderr and "bogus_top_level" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_garbage_certificate_is_blamed_on_tls_cert_with_its_line(app: Path) -> None:
    """A certificate file that is no PEM certificate: tls.cert named, with its line in
    runner.yaml, and no OpenSSL source file in the message."""
    (app / "server.crt").write_text("not a certificate\n", encoding="utf-8")
    shutil.copy(TORNADO_TEST_CERT.with_suffix(".key"), app / "server.key")
    write_runner(app, "tls:\n  host: 127.0.0.1\n  port: 0\n  key: server.key\n  cert: server.crt\n")
    result = run_cli("--conf", str(app / "runner.yaml"), "--check")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "runner.yaml:9: tls.cert:" in line and "_ssl.c" not in line


def test_a_key_of_another_certificate_is_blamed_on_tls_key(app: Path, tmp_path: Path) -> None:
    """A good certificate with a good key that is not its own: tls.key names the mismatch."""
    _, other_cert = openssl_certificate(tmp_path)
    shutil.copy(other_cert, app / "server.crt")
    shutil.copy(TORNADO_TEST_CERT.with_suffix(".key"), app / "server.key")
    write_runner(app, "tls: {host: 127.0.0.1, port: 0, key: server.key, cert: server.crt}\n")
    result = run_cli("--conf", str(app / "runner.yaml"), "--check")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "tls.key:" in line and "not the key of" in line and "_ssl.c" not in line
