"""SimNet: several Engines on a virtual network with a virtual clock (no sockets, no threads).

Theory of operation.  Each engine gets a fake IP; ``listen(name, port)``
makes it reachable.  Effects are interpreted the way the real shell would,
over TCP-like streams:

* a ``Dial`` reaches the listening engine one latency later
  (``handle_accepted``); the dialer hears ``handle_connected`` one more
  latency later.  Nobody listening there: refused after a round trip.
  An address nothing routes to (a NATed node's private address seen from
  outside, a NAT's port nobody forwards) swallows the dial silently.
* a ``Write`` is reported sent at once (the "kernel" took it) and delivered
  one latency later, in order within its connection (optionally ``chunk``
  bytes at a time, to test byte-at-a-time feeding);
* a ``Close`` reaches the other side as ``handle_closed`` behind the data.

Impairments, all deterministic under ``seed``:

* ``latency`` (one way, seconds; per pair of nodes with :meth:`SimNet.link`)
  and ``jitter`` (a random extra delay in ``[0, jitter)`` per transmission);
  a stream never reorders itself, so deliveries of *different* connections
  overtake each other, never those of one;
* ``loss``: each transmission (dial, data, close) is lost with that
  probability and, as TCP does, sent again after ``rto`` seconds, doubling
  (at most ``max_retransmits`` times): a lossy stream is a slow stream, and
  head-of-line blocking holds its later bytes back;
* ``reorder``: deliveries that are due at the same time are taken from a
  randomly chosen connection instead of in send order;
* NAT (:meth:`SimNet.add_nat`, ``add(..., nat=...)``): a node behind a NAT
  has a private address; to nodes outside it, its dials come from the NAT's
  public address (one public port per node for a ``"cone"`` NAT, one per
  destination for a ``"symmetric"`` one), and dials to it fail unless it
  listens on a forwarded public port (``listen(..., public=True)``).

Deaf endpoints (:meth:`SimNet.deaf`) accept a connection and then never
read or answer, like a wedged server the kernel still accepts for.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Callable

from crust.config import Config
from crust.crypto.keys import KeyPair
from crust.effects import Close, Dial, SendCredit, Write
from crust.engine import Engine
from crust.events import Event
from crust.ids import ConnId, Endpoint

DEAF = "<deaf>"  # the pseudo-node behind every deaf endpoint


@dataclass
class Node:
    name: str
    engine: Engine
    ip: str  # its own address (a private one behind a NAT)
    nat: str | None = None
    events: list[Event] = field(default_factory=list)
    timeline: list[tuple[float, Event]] = field(default_factory=list)  # each event with the time it came
    credits: list[SendCredit] = field(default_factory=list)


@dataclass
class Nat:
    name: str
    kind: str  # "cone" or "symmetric"
    public_ip: str
    subnet: str  # private addresses are subnet + ".k"
    forwards: dict[int, tuple[str, int]] = field(default_factory=dict)  # public port -> (node, its port)
    mappings: dict[tuple[str, Endpoint | None], int] = field(default_factory=dict)  # (node, dest) -> public port


@dataclass(order=True)
class Delivery:
    """One transmission in flight: due ``at`` to node ``to`` on its connection ``conn``."""

    at: float
    seq: int
    to: str = field(compare=False)
    conn: ConnId = field(compare=False)
    kind: str = field(compare=False)  # accept | connected | data | closed
    data: bytes | None = field(compare=False, default=None)
    error: str | None = field(compare=False, default=None)  # closed: None (FIN) or why
    dialer: tuple[str, ConnId, Endpoint] | None = field(compare=False, default=None)  # accept: who dials, seen as

    @property
    def stream(self) -> tuple[str, ConnId]:
        """The ordered stream it belongs to (a dial's own, for an accept)."""
        return (self.dialer[0], self.dialer[1]) if self.dialer is not None else (self.to, self.conn)


Chooser = Callable[[list[Delivery]], Delivery]


class SimNet:
    """N engines, one virtual clock, a network with latency, loss, reordering and NATs."""

    def __init__(self, *, chunk: int | None = None, seed: int = 0, latency: float = 0.0, jitter: float = 0.0,
                 loss: float = 0.0, rto: float = 1.0, max_retransmits: int = 6, reorder: bool = False) -> None:
        self.now = 1000.0
        self.nodes: dict[str, Node] = {}
        self.nats: dict[str, Nat] = {}
        self.rng = random.Random(seed)
        self.latency, self.jitter, self.loss = latency, jitter, loss
        self.rto, self.max_retransmits, self.reorder = rto, max_retransmits, reorder
        self._link_specs: dict[frozenset[str], tuple[float, float]] = {}  # pair -> (latency, loss)
        self._listening: dict[tuple[str, int], tuple[str, int]] = {}  # reachable (ip, port) -> (node, its port)
        self._deaf: set[tuple[str, int]] = set()
        self._links: dict[tuple[str, ConnId], tuple[str, ConnId]] = {}
        self._flight: list[Delivery] = []  # a heap
        self._last_at: dict[tuple[str, ConnId], float] = {}  # per stream: keeps it in order
        self._seq = 0
        self._chunk = chunk
        self._next_port = 40000
        self._next_deaf = 0

    # -- building -------------------------------------------------------------

    def add(self, name: str, config: Config | None = None, static: KeyPair | None = None, *,
            nat: str | None = None) -> Node:
        """A node with a fresh IP (a private one behind ``nat``, made by :meth:`add_nat`)."""
        if nat is None:
            ip = f"10.0.0.{len(self.nodes) + 1}"
        else:
            inside = sum(1 for n in self.nodes.values() if n.nat == nat)
            ip = f"{self.nats[nat].subnet}.{inside + 2}"
        key = static or KeyPair(self.rng.randbytes(32))  # PeerIds follow the seed too
        engine = Engine(static=key, config=config or Config(bootstrap_cache_path=None),
                        rng=random.Random(self.rng.random()))
        node = self.nodes[name] = Node(name, engine, ip, nat)
        return node

    def add_nat(self, name: str, kind: str = "cone") -> Nat:
        """A NAT with its own public IP; nodes join it with ``add(..., nat=name)``."""
        if kind not in ("cone", "symmetric"):
            raise ValueError(f"unknown NAT kind {kind!r}")
        k = len(self.nats) + 1
        nat = self.nats[name] = Nat(name, kind, f"198.51.100.{k}", f"192.168.{k}")
        return nat

    def link(self, a: str, b: str, *, latency: float | None = None, loss: float | None = None) -> None:
        """Give the path between nodes ``a`` and ``b`` its own one-way latency and/or loss."""
        old_latency, old_loss = self._spec(a, b)
        self._link_specs[frozenset((a, b))] = (old_latency if latency is None else latency,
                                                old_loss if loss is None else loss)

    def listen(self, name: str, port: int = 5483, *, public: bool = False) -> Endpoint:
        """Make ``name`` accept on ``port``; returns the endpoint others dial.

        ``public=True`` on a node behind a NAT forwards the NAT's public ``port`` to it
        (what UPnP or a manual port forward does).
        """
        node = self.nodes[name]
        self._listening[(node.ip, port)] = (name, port)
        if public and node.nat is not None:
            nat = self.nats[node.nat]
            nat.forwards[port] = (name, port)
            self._listening[(nat.public_ip, port)] = (name, port)
            return Endpoint(nat.public_ip, port)
        return Endpoint(node.ip, port)

    def endpoint(self, name: str, port: int = 5483) -> Endpoint:
        """``name``'s own address at ``port`` (the private one behind a NAT)."""
        return Endpoint(self.nodes[name].ip, port)

    def deaf(self) -> Endpoint:
        """An endpoint that accepts connections and then never reads, answers or closes."""
        self._next_deaf += 1
        ep = Endpoint(f"10.0.9.{self._next_deaf}", 5483)
        self._deaf.add((ep.host, ep.port))
        return ep

    # -- running ------------------------------------------------------------

    def run(self, max_steps: int = 10_000, choose: Chooser | None = None) -> None:
        """Interpret effects and deliver what is due by ``now`` until nothing moves.

        ``choose`` picks the next delivery among the due heads of each stream
        (default: the earliest sent; with ``reorder``, a random one).
        """
        for _ in range(max_steps):
            moved = False
            for node in list(self.nodes.values()):
                moved |= self._collect(node)
            heads = self._due_heads()
            if heads:
                moved = True
                if choose is not None:
                    pick = choose(heads)
                elif self.reorder:
                    pick = heads[self.rng.randrange(len(heads))]
                else:
                    pick = heads[0]
                self._flight.remove(pick)
                heapq.heapify(self._flight)
                self._deliver(pick)
            if not moved:
                return
        raise AssertionError("SimNet did not settle")

    def run_shuffled(self, rng: random.Random, steps: int) -> None:
        """Up to ``steps`` deliveries, each from a randomly chosen stream (in order within a stream)."""
        for _ in range(steps):
            for node in list(self.nodes.values()):
                self._collect(node)
            heads = self._due_heads()
            if not heads:
                return
            pick = heads[rng.randrange(len(heads))]
            self._flight.remove(pick)
            heapq.heapify(self._flight)
            self._deliver(pick)

    def advance(self, seconds: float, step: float | None = None) -> None:
        """Move the clock ``seconds`` on, firing engine timers and deliveries in time order (bounded)."""
        end = self.now + seconds
        self.run()
        for _ in range(100_000):
            due = [t for n in self.nodes.values() if (t := n.engine.get_timer()) is not None and t <= end]
            if self._flight and self._flight[0].at <= end:
                due.append(self._flight[0].at)
            if not due:
                break
            self.now = max(self.now, min(due))
            for node in self.nodes.values():
                timer = node.engine.get_timer()
                if timer is not None and timer <= self.now:
                    node.engine.handle_timer(self.now)
            self.run()
        self.now = end

    def in_flight(self) -> int:
        """Transmissions sent and not yet delivered."""
        return len(self._flight)

    def kill_link(self, name: str, conn: ConnId) -> None:
        """Cut a connection silently (no Close reaches either side; what was in flight is lost)."""
        peer = self._links.pop((name, conn), None)
        if peer is not None:
            self._links.pop(peer, None)
            cut = {(name, conn), peer}
            self._flight = [d for d in self._flight if (d.to, d.conn) not in cut]
            heapq.heapify(self._flight)

    def links_of(self, name: str) -> list[ConnId]:
        """``name``'s connections that are still up."""
        return [conn for (owner, conn) in self._links if owner == name]

    # -- the shell's side ---------------------------------------------------------

    def _collect(self, node: Node) -> bool:
        effects = node.engine.take_effects()
        self._record(node)
        for effect in effects:
            if isinstance(effect, Dial):
                self._dial(node, effect)
            elif isinstance(effect, Write):
                peer = self._links.get((node.name, effect.conn))
                if peer is not None:  # a cut cable never reports bytes sent: the "kernel buffer" stays full
                    node.engine.handle_sent(effect.conn, len(effect.data), self.now)
                    if peer[0] != DEAF:
                        self._send(node.name, peer, "data", data=effect.data)
            elif isinstance(effect, Close):
                peer = self._links.pop((node.name, effect.conn), None)
                if peer is not None:
                    self._links.pop(peer, None)
                    if peer[0] != DEAF:
                        self._send(node.name, peer, "closed")
            elif isinstance(effect, SendCredit):
                node.credits.append(effect)
        self._record(node)
        return bool(effects)

    def _record(self, node: Node) -> None:
        events = node.engine.take_events()
        node.events.extend(events)
        node.timeline.extend((self.now, event) for event in events)

    def _dial(self, node: Node, dial: Dial) -> None:
        key = (dial.endpoint.host, dial.endpoint.port)
        if key in self._deaf:
            self._links[(node.name, dial.conn)] = (DEAF, ConnId(0))
            self._send(DEAF, (node.name, dial.conn), "connected", hops=2)
            return
        target = self._route(node, key)
        if target is None:
            if self._routable(node, key[0]):
                self._send(DEAF, (node.name, dial.conn), "closed", error="refused", hops=2)
            return  # nothing routes there: the dial hangs until the engine gives up
        seen_as = self._source(node, target, dial.endpoint)
        self._send(node.name, (target, ConnId(0)), "accept", dialer=(node.name, dial.conn, seen_as))

    def _route(self, node: Node, key: tuple[str, int]) -> str | None:
        """The node a dial from ``node`` to ``key`` reaches, if any."""
        served = self._listening.get(key)
        if served is None:
            return None
        target = self.nodes[served[0]]
        if target.nat is not None and key[0] == target.ip and node.nat != target.nat:
            return None  # a private address, seen from outside its NAT
        return target.name

    def _routable(self, node: Node, host: str) -> bool:
        """Whether a host answers at ``host`` at all (a refusal) rather than nothing routing there."""
        for other in self.nodes.values():
            if other.ip == host:
                return other.nat is None or other.nat == node.nat
        return not any(nat.public_ip == host for nat in self.nats.values())  # an unforwarded NAT port: dropped

    def _source(self, node: Node, target: str, dest: Endpoint) -> Endpoint:
        """Where a dial from ``node`` appears to come from, at ``target``."""
        self._next_port += 1
        if node.nat is None or self.nodes[target].nat == node.nat:
            return Endpoint(node.ip, self._next_port)
        nat = self.nats[node.nat]
        key = (node.name, None if nat.kind == "cone" else dest)
        if key not in nat.mappings:
            nat.mappings[key] = self._next_port
        return Endpoint(nat.public_ip, nat.mappings[key])

    def _spec(self, a: str, b: str) -> tuple[float, float]:
        return self._link_specs.get(frozenset((a, b)), (self.latency, self.loss))

    def _send(self, src: str, dst: tuple[str, ConnId], kind: str, *, hops: int = 1, data: bytes | None = None,
              error: str | None = None, dialer: tuple[str, ConnId, Endpoint] | None = None) -> None:
        """Put one transmission in flight from ``src`` to ``dst``: latency, jitter, loss, in stream order."""
        latency, loss = self._spec(src, dst[0])
        delay = 0.0
        for _ in range(hops):
            delay += latency + (self.rng.random() * self.jitter if self.jitter else 0.0)
            backoff = self.rto
            for _ in range(self.max_retransmits):
                if not (loss and self.rng.random() < loss):
                    break
                delay += backoff
                backoff *= 2
        self._seq += 1
        item = Delivery(self.now + delay, self._seq, dst[0], dst[1], kind, data, error, dialer)
        stream = item.stream
        item.at = max(item.at, self._last_at.get(stream, item.at))  # a stream never overtakes itself
        self._last_at[stream] = item.at
        heapq.heappush(self._flight, item)

    def _due_heads(self) -> list[Delivery]:
        """The first due delivery of each stream, earliest first."""
        heads: dict[tuple[str, ConnId], Delivery] = {}
        for item in sorted(d for d in self._flight if d.at <= self.now):
            heads.setdefault(item.stream, item)
        return list(heads.values())

    def _deliver(self, item: Delivery) -> None:
        if item.kind == "accept":
            assert item.dialer is not None
            self._accept(item.to, *item.dialer)
            return
        engine = self.nodes[item.to].engine
        if item.kind == "connected":
            engine.handle_connected(item.conn, self.now)
        elif item.kind == "closed":
            self._links.pop((item.to, item.conn), None)
            engine.handle_closed(item.conn, item.error, self.now)
        else:
            assert item.data is not None
            step = self._chunk or len(item.data) or 1
            for i in range(0, len(item.data), step):
                engine.receive_data(item.conn, item.data[i:i + step], self.now)

    def _accept(self, target: str, dialer: str, conn: ConnId, seen_as: Endpoint) -> None:
        accepted = self.nodes[target].engine.handle_accepted(seen_as, self.now)
        if accepted is None:
            self._send(target, (dialer, conn), "closed", error="refused")
            return
        self._links[(dialer, conn)] = (target, accepted)
        self._links[(target, accepted)] = (dialer, conn)
        self._send(target, (dialer, conn), "connected")
