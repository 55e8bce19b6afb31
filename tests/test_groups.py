"""Groups on one node (CONTRACT section 7, "Groups work without cluster mode too"):
handlers join and leave with join_group/leave_group, the management API lists,
adds, removes and posts to a group, and a closed connection leaves its groups.
A real runner, real WebSocket clients and real HTTP."""

from __future__ import annotations

import json
from typing import Any

from wsutil import (
    Serve,
    ask,
    bounded,
    identified_client,
    management,
    recv,
    until,
)


async def members(runner: Any, group: str) -> list[str]:
    answer = await management(runner, "GET", f"/@groups/{group}")
    assert answer.code == 200
    return list(json.loads(answer.body))


async def test_handlers_join_and_a_group_post_reaches_every_member(serve: Serve) -> None:
    """Two clients join "room" from their handlers (one also "other"); a POST to the
    group reaches both, answered with the count; leave_group takes one out."""
    runner = await serve()
    (a, a_id), (b, b_id) = await identified_client(runner), await identified_client(runner)
    assert (await ask(a, {"name": "join", "payload": {"groups": ["room", "other"]}}))[
        "statusCode"
    ] == 200
    await ask(b, {"name": "join", "payload": {"groups": ["room"]}})
    assert await members(runner, "room") == [a_id, b_id]
    assert await members(runner, "other") == [a_id]

    answer = await management(runner, "POST", "/@groups/room", {"hello": "room"})
    assert answer.code == 200
    assert json.loads(answer.body) == {"group": "room", "recipients": 2}
    for conn in (a, b):
        frame = await recv(conn)
        assert frame["statusCode"] == 200 and frame["body"] == {"hello": "room"}

    await ask(a, {"name": "leave", "payload": {"group": "room"}})
    assert await members(runner, "room") == [b_id]
    assert await members(runner, "other") == [a_id]
    a.close()
    b.close()


async def test_the_management_api_adds_and_removes_members(serve: Serve) -> None:
    """PUT adds (204), DELETE removes (204), an unknown connection is 410, an unknown
    group lists as []."""
    runner = await serve()
    conn, cid = await identified_client(runner)
    assert (await management(runner, "PUT", f"/@groups/ops/{cid}")).code == 204
    assert await members(runner, "ops") == [cid]
    assert (await management(runner, "PUT", "/@groups/ops/no-such-id")).code == 410
    assert (await management(runner, "DELETE", f"/@groups/ops/{cid}")).code == 204
    assert await members(runner, "ops") == []
    assert await members(runner, "never-made") == []
    empty = await management(runner, "POST", "/@groups/never-made", {"x": 1})
    assert json.loads(empty.body) == {"group": "never-made", "recipients": 0}
    conn.close()


async def test_a_closed_connection_leaves_all_its_groups(serve: Serve) -> None:
    runner = await serve()
    conn, cid = await identified_client(runner)
    stays, stays_id = await identified_client(runner)
    await ask(conn, {"name": "join", "payload": {"groups": ["g1", "g2"]}})
    await ask(stays, {"name": "join", "payload": {"groups": ["g1"]}})
    conn.close()
    await until(lambda: runner.state.registry.get(cid) is None, "the close seen")
    assert await members(runner, "g1") == [stays_id]
    assert await members(runner, "g2") == []
    answer = await bounded(management(runner, "POST", "/@groups/g1", "hi"))
    assert json.loads(answer.body)["recipients"] == 1
    stays.close()
