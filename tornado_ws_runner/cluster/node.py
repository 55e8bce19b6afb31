"""One daemon as a node of a cluster: its entries in Redis' directory, its heartbeat, and
the management calls it forwards to other nodes or answers for them.

Redis holds, under ``cluster.key_prefix``:

- ``heartbeats``: a sorted set, node id -> the time of its last heartbeat (one entry per
  node, not one per connection); ``nodes``: a hash, node id -> its management URL;
- ``owners``: a hash, connection id -> the node that holds it;
- ``conns:<node>``: a hash per node, connection id -> what ``GET /@connections/{id}``
  shows of it;
- ``group:<name>``: a set of connection ids; ``groups-of:<id>``: the groups of one
  connection, so that a disconnect leaves them all in the same round trip;
- ``node:<node>``: the pub/sub channel of a node, on which it takes forwarded calls and
  the answers to its own.

A connect or a disconnect is one pipelined round trip; a message never touches Redis.
Listing the cluster reads the directory (the live nodes' hashes), never asks the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable
from typing import Any, Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError

from ..log import runner_log
from ..settings import Cluster

__all__ = ["ClusterNode", "ClusterUnavailable", "ForwardTimeout", "Host"]


class ClusterUnavailable(Exception):
    """Redis cannot be reached: a call that needs the cluster answers 503."""


class ForwardTimeout(Exception):
    """The owning node did not answer within ``cluster.forward_timeout``: 504."""


class Host(Protocol):
    """What the node needs of the daemon it runs in."""

    async def answer(self, op: str, connection_id: str, data: str | None) -> tuple[int, Any]:
        """A call another node forwarded for one of this daemon's connections (``data``:
        a POST's frame, a join's or leave's group): (HTTP status, JSON body or None), as
        the local route would answer."""
        ...

    async def lost(self, connection_id: str, entry: dict[str, Any]) -> None:
        """on_disconnect for a connection of a lost node this node claimed."""
        ...

    def owned(self) -> dict[str, dict[str, Any]]:
        """This daemon's accepted connections, as the directory holds them."""
        ...

    def memberships(self) -> dict[str, set[str]]:
        """The groups of this daemon's connections (every change of them passes through
        the node that holds the connection, so this is the whole truth)."""
        ...

    async def deliver(self, connection_ids: list[str], frame: str) -> int:
        """A group's frame to those of ``connection_ids`` this daemon holds: how many
        have it flushed."""
        ...

    def declared_lost(self) -> None:
        """The cluster took this node for lost (it was cut off from Redis too long): its
        clients are closed with 1012, without on_disconnect (that ran elsewhere)."""
        ...


#: Connections leave the directory and every group they are in. KEYS: owners, the
#: node's conns hash; ARGV: the key prefix, then the connection ids.
_FORGET = """
for i = 2, #ARGV do
  local id = ARGV[i]
  local member_of = ARGV[1] .. 'groups-of:' .. id
  for _, group in ipairs(redis.call('SMEMBERS', member_of)) do
    redis.call('SREM', ARGV[1] .. 'group:' .. group, id)
  end
  redis.call('DEL', member_of)
  redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return #ARGV - 1
"""
#: A forwarded call goes to the live node that owns its connection, found and sent to
#: in one round trip. KEYS: owners, heartbeats; ARGV: the connection id, the oldest
#: heartbeat still alive, the channel prefix, the message. Returns the owner, or false
#: when no live node holds the connection.
_SEND = """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if not owner then return false end
local beat = redis.call('ZSCORE', KEYS[2], owner)
if not beat or tonumber(beat) < tonumber(ARGV[2]) then return false end
redis.call('PUBLISH', ARGV[3] .. owner, ARGV[4])
return owner
"""
#: What became of the management calls this node forwarded (a metric's label).
FORWARD_OUTCOMES = ("answered", "gone", "timeout", "unavailable")
#: Seconds a lost node's tombstone stays, for the node itself to find if it comes back.
TOMBSTONE_SECONDS = 86_400
#: Seconds before the first and at most between later attempts to reach Redis again.
RETRY_FIRST, RETRY_MOST = 0.1, 5.0
#: Seconds a stopping node waits for its pending work: directory writes, answers, and the
#: on_disconnect runs of a node it claimed (Redis may not answer).
LEAVE_SECONDS = 5.0


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class ClusterNode:
    """This daemon's part in the cluster (cluster mode only)."""

    def __init__(self, settings: Cluster, management_url: str, host: Host) -> None:
        self.settings = settings
        self._host = host
        # What the metrics read (metrics.py): Redis answered the last call; times it
        # came back; live nodes at the last heartbeat; forwarded calls by outcome and
        # their seconds; on_disconnect runs for the connections of lost nodes.
        self.up = False
        self.reconnects = 0
        self.nodes_alive = 0
        self.forwarded: dict[str, int] = dict.fromkeys(FORWARD_OUTCOMES, 0)
        self.forward_seconds = 0.0
        self.node_lost_disconnects = 0
        self.node_id = settings.node_id or default_node_id()
        self.management_url = management_url
        self._prefix = settings.key_prefix
        self._redis: redis.Redis = redis.from_url(str(settings.redis_url), decode_responses=True)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._forget_script = self._redis.register_script(_FORGET)
        self._send_script = self._redis.register_script(_SEND)
        self._writes: list[tuple[str, str | None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[tuple[int, Any]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._beater: asyncio.Task[None] | None = None

    def key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    # -- start and stop --------------------------------------------------------------

    async def start(self) -> None:
        """Joins the cluster: first heartbeat, then the node's channel (raises when Redis
        cannot be reached, so a daemon configured for a cluster does not start alone)."""
        await self._heartbeat()
        await self._pubsub.subscribe(self.key(f"node:{self.node_id}"))
        self.up = True
        self._listener = asyncio.ensure_future(self._listen())
        self._beater = asyncio.ensure_future(self._beat())
        runner_log.info("cluster: node %s joined", self.node_id)

    async def stop(self) -> None:
        """Leaves the cluster: its entries go (its connections were closed by then).

        The work still pending goes out first: the directory writes take the connections
        closed last out of their groups, which removing this node's entries does not.
        """
        for task in (self._beater, self._listener):
            if task is not None:
                task.cancel()
        # The on_disconnect runs of a node just claimed, the answers being sent and the
        # directory writes are let finish (bounded: Redis may not answer).
        pending = {*self._tasks, *([self._writer] if self._writer is not None else [])}
        if pending:
            await asyncio.wait(pending, timeout=LEAVE_SECONDS)
            for task in pending:
                task.cancel()
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self.key("heartbeats"), self.node_id)
                pipe.hdel(self.key("nodes"), self.node_id)
                pipe.delete(self.key(f"conns:{self.node_id}"))
                await pipe.execute()
        except RedisError as exc:
            runner_log.warning("cluster: could not leave cleanly: %s", exc)
        await self._pubsub.aclose()
        await self._redis.aclose()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            try:
                await self._heartbeat()
                await self.claim_lost_nodes()
            except RedisError as exc:
                self.up = False
                runner_log.warning("cluster: heartbeat failed: %s", exc)

    async def claim_lost_nodes(self) -> None:
        """Nodes silent past node_timeout: the one node whose ZREM removes a lost node's
        heartbeat (atomic in Redis) takes its connections out of the directory and runs
        on_disconnect once for each."""
        since = time.time() - self.settings.node_timeout
        lost = await self._redis.zrangebyscore(self.key("heartbeats"), "-inf", f"({since}")
        for node in map(str, lost):
            if node == self.node_id or not await self._redis.zrem(self.key("heartbeats"), node):
                continue
            entries = await self._redis.hgetall(self.key(f"conns:{node}"))
            if entries:
                await self._forget(node, [str(cid) for cid in entries])
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.key(f"conns:{node}"))
                pipe.hdel(self.key("nodes"), node)
                # For the node itself, should it come back: it must not keep these.
                pipe.set(self.key(f"lost:{node}"), "1", ex=TOMBSTONE_SECONDS)
                await pipe.execute()
            runner_log.warning(
                "cluster: node %s lost; running on_disconnect for its %d connections",
                node,
                len(entries),
            )
            for connection_id, raw in entries.items():
                self._spawn(self._host.lost(str(connection_id), json.loads(raw)))
                self.node_lost_disconnects += 1

    async def _heartbeat(self) -> None:
        """Says this node is alive; first, if the cluster has taken it for lost while it
        was cut off (a claimer left a tombstone), it closes its clients (1012) rather
        than come back with connections the cluster already reported gone."""
        tombstone = self.key(f"lost:{self.node_id}")
        if await self._redis.delete(tombstone):
            runner_log.error(
                "cluster: node %s was declared lost while cut off from Redis; "
                "closing its clients (1012)",
                self.node_id,
            )
            self._host.declared_lost()
        async with self._redis.pipeline(transaction=True) as pipe:
            now = time.time()
            pipe.zadd(self.key("heartbeats"), {self.node_id: now})
            pipe.hset(self.key("nodes"), self.node_id, self.management_url)
            pipe.zcount(self.key("heartbeats"), now - self.settings.node_timeout, "+inf")
            *_, self.nodes_alive = await pipe.execute()
        self.up = True

    # -- the directory ---------------------------------------------------------------

    def registered(self, connection_id: str, description: dict[str, Any]) -> None:
        """A connection this node holds was accepted: it enters the directory."""
        self._write(connection_id, json.dumps(description, default=str))

    def unregistered(self, connection_id: str) -> None:
        """It closed: it leaves the directory and its groups."""
        self._write(connection_id, None)

    def _write(self, connection_id: str, entry: str | None) -> None:
        """Directory writes go out in order, those of one moment in one pipeline: one
        round trip for a connect or a disconnect, and for a thousand at once too."""
        self._writes.append((connection_id, entry))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_out())

    async def _write_out(self) -> None:
        conns = self.key(f"conns:{self.node_id}")
        while self._writes:
            batch, self._writes = self._writes, []
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for connection_id, entry in batch:
                        if entry is None:
                            await self._forget_in(pipe, self.node_id, [connection_id])
                        else:
                            pipe.hset(self.key("owners"), connection_id, self.node_id)
                            pipe.hset(conns, connection_id, entry)
                    await pipe.execute()
            except RedisError as exc:
                runner_log.warning("cluster: directory update failed: %s", exc)

    async def _forget(self, node: str, connection_ids: list[str]) -> None:
        """Connections leave the directory and their groups: one round trip (a script)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._forget_in(pipe, node, connection_ids)
            await pipe.execute()

    async def _forget_in(self, pipe: Any, node: str, connection_ids: list[str]) -> None:
        """Adds the forgetting to ``pipe`` (awaiting a pipeline's command only queues it)."""
        await self._forget_script(
            keys=[self.key("owners"), self.key(f"conns:{node}")],
            args=[self._prefix, *connection_ids],
            client=pipe,
        )

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(self._logged(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _logged(work: Awaitable[None]) -> None:
        try:
            await work
        except RedisError as exc:
            runner_log.warning("cluster: directory update failed: %s", exc)

    async def _live_nodes(self) -> list[str]:
        since = time.time() - self.settings.node_timeout
        nodes = await self._redis.zrangebyscore(self.key("heartbeats"), since, "+inf")
        return [str(node) for node in nodes]

    async def connection_ids(self) -> list[str]:
        """Every connection of the live nodes, from the directory."""
        try:
            nodes = await self._live_nodes()
            async with self._redis.pipeline(transaction=False) as pipe:
                for node in nodes:
                    pipe.hkeys(self.key(f"conns:{node}"))
                lists = await pipe.execute()
        except RedisError as exc:
            raise ClusterUnavailable(str(exc)) from None
        return [cid for ids in lists for cid in ids]

    async def describe(self, connection_id: str) -> dict[str, Any] | None:
        """What the directory holds of a connection of a live node, with its node."""
        try:
            owner = await self._redis.hget(self.key("owners"), connection_id)
            if owner is None or owner not in await self._live_nodes():
                return None
            node = str(owner)
            raw = await self._redis.hget(self.key(f"conns:{node}"), connection_id)
        except RedisError as exc:
            raise ClusterUnavailable(str(exc)) from None
        if raw is None:
            return None
        return {**json.loads(raw), "node": node}

    async def nodes(self) -> list[dict[str, Any]]:
        try:
            since = time.time() - self.settings.node_timeout
            found_beats: list[Any] = await self._redis.zrangebyscore(
                self.key("heartbeats"), since, "+inf", withscores=True
            )
            beats = [(str(pair[0]), float(pair[1])) for pair in found_beats]
            async with self._redis.pipeline(transaction=False) as pipe:
                for node, _ in beats:
                    pipe.hget(self.key("nodes"), node)
                    pipe.hlen(self.key(f"conns:{node}"))
                found = await pipe.execute()
        except RedisError as exc:
            raise ClusterUnavailable(str(exc)) from None
        return [
            {
                "nodeId": node,
                "managementUrl": found[2 * i] or "",
                "connections": found[2 * i + 1],
                "lastHeartbeat": _iso(beat),
            }
            for i, (node, beat) in enumerate(beats)
        ]

    # -- groups ----------------------------------------------------------------------

    async def join(self, group: str, connection_id: str) -> None:
        await self._membership(group, connection_id, joins=True)

    async def leave(self, group: str, connection_id: str) -> None:
        await self._membership(group, connection_id, joins=False)

    async def _membership(self, group: str, connection_id: str, joins: bool) -> None:
        """The group's set and the connection's set of groups, changed together."""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                change = pipe.sadd if joins else pipe.srem
                change(self.key(f"group:{group}"), connection_id)
                change(self.key(f"groups-of:{connection_id}"), group)
                await pipe.execute()
        except RedisError as exc:
            raise ClusterUnavailable(str(exc)) from None

    async def members(self, group: str) -> list[str]:
        try:
            return sorted(map(str, await self._redis.smembers(self.key(f"group:{group}"))))
        except RedisError as exc:
            raise ClusterUnavailable(str(exc)) from None

    async def deliver_group(self, group: str, frame: str) -> int:
        """A group's frame to every member on every node: one call to each node that
        holds members (none to the others); how many members have it flushed."""
        try:
            ids = sorted(map(str, await self._redis.smembers(self.key(f"group:{group}"))))
            owners = await self._redis.hmget(self.key("owners"), ids) if ids else []
        except RedisError as exc:
            raise ClusterUnavailable(str(exc)) from None
        by_node: dict[str, list[str]] = {}
        for connection_id, owner in zip(ids, owners, strict=True):
            if owner is not None:
                by_node.setdefault(str(owner), []).append(connection_id)
        local = by_node.pop(self.node_id, [])
        calls = [self._host.deliver(local, frame)] if local else []
        calls += [self._deliver_on(node, members, frame) for node, members in by_node.items()]
        delivered = await asyncio.gather(*calls, return_exceptions=True)
        return sum(n for n in delivered if isinstance(n, int))

    async def _deliver_on(self, node: str, connection_ids: list[str], frame: str) -> int:
        status, body = await self._call(node, {"op": "group", "ids": connection_ids}, frame)
        return int(body["recipients"]) if status == 200 and body else 0

    # -- forwarded calls -------------------------------------------------------------

    async def forward(self, op: str, connection_id: str, data: str | None) -> tuple[int, Any]:
        """A management call for a connection of another node, answered by that node:
        (status, body); 410 when no live node holds it. ``data``: as Host.answer's."""
        started = time.perf_counter()
        outcome = "unavailable"
        try:
            answer = await self._call(None, {"op": op, "id": connection_id}, data)
            outcome = "gone" if answer[0] == 410 else "answered"
            return answer
        except ForwardTimeout:
            outcome = "timeout"
            raise
        finally:
            self.forwarded[outcome] += 1
            self.forward_seconds += time.perf_counter() - started

    async def _call(
        self, node: str | None, call: dict[str, Any], data: str | None
    ) -> tuple[int, Any]:
        """Sends ``call`` to ``node``'s channel (None: to the live node that owns the
        connection ``call["id"]``, 410 when there is none) and waits for its answer."""
        rid = uuid.uuid4().hex
        waiting = asyncio.get_running_loop().create_future()
        self._waiting[rid] = waiting
        message = json.dumps({**call, "rid": rid, "from": self.node_id, "data": data})
        try:
            if node is None:
                since = time.time() - self.settings.node_timeout
                keys = [self.key("owners"), self.key("heartbeats")]
                args = [call["id"], since, self.key("node:"), message]
                node = await self._send_script(keys=keys, args=args)
                if node is None:
                    return 410, None
            else:
                await self._redis.publish(self.key(f"node:{node}"), message)
            return await asyncio.wait_for(waiting, self.settings.forward_timeout)
        except RedisError as exc:
            raise ClusterUnavailable(str(exc)) from None
        except TimeoutError:
            raise ForwardTimeout(node) from None
        finally:
            self._waiting.pop(rid, None)

    async def _listen(self) -> None:
        """Takes calls and answers from this node's channel; when Redis goes away, comes
        back with backoff and jitter, subscribes anew (redis-py's pub/sub does not do it
        reliably by itself) and writes again what this node owns (Redis may have
        restarted empty)."""
        delay = RETRY_FIRST
        while True:
            try:
                async for message in self._pubsub.listen():
                    self._take(message)
            except RedisError as exc:
                self.up = False
                runner_log.warning("cluster: lost Redis (%s); reconnecting", exc)
            while True:
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, RETRY_MOST)
                try:
                    await self._rejoin()
                except RedisError:
                    continue
                delay = RETRY_FIRST
                break

    async def _rejoin(self) -> None:
        await self._heartbeat()
        old, self._pubsub = self._pubsub, self._redis.pubsub(ignore_subscribe_messages=True)
        with contextlib.suppress(RedisError, OSError):
            await old.aclose()
        await self._pubsub.subscribe(self.key(f"node:{self.node_id}"))
        owned = self._host.owned()
        async with self._redis.pipeline(transaction=True) as pipe:
            for connection_id, entry in owned.items():
                pipe.hset(self.key("owners"), connection_id, self.node_id)
                pipe.hset(
                    self.key(f"conns:{self.node_id}"),
                    connection_id,
                    json.dumps(entry, default=str),
                )
            for connection_id, groups in self._host.memberships().items():
                if connection_id in owned:
                    for group in groups:
                        pipe.sadd(self.key(f"group:{group}"), connection_id)
                    pipe.sadd(self.key(f"groups-of:{connection_id}"), *groups)
            await pipe.execute()
        self.up = True
        self.reconnects += 1
        runner_log.info("cluster: back on Redis, %d connections registered again", len(owned))

    def _take(self, message: dict[str, Any]) -> None:
        try:
            data = json.loads(message["data"])
        except (TypeError, ValueError):
            return
        if "reply" in data:
            waiting = self._waiting.get(data.get("rid"))
            if waiting is not None and not waiting.done():
                waiting.set_result((int(data["reply"]), data.get("body")))
        else:
            self._spawn(self._answer(data))

    async def _answer(self, call: dict[str, Any]) -> None:
        if call["op"] == "group":
            recipients = await self._host.deliver(list(call["ids"]), str(call["data"]))
            status, body = 200, {"recipients": recipients}
        else:
            status, body = await self._host.answer(call["op"], call["id"], call.get("data"))
        reply = {"rid": call["rid"], "reply": status, "body": body}
        await self._redis.publish(self.key(f"node:{call['from']}"), json.dumps(reply))


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + (
        f".{int(timestamp * 1000) % 1000:03d}Z"
    )
