"""SimNet: several Engines on a virtual network with a virtual clock (no sockets, no threads).

Theory of operation.  Each engine gets a fake IP; ``listen(name, port)``
makes it reachable.  Each is run by the real shell's
:class:`~crust.runtime.driver.Driver` (the one interpreter of effects,
pumps and the engine's timer) on a virtual :class:`~crust.runtime.driver.Loop`;
SimNet is only its :class:`~crust.runtime.driver.Transport`, over TCP-like
streams, and feeds completions back through the driver's methods, as
``crust.runtime.streams`` does:

* a ``Dial`` reaches the listening engine one latency later
  (``handle_accepted``); the dialer hears ``handle_connected`` one more
  latency later.  Nobody listening there: refused after a round trip.
  An address nothing routes to (a NATed node's private address seen from
  outside, a NAT's port nobody forwards) swallows the dial silently.
* a ``Write`` is reported sent at once (the "kernel" took it) and delivered
  one latency later, in order within its connection (optionally ``chunk``
  bytes at a time, to test byte-at-a-time feeding);
* a ``Close`` reaches the other side as ``handle_closed`` behind the data;
* a ``SendDatagram`` is lost (no UDP is modelled; losing one is allowed).

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

import functools
import heapq
import random
from dataclasses import dataclass, field
from typing import Callable

from crust.config import Config
from crust.crypto.keys import KeyPair
from crust.effects import SendCredit
from crust.engine import Engine
from crust.events import Event
from crust.ids import ConnId, Endpoint, PeerId
from crust.runtime.driver import Driver

DEAF = "<deaf>"  # the pseudo-node behind every deaf endpoint


class VirtualLoop:
    """One node's timers on SimNet's clock: the :class:`~crust.runtime.driver.Loop` its driver runs on."""

    def __init__(self, net: SimNet) -> None:
        self._net = net
        self._timers: list[tuple[float, int, _Timer]] = []  # a heap
        self._seq = 0

    def time(self) -> float:
        return self._net.now

    def call_at(self, when: float, fn: Callable[[], object]) -> _Timer:
        timer = _Timer(fn)
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, timer))
        return timer

    def next_timer(self) -> float | None:
        """When the earliest live timer is due."""
        timers = self._timers
        while timers and timers[0][2].fn is None:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def run_due(self, now: float) -> bool:
        """Run the timers due by ``now``; True if any ran."""
        ran = False
        timers = self._timers
        while (when := self.next_timer()) is not None and when <= now:
            timer = heapq.heappop(timers)[2]
            fn, timer.fn = timer.fn, None
            assert fn is not None
            fn()
            ran = True
        return ran


class _Timer:
    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn: Callable[[], object] | None = fn

    def cancel(self) -> None:
        self.fn = None


@dataclass
class Node:
    name: str
    engine: Engine
    ip: str  # its own address (a private one behind a NAT)
    nat: str | None = None
    events: list[Event] = field(default_factory=list)
    timeline: list[tuple[float, Event]] = field(default_factory=list)  # each event with the time it came
    credits: list[SendCredit] = field(default_factory=list)
    driver: Driver = field(init=False)  # feeds the engine and interprets its effects (SimNet is its transport)
    loop: VirtualLoop = field(init=False)


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
        node.loop = VirtualLoop(self)
        node.driver = Driver(engine, node.loop)
        node.driver.attach(_NodeTransport(self, node), on_events=functools.partial(self._record, node),
                           on_credit=functools.partial(self._credit, node))
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
        self._pump_all()  # later inputs go through the drivers, which pump after each
        for _ in range(max_steps):
            heads = self._due_heads()
            if not heads:
                return
            if choose is not None:
                pick = choose(heads)
            elif self.reorder:
                pick = heads[self.rng.randrange(len(heads))]
            else:
                pick = heads[0]
            self._flight.remove(pick)
            heapq.heapify(self._flight)
            self._deliver(pick)
        raise AssertionError("SimNet did not settle")

    def run_shuffled(self, rng: random.Random, steps: int) -> None:
        """Up to ``steps`` deliveries, each from a randomly chosen stream (in order within a stream)."""
        self._pump_all()
        for _ in range(steps):
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
            due = [t for n in self.nodes.values() if (t := n.loop.next_timer()) is not None and t <= end]
            if self._flight and self._flight[0].at <= end:
                due.append(self._flight[0].at)
            if not due:
                break
            self.now = max(self.now, min(due))
            for node in list(self.nodes.values()):  # each node's driver fires its engine's timer
                node.loop.run_due(self.now)
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

    def _pump_all(self) -> None:
        """Pump every driver: a test may have called an engine directly (a user command)."""
        for node in list(self.nodes.values()):
            node.loop.run_due(self.now)
            node.driver.pump()

    def _record(self, node: Node, events: list[Event]) -> None:
        node.events.extend(events)
        node.timeline.extend((self.now, event) for event in events)

    def _credit(self, node: Node, peer_id: PeerId, released: tuple[tuple[int, int], ...]) -> None:
        node.credits.append(SendCredit(peer_id, released))

    def _write(self, node: Node, conn: ConnId, data: bytes) -> None:
        peer = self._links.get((node.name, conn))
        if peer is not None:  # a cut cable never reports bytes sent: the "kernel buffer" stays full
            if peer[0] != DEAF:
                self._send(node.name, peer, "data", data=data)
            node.driver.handle_sent(conn, len(data))

    def _close(self, node: Node, conn: ConnId) -> None:
        peer = self._links.pop((node.name, conn), None)
        if peer is not None:
            self._links.pop(peer, None)
            if peer[0] != DEAF:
                self._send(node.name, peer, "closed")

    def _dial(self, node: Node, conn: ConnId, endpoint: Endpoint) -> None:
        key = (endpoint.host, endpoint.port)
        if key in self._deaf:
            self._links[(node.name, conn)] = (DEAF, ConnId(0))
            self._send(DEAF, (node.name, conn), "connected", hops=2)
            return
        target = self._route(node, key)
        if target is None:
            if self._routable(node, key[0]):
                self._send(DEAF, (node.name, conn), "closed", error="refused", hops=2)
            return  # nothing routes there: the dial hangs until the engine gives up
        seen_as = self._source(node, target, endpoint)
        self._send(node.name, (target, ConnId(0)), "accept", dialer=(node.name, conn, seen_as))

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
        driver = self.nodes[item.to].driver
        if item.kind == "connected":
            driver.handle_connected(item.conn)
        elif item.kind == "closed":
            self._links.pop((item.to, item.conn), None)
            driver.handle_closed(item.conn, item.error)
        else:
            assert item.data is not None
            step = self._chunk or len(item.data) or 1
            for i in range(0, len(item.data), step):
                driver.receive_data(item.conn, item.data[i:i + step])

    def _accept(self, target: str, dialer: str, conn: ConnId, seen_as: Endpoint) -> None:
        driver = self.nodes[target].driver
        accepted = driver.handle_accepted(seen_as)
        if accepted is None:
            self._send(target, (dialer, conn), "closed", error="refused")
            return
        self._links[(dialer, conn)] = (target, accepted)
        self._links[(target, accepted)] = (dialer, conn)
        self._send(target, (dialer, conn), "connected")
        driver.pump()


class _NodeTransport:
    """One node's side of the network: the :class:`~crust.runtime.driver.Transport` its driver hands effects to."""

    def __init__(self, net: SimNet, node: Node) -> None:
        self._net = net
        self._node = node

    def dial(self, conn: ConnId, endpoint: Endpoint, local_port: int | None) -> None:
        self._net._dial(self._node, conn, endpoint)

    def write(self, conn: ConnId, data: bytes) -> None:
        self._net._write(self._node, conn, data)

    def close(self, conn: ConnId, flush: bool) -> None:
        self._net._close(self._node, conn)

    def send_datagram(self, data: bytes, endpoint: Endpoint) -> None:
        pass  # no UDP in this network: the datagram is lost, which the engine must survive anyway
