"""Shared fixtures: config files, runners in this process, daemons as subprocesses."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from procutil import Spawner, copy_app, spawner, write_runner
from tornado.ioloop import IOLoop
from wsutil import Serve, fresh_loop, openssl_certificate, redis_server, serving


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Writes dedented text to a file under tmp_path and returns its path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def io_loop() -> Iterator[IOLoop]:
    """A fresh IOLoop per test (pytest-tornasync runs async tests on it)."""
    yield from fresh_loop()


@pytest.fixture
def serve(io_loop: IOLoop) -> Iterator[Serve]:
    """Starts runners on free ports; stops them after the test."""
    yield from serving(io_loop)


@pytest.fixture
def spawn() -> Iterator[Spawner]:
    """Starts the console script; kills whatever it started at teardown."""
    yield from spawner()


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A copy of the daemon fixture service (config.yaml, handlers/) with a runner.yaml."""
    folder = copy_app(tmp_path)
    write_runner(folder)
    return folder


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    return openssl_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server of this test's own, on a unix socket (no port to clash)."""
    with redis_server(tmp_path) as url:
        yield url
