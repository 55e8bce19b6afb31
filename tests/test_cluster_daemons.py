"""Cluster mode (CONTRACT section 7) with real daemons, subprocesses of the console script,
and a real redis-server of each test's own (a unix socket in the test's folder).

Each point of the section runs here: any node lists, describes, posts to and closes any
node's connection; groups span the nodes; a node stopped with SIGTERM leaves the cluster,
one killed with SIGKILL is claimed by one survivor, which runs on_disconnect once for each
of its connections; a node that does not answer gives 504, Redis gone gives 503 while
local calls work, and Redis restarted empty gets every node's connections back; a node
cut off past node_timeout closes its clients with 1012; two daemons share one port with
listen.reuse_port; key prefixes keep clusters apart on one Redis; a message never
touches Redis; a daemon configured for a cluster does not start without Redis, and one
with no cluster section is no node.

The fixture service's on_disconnect appends a JSON line per run to the file named by
TWR_TEST_DISCONNECT_LOG (tests/fixtures/daemon/handlers/recorder.py): one file per node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any

import redis
from procutil import (
    DEADLINE,
    Daemon,
    Spawner,
    clean_env,
    closed,
    copy_app,
    pushed,
    reply_body,
    run_cli,
    stopped,
    wait_until,
    write_runner,
)
from tornado.httpclient import HTTPResponse
from wsutil import management, redis_server

from tornado_ws_runner.client import Client
from tornado_ws_runner.cluster.node import ClusterNode
from tornado_ws_runner.settings import Cluster

#: Read by fixtures/daemon/handlers/recorder.py: where on_disconnect writes its JSON lines.
DISCONNECT_LOG_ENV = "TWR_TEST_DISCONNECT_LOG"
#: Fast enough for a test, slow enough that a busy two-core machine loses no node.
TIMING = {"heartbeat_interval": 0.2, "node_timeout": 2}
#: Seconds between two tries of a condition awaited (each try a round trip).
POLL = 0.02
#: Clients opened at most on a shared port until both daemons hold one (the kernel
#: spreads them by a hash: 64 all on one daemon would happen once in 2**63).
MOST_CLIENTS = 64
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


# -- nodes ----------------------------------------------------------------------------------


def node_config(
    tmp_path: Path, name: str, redis_url: str, listen: dict[str, Any] | None = None, **cluster: Any
) -> Path:
    """The fixture service in ``tmp_path/name`` with a runner.yaml joining the cluster at
    ``redis_url`` as node ``name`` (``node_id=None``: the default id); its on_connect
    sets the identity from ``?user=``."""
    folder = copy_app(tmp_path / name)
    settings = {"redis_url": redis_url, "node_id": name, **TIMING, **cluster}
    extra = f"environment: identified\ncluster: {json.dumps(settings)}\n"
    if listen is not None:  # YAML's last key wins: it replaces write_runner's listen
        extra += f"listen: {json.dumps({'host': '127.0.0.1', 'port': 0, **listen})}\n"
    return write_runner(folder, extra)


@dataclass
class Node:
    """One daemon of the cluster and the file its on_disconnect writes to."""

    name: str
    daemon: Daemon
    log: Path

    async def call(self, method: str, path: str, body: Any = None) -> HTTPResponse:
        """A request to the management port; ``body`` goes as JSON (wsutil's helper
        reads only the ``ports`` of what it is given, which a Daemon has too)."""
        return await management(self.daemon, method, path, body)

    async def get(self, path: str) -> Any:
        """A GET that must answer 200: its JSON."""
        answer = await self.call("GET", path)
        assert answer.code == 200, (path, answer.code, answer.body)
        return json.loads(answer.body)

    async def metrics(self) -> list[str]:
        """The lines of /metrics."""
        answer = await self.call("GET", "/metrics")
        assert answer.code == 200, answer.code
        return answer.body.decode().splitlines()

    async def listed(self) -> set[str]:
        return set(await self.get("/@connections"))

    async def node_ids(self) -> list[str]:
        return sorted(node["nodeId"] for node in await self.get("/@nodes"))

    async def last_heartbeat(self, node_id: str) -> str | None:
        """What /@nodes says of ``node_id``'s last heartbeat (None: not a live node)."""
        nodes = {node["nodeId"]: node["lastHeartbeat"] for node in await self.get("/@nodes")}
        return nodes.get(node_id)

    async def exports(self, line: str) -> bool:
        """True when /metrics has ``line`` (a sample and its value, as exported)."""
        return line in await self.metrics()

    async def owner(self, connection_id: str) -> str | None:
        """The node GET /@connections/{id} names, or None while it answers 410."""
        answer = await self.call("GET", f"/@connections/{connection_id}")
        return str(json.loads(answer.body)["node"]) if answer.code == 200 else None

    async def client(self, query: str = "") -> tuple[Client, str]:
        """A client of this daemon's WebSocket port, and its connection id."""
        client = await Client.open(self.daemon.url + query)
        return client, str((await reply_body(client, "whoami"))["connectionId"])

    def disconnects(self) -> list[dict[str, Any]]:
        """The on_disconnect runs so far: {"connectionId", "reason", "identity"} each."""
        if not self.log.exists():
            return []
        text = self.log.read_text(encoding="utf-8")
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def start_node(tmp_path: Path, spawn: Spawner, redis_url: str, name: str, **options: Any) -> Node:
    """A daemon serving ``node_config(...)``, once it serves (``options``: listen, cluster keys)."""
    conf = node_config(tmp_path, name, redis_url, **options)
    log = tmp_path / f"{name}.disconnects"
    env = clean_env(**{DISCONNECT_LOG_ENV: str(log)})
    return Node(name, spawn.serving("--conf", str(conf), env=env), log)


# -- awaiting conditions ----------------------------------------------------------------------


async def eventually(what: str, probe: Callable[[], Awaitable[Any]]) -> Any:
    """Awaits ``probe()`` (a round trip to a daemon), the next try POLL after the last
    one ends, until it gives something true; fails after DEADLINE. (A file a daemon
    writes is awaited with procutil.wait_until.)"""
    deadline = time.monotonic() + DEADLINE
    while not (result := await probe()):
        assert time.monotonic() < deadline, f"timed out after {DEADLINE}s waiting for {what}"
        await asyncio.sleep(POLL)
    return result


async def until_listed(node: Node, ids: set[str]) -> None:
    """The directory is written as connections come and go: wait until ``node`` lists
    exactly ``ids``."""

    async def matches() -> bool:
        return await node.listed() == ids

    await eventually(f"{node.name} to list {ids}", matches)


async def listing(node: Node, connection_id: str) -> bool:
    """True once ``node`` lists the connection (among others or not)."""
    return connection_id in await node.listed()


def record(connection_id: str, reason: str, identity: str | None = None) -> dict[str, Any]:
    """One on_disconnect run as the recorder writes it."""
    return {"connectionId": connection_id, "reason": reason, "identity": identity}


@contextlib.contextmanager
def suspended(node: Node) -> Iterator[None]:
    """The daemon stopped (SIGSTOP) for the block, then continued (SIGCONT)."""
    node.daemon.signal(signal.SIGSTOP)
    try:
        wait_until("the daemon stopped", lambda: stopped(node.daemon.pid))
        yield
    finally:
        node.daemon.signal(signal.SIGCONT)


# -- any node answers for any connection ------------------------------------------------------


def test_either_daemon_lists_describes_posts_to_and_closes_any_connection(
    tmp_path: Path, spawn: Spawner, redis_url: str
) -> None:
    """GET /@connections on either daemon lists both clients; GET of the other's
    connection adds its node; POST and DELETE reach the owning daemon and answer as if
    local (200 once delivered, 204 and the client closed); then 410; /@nodes shows both;
    the metrics count the forwarded calls."""
    a = start_node(tmp_path, spawn, redis_url, "node-a")
    b = start_node(tmp_path, spawn, redis_url, "node-b")

    async def scenario() -> None:
        (on_a, a_id), (on_b, b_id) = await a.client(), await b.client()
        for node in (a, b):
            await until_listed(node, {a_id, b_id})
        described = await b.get(f"/@connections/{a_id}")
        assert described["connectionId"] == a_id and described["node"] == "node-a"
        assert (await a.get(f"/@connections/{a_id}"))["node"] == "node-a"

        posted = await b.call("POST", f"/@connections/{a_id}", {"from": "b"})
        assert posted.code == 200, posted.body
        assert json.loads(posted.body) == {"connectionId": a_id, "delivered": True}
        assert await pushed(on_a) == {"from": "b"}

        nodes = {node["nodeId"]: node for node in await a.get("/@nodes")}
        assert sorted(nodes) == ["node-a", "node-b"]
        for name, node in (("node-a", a), ("node-b", b)):
            port = node.daemon.ports["management"]
            assert nodes[name]["managementUrl"] == f"http://127.0.0.1:{port}"
            assert nodes[name]["connections"] == 1
            assert ISO_UTC.match(nodes[name]["lastHeartbeat"]), nodes[name]

        assert (await a.call("DELETE", f"/@connections/{b_id}")).code == 204
        assert await closed(on_b) == (1000, "closed by management")
        await until_listed(a, {a_id})
        wait_until("on_disconnect on node-b", b.disconnects)
        assert b.disconnects() == [record(b_id, "management")]
        for method, body in (("GET", None), ("POST", {"x": 1}), ("DELETE", None)):
            assert (await a.call(method, f"/@connections/{b_id}", body)).code == 410, method
        assert (await b.call("GET", "/@connections/no-such-id")).code == 410

        for node, line in (
            (b, "twr_cluster_nodes_alive 2.0"),
            (b, "twr_cluster_redis_up 1.0"),
            (b, 'twr_cluster_forwarded_total{outcome="answered"} 1.0'),  # the POST
            (b, "twr_cluster_forward_seconds_count 1.0"),
            (a, 'twr_cluster_forwarded_total{outcome="answered"} 1.0'),  # the DELETE
            (a, 'twr_cluster_forwarded_total{outcome="gone"} 2.0'),  # POST, DELETE after it
        ):
            assert await node.exports(line), line
        await on_a.close()

    asyncio.run(scenario())


def test_groups_span_the_daemons(tmp_path: Path, spawn: Spawner, redis_url: str) -> None:
    """Handlers on two daemons join a group: either daemon lists both members and a POST
    to the group reaches both; leave_group takes one out; the management routes add and
    remove members of either daemon; a closed connection leaves its groups."""
    a = start_node(tmp_path, spawn, redis_url, "node-a")
    b = start_node(tmp_path, spawn, redis_url, "node-b")

    async def scenario() -> None:
        (on_a, a_id), (on_b, b_id) = await a.client(), await b.client()
        both = sorted([a_id, b_id])
        for ws in (on_a, on_b):
            assert await reply_body(ws, "join", {"group": "room"}) == {"joined": "room"}
        for node in (a, b):
            assert await node.get("/@groups/room") == both
        posted = await b.call("POST", "/@groups/room", {"to": "room"})
        assert posted.code == 200, posted.body
        assert json.loads(posted.body) == {"group": "room", "recipients": 2}
        for ws in (on_a, on_b):
            assert await pushed(ws) == {"to": "room"}
        assert await reply_body(on_b, "leave", {"group": "room"}) == {"left": "room"}
        assert await a.get("/@groups/room") == [a_id]

        assert (await b.call("PUT", f"/@groups/ops/{a_id}")).code == 204
        assert (await a.call("PUT", f"/@groups/ops/{b_id}")).code == 204
        assert await b.get("/@groups/ops") == both
        posted = await a.call("POST", "/@groups/ops", {"to": "ops"})
        assert json.loads(posted.body) == {"group": "ops", "recipients": 2}
        for ws in (on_a, on_b):
            assert await pushed(ws) == {"to": "ops"}
        assert (await a.call("DELETE", f"/@groups/ops/{b_id}")).code == 204
        assert await b.get("/@groups/ops") == [a_id]
        assert (await b.call("PUT", "/@groups/ops/no-such-id")).code == 410
        assert await a.get("/@groups/never-made") == []

        await on_a.close()

        async def left() -> bool:
            return await b.get("/@groups/room") == [] and await b.get("/@groups/ops") == []

        await eventually("node-a's closed client out of its groups", left)
        await on_b.close()

    asyncio.run(scenario())


# -- nodes that stop, die or fall silent ------------------------------------------------------


def test_a_daemon_stopped_with_sigterm_leaves_the_cluster_as_it_closes_its_clients(
    tmp_path: Path, spawn: Spawner, redis_url: str
) -> None:
    """SIGTERM: the client gets 1001, the other daemon's listing and groups drop it at
    once, /@nodes drops the node, and on_disconnect runs once, on the stopped daemon."""
    first = start_node(tmp_path, spawn, redis_url, "first")
    second = start_node(tmp_path, spawn, redis_url, "second")

    async def scenario() -> str:
        ws, cid = await first.client()
        await reply_body(ws, "join", {"group": "room"})
        await until_listed(second, {cid})
        first.daemon.signal(signal.SIGTERM)
        assert (await closed(ws))[0] == 1001
        await until_listed(second, set())
        assert await second.get("/@groups/room") == []
        assert await second.node_ids() == ["second"]
        return cid

    cid = asyncio.run(scenario())
    assert first.daemon.wait() == 0
    assert first.disconnects() == [record(cid, "shutdown")]
    assert second.disconnects() == []


def test_a_killed_daemon_is_claimed_by_one_survivor_which_runs_on_disconnect_once_each(
    tmp_path: Path, spawn: Spawner, redis_url: str
) -> None:
    """SIGKILL: within node_timeout and a heartbeat, one of the two survivors claims the
    dead node and runs on_disconnect once for each of its connections, with its id, its
    identity and disconnect-reason node-lost; they leave the listing and their groups."""
    survivors = [start_node(tmp_path, spawn, redis_url, name) for name in ("s1", "s2")]
    doomed = start_node(tmp_path, spawn, redis_url, "doomed")

    async def scenario() -> None:
        stays, stays_id = await survivors[0].client()
        alice, alice_id = await doomed.client("?user=alice")
        member, member_id = await doomed.client()
        for ws in (stays, member):
            await reply_body(ws, "join", {"group": "room"})
        await until_listed(survivors[1], {stays_id, alice_id, member_id})

        doomed.daemon.signal(signal.SIGKILL)
        assert doomed.daemon.wait() == -signal.SIGKILL

        def runs() -> list[dict[str, Any]]:
            return [run for node in survivors for run in node.disconnects()]

        wait_until("on_disconnect for the lost clients", lambda: len(runs()) >= 2)
        claimer, other = sorted(survivors, key=lambda node: -len(node.disconnects()))
        assert await claimer.exports("twr_cluster_node_lost_disconnects_total 2.0")
        assert await other.exports("twr_cluster_node_lost_disconnects_total 0.0")
        for node in survivors:
            assert await node.listed() == {stays_id}
            assert await node.get("/@groups/room") == [stays_id]
            assert await node.node_ids() == ["s1", "s2"]
        assert (await other.call("POST", f"/@connections/{alice_id}", {"x": 1})).code == 410
        # Read after those round trips: a second run would have been written by now.
        lost = [record(alice_id, "node-lost", "alice"), record(member_id, "node-lost")]
        by_id = itemgetter("connectionId")
        assert sorted(claimer.disconnects(), key=by_id) == sorted(lost, key=by_id)
        assert other.disconnects() == []
        for ws in (stays, alice, member):
            await ws.close()

    asyncio.run(scenario())


class Claimer:
    """The daemon side of a ClusterNode made in this process (cluster/node.py's Host):
    it holds no connection, and records the on_disconnect runs a claim gives it."""

    def __init__(self) -> None:
        self.claimed: list[str] = []

    async def lost(self, connection_id: str, entry: dict[str, Any]) -> None:
        self.claimed.append(connection_id)

    async def answer(self, op: str, connection_id: str, data: str | None) -> tuple[int, Any]:
        return 410, None

    def owned(self) -> dict[str, dict[str, Any]]:
        return {}

    def memberships(self) -> dict[str, set[str]]:
        return {}

    async def deliver(self, connection_ids: list[str], frame: str) -> int:
        return 0

    def declared_lost(self) -> None:
        raise AssertionError("a claimer was declared lost")


def test_two_nodes_that_find_a_node_lost_at_the_same_moment_claim_it_once(
    tmp_path: Path, spawn: Spawner, redis_url: str
) -> None:
    """The claim is one atomic step in Redis: two nodes that both see a node's heartbeat
    expired (each asked Redis before either took it) run on_disconnect once between
    them for each of its connections. The lost node is a daemon, SIGKILLed; the two
    claimers are nodes made in this process, so that their claims provably overlap
    (a daemon claims at its own heartbeat, which two daemons rarely share)."""
    doomed = start_node(tmp_path, spawn, redis_url, "doomed")
    settings = Cluster(redis_url=redis_url, **TIMING)
    hosts = [Claimer(), Claimer()]
    nodes = [
        ClusterNode(replace(settings, node_id=f"claimer-{i}"), "http://127.0.0.1:9", host)
        for i, host in enumerate(hosts)
    ]

    async def scenario() -> None:
        (first, first_id), (second, second_id) = await doomed.client(), await doomed.client()
        await until_listed(doomed, {first_id, second_id})
        doomed.daemon.signal(signal.SIGKILL)
        assert doomed.daemon.wait() == -signal.SIGKILL

        async def expired() -> bool:
            return not any(node["nodeId"] == "doomed" for node in await nodes[0].nodes())

        await eventually("the doomed node's heartbeat to expire", expired)
        await nodes[1].nodes()  # each claimer has its connection to Redis open: both
        # claims send their first command before either reads its answer
        await asyncio.gather(*(node.claim_lost_nodes() for node in nodes))
        for node in nodes:
            await node.stop()  # lets the on_disconnect runs it spawned finish
        claims = sorted([host.claimed for host in hosts], key=len)
        assert claims[0] == [] and sorted(claims[1]) == sorted([first_id, second_id])
        for ws in (first, second):
            await ws.close()

    asyncio.run(scenario())


def test_a_daemon_that_does_not_answer_gives_504(
    tmp_path: Path, spawn: Spawner, redis_url: str
) -> None:
    """The owning daemon is stopped (SIGSTOP) for less than node_timeout: a POST for its
    client through the other daemon answers 504 after forward_timeout; once it runs
    again (SIGCONT), calls reach its client again."""
    # node-a is stopped for about forward_timeout: far from node_timeout, it stays alive
    quiet = {"node_timeout": 10, "forward_timeout": 1}
    a = start_node(tmp_path, spawn, redis_url, "node-a", **quiet)
    b = start_node(tmp_path, spawn, redis_url, "node-b", **quiet)

    async def scenario() -> None:
        ws, cid = await a.client()
        await until_listed(b, {cid})
        with suspended(a):
            answer = await b.call("POST", f"/@connections/{cid}", {"n": 1})
        assert answer.code == 504, answer.body
        assert json.loads(answer.body)["statusCode"] == 504
        assert await b.exports('twr_cluster_forwarded_total{outcome="timeout"} 1.0')

        posted = await b.call("POST", f"/@connections/{cid}", {"n": 2})
        assert posted.code == 200, posted.body
        # node-a took the first call from its channel when it ran again: it may come first
        bodies = [await pushed(ws)]
        if bodies[0] != {"n": 2}:
            bodies.append(await pushed(ws))
        assert bodies in ([{"n": 2}], [{"n": 1}, {"n": 2}]), bodies
        await ws.close()

    asyncio.run(scenario())


def test_a_daemon_cut_off_past_node_timeout_closes_its_clients_with_1012_once_claimed(
    tmp_path: Path, spawn: Spawner, redis_url: str
) -> None:
    """node-a is stopped (SIGSTOP) until node-b claims it and runs on_disconnect
    (node-lost) for its client; continued (SIGCONT), node-a finds it was declared lost,
    closes that client with 1012 without running on_disconnect a second time, and goes on
    as a node with no connections that takes new clients."""
    a = start_node(tmp_path, spawn, redis_url, "node-a")
    b = start_node(tmp_path, spawn, redis_url, "node-b")

    async def scenario() -> tuple[str, str]:
        ws, cid = await a.client("?user=alice")
        await until_listed(b, {cid})
        with suspended(a):
            wait_until("node-b to claim node-a", b.disconnects)
        assert b.disconnects() == [record(cid, "node-lost", "alice")]
        assert await closed(ws) == (1012, "Service Restart")

        again, again_id = await a.client()
        await until_listed(b, {again_id})
        beat = await b.last_heartbeat("node-a")

        async def later() -> bool:
            return await b.last_heartbeat("node-a") != beat

        await eventually("a heartbeat of node-a since", later)
        assert (await reply_body(again, "whoami"))["connectionId"] == again_id, "not closed"
        # Stopped with SIGTERM, a daemon exits once every on_disconnect it started ended.
        a.daemon.signal(signal.SIGTERM)
        assert (await closed(again))[0] == 1001
        return cid, again_id

    cid, again_id = asyncio.run(scenario())
    assert a.daemon.wait() == 0
    assert a.disconnects() == [record(again_id, "shutdown")], "none for the 1012 close"
    assert b.disconnects() == [record(cid, "node-lost", "alice")]


# -- Redis gone and back ---------------------------------------------------------------------


def test_without_redis_cluster_calls_answer_503_and_once_it_restarts_empty_all_work_again(
    tmp_path: Path, spawn: Spawner
) -> None:
    """Redis stops: cluster calls answer 503 while each daemon serves its own clients
    and local calls (/readyz stays 200, /metrics says Redis is down). Redis starts again
    empty on the same socket: each daemon writes its connections and their groups again,
    listing, forwarding and group delivery work again, and the metrics count the
    reconnect."""

    async def scenario() -> None:
        with redis_server(tmp_path) as url:
            a = start_node(tmp_path, spawn, url, "node-a")
            b = start_node(tmp_path, spawn, url, "node-b")
            (on_a, a_id), (on_b, b_id) = await a.client(), await b.client()
            await until_listed(a, {a_id, b_id})
            # Two ways into a group: a handler on node-a, a PUT through node-a for
            # node-b's client (made by node-b, which therefore knows it).
            assert await reply_body(on_a, "join", {"group": "room"}) == {"joined": "room"}
            assert (await a.call("PUT", f"/@groups/room/{b_id}")).code == 204
            assert sorted(await b.get("/@groups/room")) == sorted([a_id, b_id])
        for node in (a, b):
            seen = partial(node.exports, "twr_cluster_redis_up 0.0")
            await eventually("the daemon to see Redis gone", seen)

        for method, path in (
            ("GET", "/@connections"),
            ("GET", f"/@connections/{b_id}"),
            ("POST", f"/@connections/{b_id}"),
            ("DELETE", f"/@connections/{b_id}"),
            ("GET", "/@nodes"),
            ("GET", "/@groups/room"),
            ("POST", "/@groups/room"),
            ("PUT", f"/@groups/room/{b_id}"),
        ):
            answer = await a.call(method, path, {"x": 1} if method == "POST" else None)
            assert answer.code == 503, (method, path, answer.code)
        assert (await a.get(f"/@connections/{a_id}"))["node"] == "node-a"
        posted = await a.call("POST", f"/@connections/{a_id}", {"still": "local"})
        assert posted.code == 200, posted.body
        assert await pushed(on_a) == {"still": "local"}
        assert await reply_body(on_a, "echo", {"served": True}) == {"served": True}
        assert (await a.call("GET", "/readyz")).code == 200

        with redis_server(tmp_path):
            await until_listed(b, {a_id, b_id})  # both wrote theirs again
            for node, to, ws in ((a, b_id, on_b), (b, a_id, on_a)):
                posted = await node.call("POST", f"/@connections/{to}", {"after": "restart"})
                assert posted.code == 200, posted.body
                assert await pushed(ws) == {"after": "restart"}
            assert sorted(await a.get("/@groups/room")) == sorted([a_id, b_id])
            delivered = await b.call("POST", "/@groups/room", {"to": "room"})
            assert json.loads(delivered.body) == {"group": "room", "recipients": 2}
            for ws in (on_a, on_b):
                assert await pushed(ws) == {"to": "room"}
            for node in (a, b):
                assert await node.exports("twr_cluster_redis_up 1.0")
                assert await node.exports("twr_cluster_redis_reconnects_total 1.0")
                assert await node.node_ids() == ["node-a", "node-b"]
            await on_a.close()
            await on_b.close()

    asyncio.run(scenario())


def test_a_daemon_configured_for_a_cluster_does_not_start_without_redis(tmp_path: Path) -> None:
    conf = node_config(tmp_path, "alone", f"unix://{tmp_path / 'no-redis.sock'}")
    done = run_cli("--conf", str(conf))
    assert done.returncode == 1, done.stderr
    assert "cannot join the cluster" in done.stderr


def test_without_a_cluster_section_a_daemon_is_no_node(app: Path, spawn: Spawner) -> None:
    """Cluster mode is off by default: no /@nodes, no cluster metrics."""
    alone = Node("alone", spawn.serving("--conf", str(app / "runner.yaml")), app / "unused")

    async def scenario() -> None:
        assert (await alone.call("GET", "/@nodes")).code == 404
        assert not [line for line in await alone.metrics() if "twr_cluster_" in line]

    asyncio.run(scenario())


# -- several daemons on one machine -----------------------------------------------------------


def test_two_daemons_share_one_websocket_port_with_reuse_port(
    tmp_path: Path, spawn: Spawner, redis_url: str
) -> None:
    """listen.reuse_port: the second daemon binds the first one's port; clients of that
    port reach both daemons, and either lists them all. The node ids are the default:
    <hostname>-<pid>-<random>."""
    reuse = {"reuse_port": True}
    first = start_node(tmp_path, spawn, redis_url, "first", node_id=None, listen=reuse)
    port = first.daemon.ports["listen"]
    listen = {**reuse, "port": port}
    second = start_node(tmp_path, spawn, redis_url, "second", node_id=None, listen=listen)
    assert second.daemon.ports["listen"] == port

    async def scenario() -> None:
        ids = {node["nodeId"] for node in await first.get("/@nodes")}
        for daemon in (first.daemon, second.daemon):
            prefix = f"{socket.gethostname()}-{daemon.pid}-"
            assert any(i.startswith(prefix) and len(i) > len(prefix) for i in ids), ids
        owners: dict[str, str] = {}
        clients = []
        while set(owners.values()) != ids and len(owners) < MOST_CLIENTS:
            ws, cid = await first.client()  # the shared port
            clients.append(ws)
            owners[cid] = await eventually(f"{cid} in the directory", partial(second.owner, cid))
        assert set(owners.values()) == ids, f"{len(owners)} clients, all on one daemon"
        for node in (first, second):
            assert await node.listed() == set(owners)
        for ws in clients:
            await ws.close()

    asyncio.run(scenario())


def test_clusters_with_other_key_prefixes_share_one_redis_apart(
    tmp_path: Path, spawn: Spawner, redis_url: str
) -> None:
    one = start_node(tmp_path, spawn, redis_url, "one", key_prefix="one:")
    two = start_node(tmp_path, spawn, redis_url, "two", key_prefix="two:")

    async def scenario() -> None:
        (ws1, id1), (ws2, id2) = await one.client(), await two.client()
        for node, cid in ((one, id1), (two, id2)):
            await eventually(f"{cid} listed", partial(listing, node, cid))
        assert await one.listed() == {id1}
        assert await two.listed() == {id2}
        assert await one.node_ids() == ["one"]
        assert (await one.call("POST", f"/@connections/{id2}", {"x": 1})).code == 410
        await ws1.close()
        await ws2.close()

    asyncio.run(scenario())


def test_a_message_never_touches_redis(tmp_path: Path, spawn: Spawner, redis_url: str) -> None:
    """Redis counts the commands it ran: a hundred messages answered add none (heartbeats
    are out of the way: the first comes after a minute), a connect adds some."""
    node = start_node(tmp_path, spawn, redis_url, "node", heartbeat_interval=60, node_timeout=120)
    store = redis.Redis.from_url(redis_url)

    def commands() -> dict[str, int]:
        stats = store.info("commandstats")
        return {name: int(s["calls"]) for name, s in stats.items() if name != "cmdstat_info"}

    async def scenario() -> None:
        ws, cid = await node.client()
        await until_listed(node, {cid})
        before = commands()
        for n in range(100):
            assert await reply_body(ws, "echo", {"n": n}) == {"n": n}
        assert commands() == before
        other, other_id = await node.client()
        await until_listed(node, {cid, other_id})
        assert commands() != before
        for client in (ws, other):
            await client.close()

    try:
        asyncio.run(scenario())
    finally:
        store.close()
