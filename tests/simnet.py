"""SimNet: several Engines on a virtual network with a virtual clock (no sockets, no threads).

Each engine gets a fake IP; ``listen(name, port)`` makes it reachable.
Effects are interpreted the way the real shell would: a Dial reaches the
listening engine (``handle_accepted``) or fails, Writes are delivered in
order (optionally ``chunk`` bytes at a time, to test byte-at-a-time
feeding) and reported sent, and a Close reaches the other side as
``handle_closed``.  Everything is deterministic.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from crust.config import Config
from crust.crypto.keys import KeyPair
from crust.effects import Close, Dial, SendCredit, Write
from crust.engine import Engine
from crust.events import Event
from crust.ids import ConnId, Endpoint


@dataclass
class Node:
    name: str
    engine: Engine
    ip: str
    events: list[Event] = field(default_factory=list)
    credits: list[SendCredit] = field(default_factory=list)


class SimNet:
    """N engines, one virtual clock, an in-order lossless network."""

    def __init__(self, *, chunk: int | None = None) -> None:
        self.now = 1000.0
        self.nodes: dict[str, Node] = {}
        self._listening: dict[tuple[str, int], str] = {}
        self._links: dict[tuple[str, ConnId], tuple[str, ConnId]] = {}
        self._queue: deque[tuple[str, ConnId, object]] = deque()
        self._chunk = chunk
        self._next_port = 40000

    def add(self, name: str, config: Config | None = None, static: KeyPair | None = None) -> Node:
        ip = f"10.0.0.{len(self.nodes) + 1}"
        engine = Engine(static=static or KeyPair.generate(), config=config or Config(bootstrap_cache_path=None))
        node = self.nodes[name] = Node(name, engine, ip)
        return node

    def listen(self, name: str, port: int = 5483) -> Endpoint:
        self._listening[(self.nodes[name].ip, port)] = name
        return Endpoint(self.nodes[name].ip, port)

    def endpoint(self, name: str, port: int = 5483) -> Endpoint:
        return Endpoint(self.nodes[name].ip, port)

    # -- running ------------------------------------------------------------

    def run(self, max_steps: int = 10_000) -> None:
        """Interpret effects and deliver bytes until nothing moves."""
        for _ in range(max_steps):
            moved = False
            for node in list(self.nodes.values()):
                moved |= self._collect(node)
            if self._queue:
                moved = True
                self._deliver(*self._queue.popleft())
            if not moved:
                return
        raise AssertionError("SimNet did not settle")

    def run_shuffled(self, rng: random.Random, steps: int) -> None:
        """Up to ``steps`` deliveries, each from a randomly chosen link (in order within a link)."""
        for _ in range(steps):
            for node in list(self.nodes.values()):
                self._collect(node)
            if not self._queue:
                return
            pending = list(self._queue)
            name, conn, _ = pending[rng.randrange(len(pending))]
            head = next(item for item in pending if item[0] == name and item[1] == conn)
            self._queue.remove(head)
            self._deliver(*head)

    def advance(self, seconds: float, step: float | None = None) -> None:
        """Move the clock, firing engine timers on the way (bounded)."""
        end = self.now + seconds
        for _ in range(100_000):
            due = [t for n in self.nodes.values() if (t := n.engine.get_timer()) is not None and t <= end]
            if not due:
                break
            self.now = max(self.now, min(due))
            for node in self.nodes.values():
                timer = node.engine.get_timer()
                if timer is not None and timer <= self.now:
                    node.engine.handle_timer(self.now)
            self.run()
        self.now = end

    def _collect(self, node: Node) -> bool:
        effects = node.engine.take_effects()
        node.events.extend(node.engine.take_events())
        for effect in effects:
            if isinstance(effect, Dial):
                self._dial(node, effect)
            elif isinstance(effect, Write):
                peer = self._links.get((node.name, effect.conn))
                if peer is not None:  # a cut cable never reports bytes sent: the "kernel buffer" stays full
                    node.engine.handle_sent(effect.conn, len(effect.data), self.now)
                    self._queue.append((peer[0], peer[1], effect.data))
            elif isinstance(effect, Close):
                peer = self._links.pop((node.name, effect.conn), None)
                if peer is not None:
                    self._links.pop(peer, None)
                    self._queue.append((peer[0], peer[1], None))
            elif isinstance(effect, SendCredit):
                node.credits.append(effect)
        node.events.extend(node.engine.take_events())
        return bool(effects)

    def _dial(self, node: Node, dial: Dial) -> None:
        target = self._listening.get((dial.endpoint.host, dial.endpoint.port))
        if target is None:
            self._queue.append((node.name, dial.conn, "refused"))
            return
        self._next_port += 1
        remote = Endpoint(node.ip, self._next_port)
        accepted = self.nodes[target].engine.handle_accepted(remote, self.now)
        if accepted is None:
            self._queue.append((node.name, dial.conn, "refused"))
            return
        self._links[(node.name, dial.conn)] = (target, accepted)
        self._links[(target, accepted)] = (node.name, dial.conn)
        node.engine.handle_connected(dial.conn, self.now)

    def _deliver(self, name: str, conn: ConnId, item: object) -> None:
        engine = self.nodes[name].engine
        if item is None or isinstance(item, str):
            self._links.pop((name, conn), None)
            engine.handle_closed(conn, item, self.now)
            return
        assert isinstance(item, bytes)
        step = self._chunk or len(item) or 1
        for i in range(0, len(item), step):
            engine.receive_data(conn, item[i:i + step], self.now)

    def kill_link(self, name: str, conn: ConnId) -> None:
        """Drop a connection silently (no Close reaches either side): a cut cable."""
        peer = self._links.pop((name, conn), None)
        if peer is not None:
            self._links.pop(peer, None)

    def links_of(self, name: str) -> list[ConnId]:
        return [conn for (owner, conn) in self._links if owner == name]
