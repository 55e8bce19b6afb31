"""Cluster mode (CONTRACT section 7) with a real redis-server and two runners in this
process, each a node: the management API of either answers for the connections of
both, forwards POST and DELETE to the owning node, lists the nodes; a node that does
not answer gives 504, and with Redis gone, cluster calls give 503 while each node keeps
serving its own clients."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import redis
from procutil import Spawner, call, connect, write_runner
from wsutil import (
    PROBE,
    Serve,
    ask,
    closed_with,
    identified_client,
    management,
    recv,
    until,
)


async def node(serve: Serve, redis_url: str, name: str, **cluster: Any) -> Any:
    settings = {"redis_url": redis_url, "node_id": name, "heartbeat_interval": 0.2}
    return await serve(cluster={**settings, **cluster})


async def listed(runner: Any) -> list[str]:
    answer = await management(runner, "GET", "/@connections")
    assert answer.code == 200, answer.body
    return sorted(json.loads(answer.body))


async def test_either_node_lists_describes_posts_to_and_closes_any_connection(
    serve: Serve, redis_url: str
) -> None:
    a, b = await node(serve, redis_url, "node-a"), await node(serve, redis_url, "node-b")
    on_a, a_id = await identified_client(a)
    on_b, b_id = await identified_client(b)
    await until_listed(a, {a_id, b_id})
    assert await listed(b) == sorted([a_id, b_id])

    described = json.loads((await management(b, "GET", f"/@connections/{a_id}")).body)
    assert described["connectionId"] == a_id and described["node"] == "node-a"
    local = json.loads((await management(a, "GET", f"/@connections/{a_id}")).body)
    assert local["node"] == "node-a"

    posted = await management(b, "POST", f"/@connections/{a_id}", {"from": "b"})
    assert posted.code == 200, posted.body
    assert json.loads(posted.body) == {"connectionId": a_id, "delivered": True}
    assert (await recv(on_a))["body"] == {"from": "b"}

    nodes = json.loads((await management(a, "GET", "/@nodes")).body)
    assert sorted(n["nodeId"] for n in nodes) == ["node-a", "node-b"]
    assert all(n["connections"] == 1 and n["lastHeartbeat"].endswith("Z") for n in nodes)

    assert (await management(a, "DELETE", f"/@connections/{b_id}")).code == 204
    assert await closed_with(on_b) == (1000, "closed by management")
    await until_listed(a, {a_id})
    assert (await management(a, "POST", f"/@connections/{b_id}", {"x": 1})).code == 410
    assert (await management(a, "GET", f"/@connections/{b_id}")).code == 410

    exported = (await management(b, "GET", "/metrics")).body.decode()
    for line in (
        "twr_cluster_nodes_alive 2.0",
        "twr_cluster_redis_up 1.0",
        'twr_cluster_forwarded_total{outcome="answered"} 1.0',
        "twr_cluster_forward_seconds_count 1.0",
    ):
        assert line in exported.splitlines(), line
    on_a.close()


async def until_listed(runner: Any, ids: set[str]) -> None:
    """The directory is written as connections come and go: wait for it (bounded)."""
    for _ in range(200):
        if set(await listed(runner)) == ids:
            return
    raise AssertionError(f"the cluster never listed {ids}")


async def test_a_node_that_does_not_answer_gives_504(serve: Serve, redis_url: str) -> None:
    """A connection the directory gives to a live node that never answers its channel."""
    a = await node(serve, redis_url, "node-a", forward_timeout=0.3)
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    prefix = "tornado-ws-runner:"
    store.zadd(f"{prefix}heartbeats", {"silent": time.time() + 60})
    store.hset(f"{prefix}owners", "ghost", "silent")
    store.hset(f"{prefix}conns:silent", "ghost", "{}")
    answer = await management(a, "POST", "/@connections/ghost", {"x": 1})
    assert answer.code == 504, answer.body
    assert json.loads(answer.body)["statusCode"] == 504
    store.close()


async def test_without_redis_cluster_calls_answer_503_and_local_ones_work(
    serve: Serve, tmp_path: Any
) -> None:
    from wsutil import redis_server

    with redis_server(tmp_path) as url:
        a = await node(serve, url, "node-a")
        conn, cid = await identified_client(a)
        await until_listed(a, {cid})
    # redis-server has stopped
    assert (await management(a, "GET", "/@connections")).code == 503
    assert (await management(a, "GET", "/@connections/elsewhere")).code == 503
    posted = await management(a, "POST", f"/@connections/{cid}", {"still": "local"})
    assert posted.code == 200
    assert (await recv(conn))["body"] == {"still": "local"}
    assert (await management(a, "GET", "/healthz")).code == 200
    conn.close()


def test_a_killed_node_is_claimed_once_and_its_connections_get_on_disconnect(
    serve: Serve, redis_url: str, app: Path, spawn: Spawner, io_loop: Any
) -> None:
    """A daemon (a real process) holding a client is SIGKILLed: within node_timeout and
    a heartbeat, the surviving node drops it from the listing and runs on_disconnect
    once for the client, with disconnect-reason node-lost."""
    timing = "heartbeat_interval: 0.2, node_timeout: 1"
    write_runner(app, f"cluster: {{redis_url: '{redis_url}', node_id: doomed, {timing}}}\n")
    daemon = spawn.serving("--conf", str(app / "runner.yaml"))

    async def scenario() -> None:
        survivor = await node(serve, redis_url, "survivor", node_timeout=1)
        ws = await connect(daemon.url)
        doomed_id = (await call(ws, "whoami"))["body"]["connectionId"]
        await until_listed(survivor, {doomed_id})
        os.kill(daemon.pid, signal.SIGKILL)
        await until(lambda: PROBE.disconnects, "on_disconnect for the lost client", timeout=5)
        (event,) = PROBE.disconnects
        headers = event.request.headers
        assert headers["connection-id"] == doomed_id
        assert headers["disconnect-reason"] == "node-lost"
        assert await listed(survivor) == []
        nodes = json.loads((await management(survivor, "GET", "/@nodes")).body)
        assert [n["nodeId"] for n in nodes] == ["survivor"]
        ws.close()

    io_loop.run_sync(scenario, timeout=30)


async def test_after_redis_restarts_empty_the_nodes_register_again_and_forward(
    serve: Serve, tmp_path: Path
) -> None:
    """Redis goes away and comes back with nothing (no persistence): each node
    reconnects, subscribes anew and writes its connections again, so listing and
    forwarding work as before."""
    from wsutil import redis_server

    with redis_server(tmp_path) as url:
        a = await node(serve, url, "node-a")
        b = await node(serve, url, "node-b", forward_timeout=0.5)
        conn, cid = await identified_client(a)
        await until_listed(b, {cid})
    assert (await management(b, "GET", "/@connections")).code == 503
    with redis_server(tmp_path):
        await until_listed(b, {cid})
        for _ in range(100):  # node-a resubscribes on its own schedule: bounded retries
            posted = await management(b, "POST", f"/@connections/{cid}", {"after": "restart"})
            if posted.code == 200:
                break
        assert posted.code == 200, posted.body
        assert (await recv(conn))["body"] == {"after": "restart"}
        assert a.state.cluster is not None and a.state.cluster.reconnects >= 1
        conn.close()


async def test_a_node_declared_lost_closes_its_clients_with_1012_and_no_second_disconnect(
    serve: Serve, redis_url: str
) -> None:
    """The cluster took node-a for lost (a claimer's tombstone, as after a partition
    longer than node_timeout): node-a closes its clients with 1012 at its next heartbeat
    and runs no on_disconnect for them (the claimer did)."""
    a = await node(serve, redis_url, "node-a")
    conn, _ = await identified_client(a)
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    store.set("tornado-ws-runner:lost:node-a", "1")
    code, _ = await closed_with(conn)
    assert code == 1012
    await until(lambda: not a.state.registry.ids(), "the client gone from the registry")
    await until(lambda: not a.state.tasks, "its close handled (on_disconnect or not)")
    assert PROBE.disconnects == []
    assert store.exists("tornado-ws-runner:lost:node-a") == 0
    store.close()


async def test_two_nodes_share_one_port_with_reuse_port(serve: Serve, redis_url: str) -> None:
    """listen.reuse_port: a second daemon binds the first one's port; clients reach both
    through it, and the cluster lists every connection."""
    a = await serve(
        listen={"port": 0, "reuse_port": True}, cluster={"redis_url": redis_url, "node_id": "a"}
    )
    port = a.ports["listen"]
    b = await serve(
        listen={"port": port, "reuse_port": True}, cluster={"redis_url": redis_url, "node_id": "b"}
    )
    assert b.ports["listen"] == port
    clients = [await identified_client(a) for _ in range(8)]  # ws_url(a): the shared port
    ids = {cid for _, cid in clients}
    await until_listed(b, ids)
    assert len(a.state.registry) + len(b.state.registry) == 8
    for conn, _ in clients:
        conn.close()


async def test_groups_span_the_nodes(serve: Serve, redis_url: str) -> None:
    """Members on two nodes: either node lists them, a POST to the group reaches them
    all, a member added through the other node's management port counts, and a closed
    connection leaves its groups."""
    a, b = await node(serve, redis_url, "node-a"), await node(serve, redis_url, "node-b")
    (on_a, a_id), (on_b, b_id) = await identified_client(a), await identified_client(b)
    await ask(on_a, {"name": "join", "payload": {"groups": ["room"]}})
    await ask(on_b, {"name": "join", "payload": {"groups": ["room"]}})
    for either in (a, b):
        listed_members = json.loads((await management(either, "GET", "/@groups/room")).body)
        assert listed_members == sorted([a_id, b_id])
    posted = await management(b, "POST", "/@groups/room", {"to": "room"})
    assert json.loads(posted.body) == {"group": "room", "recipients": 2}
    for conn in (on_a, on_b):
        assert (await recv(conn))["body"] == {"to": "room"}

    assert (await management(b, "PUT", f"/@groups/ops/{a_id}")).code == 204
    ops = json.loads((await management(a, "GET", "/@groups/ops")).body)
    assert ops == [a_id]
    assert (await management(b, "PUT", "/@groups/ops/no-such-id")).code == 410

    on_b.close()
    for _ in range(200):  # the directory is written as connections go: bounded polls
        room = json.loads((await management(a, "GET", "/@groups/room")).body)
        if room == [a_id]:
            break
    assert room == [a_id]
    on_a.close()
