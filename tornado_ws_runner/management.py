"""The management port (placeholder until the management API lands)."""

from __future__ import annotations

import tornado.web

from .state import RunnerState

__all__ = ["make_management_app"]


class HealthHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"status": "ok"})


def make_management_app(state: RunnerState) -> tornado.web.Application:
    return tornado.web.Application([(r"/healthz", HealthHandler)])
