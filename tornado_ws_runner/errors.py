"""The runner's exception tree.

Each error keeps what a client may see (``public_message``) apart from what the
operator's log gets (``str(error)``), as Tornado's ``HTTPError`` keeps ``log_message``
apart from the reason sent to the browser.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BadInput",
    "ConfigError",
    "ConfigErrors",
    "ConfigIssue",
    "ConnectionGone",
    "HandlerTimeout",
    "RunnerError",
    "StartupError",
]


class RunnerError(Exception):
    """Base of every error this package raises on purpose."""

    status_code = 500
    public_message = "Internal Server Error"


class BadInput(RunnerError):
    """The input could not be understood: answered with 400, never a traceback."""

    status_code = 400
    public_message = "Bad Request."


class HandlerTimeout(RunnerError):
    """A handler chain ran past the configured handler timeout."""

    status_code = 504
    public_message = "Gateway Timeout."


class ConnectionGone(RunnerError):
    """The client's socket closed before a frame could be handed to it."""

    status_code = 410
    public_message = "Gone."


class StartupError(RunnerError):
    """The daemon could not start for a reason other than its configuration (exit 1)."""


@dataclass(frozen=True)
class ConfigIssue:
    """One mistake in a configuration file: where it is and what is wrong."""

    key: str
    message: str
    line: int | None = None

    def render(self, file: str) -> str:
        place = f"{file}:{self.line}" if self.line else file
        return f"{place}: {self.key}: {self.message}" if self.key else f"{place}: {self.message}"


class ConfigError(RunnerError):
    """A configuration file is wrong; every issue found is reported at once (exit 2)."""

    def __init__(self, file: str, issues: list[ConfigIssue]) -> None:
        self.file = file
        self.issues = list(issues)
        super().__init__("\n".join(issue.render(file) for issue in self.issues))


class ConfigErrors(RunnerError):
    """Mistakes in several configuration files (runner.yaml and config.yaml), reported
    together so that one round of fixes is enough (exit 2)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(error) for error in self.errors))
