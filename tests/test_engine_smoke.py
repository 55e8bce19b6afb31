"""A config.yaml with a standard handler answers through the whole pipeline."""

import asyncio

from tornado_ws_runner import Event, Request, Service


def test_set_response_handler_resolves_params(write):
    path = write(
        "config.yaml",
        """
        api:
          events:
            - name: hello
              policies:
                - setResponseHandler: [200, "Hi $(who)!"]
    """,
    )
    service = Service.load(path)
    response = asyncio.run(service.process(Event(Request("hello", params={"who": "bob"}))))
    assert (response.status_code, response.body) == (200, "Hi bob!")
