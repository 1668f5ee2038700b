"""A node's LAN beacon (crust.discovery.lan.LanBeacon) on a virtual clock and a virtual LAN."""

from __future__ import annotations

from crust.discovery.beacon import Reply, Seek, decode_beacon, encode_reply, encode_seek
from crust.discovery.lan import REPLY_INTERVAL, LanBeacon
from crust.ids import Endpoint, PeerId, name_hash

NET = name_hash("lan-test")
OTHER_NET = name_hash("elsewhere")
PORT = 5484
BROADCAST = ("10.0.0.255", PORT)


def pid(n: int) -> PeerId:
    return PeerId(bytes([n]) * 32)


def nonce(n: int) -> bytes:
    return bytes([n]) * 16


class Lan:
    """Beacons on one broadcast domain: every Seek reaches every beacon, Replies go back to the sender."""

    def __init__(self) -> None:
        self.now = 100.0
        self.beacons: dict[str, tuple[LanBeacon, str]] = {}  # name -> (beacon, its IP)
        self.listening: set[str] = set()  # beacons that answer Seeks
        self.finished: dict[str, list[tuple[int, list[Reply]]]] = {}
        self.sent: dict[str, int] = {}  # Seek datagrams sent per beacon

    def add(self, name: str, ip: str, peer_id: PeerId, network: bytes = NET, listeners: int = 1,
            listen: bool = True) -> LanBeacon:
        beacon = LanBeacon(network, peer_id)
        if listen:
            self.listening.add(name)
        beacon.set_listeners([Endpoint(ip, 5483 + k) for k in range(listeners)])
        self.beacons[name] = (beacon, ip)
        self.finished[name] = []
        self.sent[name] = 0
        return beacon

    def step(self) -> None:
        """Move every due datagram (a Seek to all, each Reply to its seeker) and collect ended seeks."""
        for name, (beacon, ip) in self.beacons.items():
            for datagram, target in beacon.datagrams_to_send(self.now):
                assert target == BROADCAST
                self.sent[name] += 1
                for other in [n for n in self.beacons if n in self.listening]:  # in the order added
                    responder = self.beacons[other][0]
                    answer = responder.receive_seek(datagram, (ip, 50000), self.now)
                    if answer is not None:
                        beacon.receive_reply(answer, (self.beacons[other][1], PORT), self.now)
            while (done := beacon.next_finished()) is not None:
                self.finished[name].append(done)

    def run_until(self, end: float) -> None:
        """Fire every beacon's timer in time order up to ``end`` (bounded)."""
        for _ in range(1000):
            self.step()
            due = [t for beacon, _ in self.beacons.values() if (t := beacon.get_timer()) is not None and t <= end]
            if not due:
                break
            self.now = max(self.now, min(due))
            for beacon, _ in self.beacons.values():
                timer = beacon.get_timer()
                if timer is not None and timer <= self.now:
                    beacon.handle_timer(self.now)
        self.step()
        self.now = max(self.now, end)


def test_a_seek_sends_three_rounds_and_ends_after_its_window_with_every_new_peer() -> None:
    lan = Lan()
    seeker = lan.add("s", "10.0.0.1", pid(1))
    lan.add("a", "10.0.0.2", pid(2))
    lan.add("b", "10.0.0.3", pid(3))
    lan.add("x", "10.0.0.4", pid(4), network=OTHER_NET)
    seek_id = seeker.seek([BROADCAST], nonce(1), lan.now, 1.0)
    lan.run_until(lan.now + 0.99)
    assert lan.finished["s"] == [] and lan.sent["s"] == 3  # rounds at 0, 0.25 and 0.5
    lan.run_until(lan.now + 0.01)
    ((done_id, replies),) = lan.finished["s"]
    assert done_id == seek_id
    assert [r.peer_id for r in replies] == [pid(2), pid(3)]  # never ourselves, never another network
    assert replies[0].listeners == (Endpoint("10.0.0.2", 5483),)
    assert seeker.get_timer() is None


def test_until_first_ends_at_once_when_a_peer_answers_and_only_then() -> None:
    lan = Lan()
    seeker = lan.add("s", "10.0.0.1", pid(1), listen=False)
    lan.add("x", "10.0.0.4", pid(4), network=OTHER_NET)  # answers nothing of ours
    seeker.seek([BROADCAST], nonce(1), lan.now, 1.0, until_first=True)
    lan.run_until(lan.now + 0.9)
    assert lan.finished["s"] == []  # only another network around: the seek goes on
    lan.add("a", "10.0.0.2", pid(2))
    lan.run_until(lan.now + 0.05)
    assert lan.finished["s"] == []  # the last round was at 0.5: nothing asks A before the end
    lan.run_until(lan.now + 0.1)
    assert [(i, [r.peer_id for r in rs]) for i, rs in lan.finished["s"]] == [(1, [])]

    impatient = lan.add("t", "10.0.0.5", pid(5), listen=False)
    start = lan.now
    impatient.seek([BROADCAST], nonce(2), start, 1.0, until_first=True)
    lan.step()  # the first round reaches A, whose Reply ends the seek before any timer fires
    assert [[r.peer_id for r in rs] for _, rs in lan.finished["t"]] == [[pid(2)]]
    assert impatient.get_timer() is None and lan.now == start


def test_a_bootstrap_seek_waits_the_window_only_when_others_are_known() -> None:
    for others_known in (True, False):
        lan = Lan()
        seeker = lan.add("s", "10.0.0.1", pid(1))
        lan.add("a", "10.0.0.2", pid(2))
        lan.add("b", "10.0.0.3", pid(3))
        start = lan.now
        seeker.seek_for_bootstrap([BROADCAST], nonce(1), start, 1.0, others_known=others_known)
        lan.step()
        if others_known:  # the whole window counts: everything the LAN offers joins the run
            assert lan.finished["s"] == []
            lan.run_until(start + 1.0)
            assert [r.peer_id for _, rs in lan.finished["s"] for r in rs] == [pid(2), pid(3)]
        else:  # nobody else to try: the first answer is dialled at once
            assert [r.peer_id for _, rs in lan.finished["s"] for r in rs] == [pid(2)]
        assert seeker.get_timer() is None


def test_two_seeks_run_independently_and_close_ends_both_with_what_they_found() -> None:
    lan = Lan()
    seeker = lan.add("s", "10.0.0.1", pid(1))
    first = seeker.seek([BROADCAST], nonce(1), lan.now, 1.0)
    lan.run_until(lan.now + 0.1)
    lan.add("a", "10.0.0.2", pid(2))
    second = seeker.seek([BROADCAST], nonce(2), lan.now, 5.0)
    lan.run_until(lan.now + 0.2)  # the first seek's second round (at 0.25) reaches A too
    seeker.close()
    lan.step()
    assert [(i, [r.peer_id for r in rs]) for i, rs in lan.finished["s"]] == [(first, [pid(2)]), (second, [pid(2)])]
    assert seeker.get_timer() is None and seeker.datagrams_to_send(lan.now + 10) == []


def test_a_reply_to_another_nonce_is_ignored() -> None:
    seeker = LanBeacon(NET, pid(1))
    seeker.seek([BROADCAST], nonce(1), 0.0, 1.0, until_first=True)
    seeker.receive_reply(encode_reply(Reply(nonce(9), NET, pid(2), ())), ("10.0.0.2", PORT), 0.1)
    seeker.receive_reply(b"garbage", ("10.0.0.2", PORT), 0.1)
    assert seeker.next_finished() is None


def test_answers_to_one_source_are_rate_limited_in_virtual_time() -> None:
    responder = LanBeacon(NET, pid(2))
    responder.set_listeners([Endpoint("10.0.0.2", 5483), Endpoint("10.0.0.2", 5483, "udp")])
    seek = encode_seek(Seek(nonce(1), NET))
    t = 50.0
    answers = [responder.receive_seek(seek, ("10.0.0.1", 40000 + k), t + k * 0.01) for k in range(5)]
    assert [a is not None for a in answers] == [True, False, False, False, False]
    reply = decode_beacon(answers[0])  # type: ignore[arg-type]
    assert isinstance(reply, Reply) and reply.listeners == (Endpoint("10.0.0.2", 5483),)  # TCP only
    assert responder.receive_seek(seek, ("10.0.0.9", 40000), t + 0.01) is not None  # another source IP
    assert responder.receive_seek(seek, ("10.0.0.1", 40000), t + REPLY_INTERVAL) is not None  # the interval passed
    # Noise is never answered, and does not use up the source's allowance.
    assert responder.receive_seek(b"noise", ("10.0.0.7", 1), t) is None
    assert responder.receive_seek(seek, ("10.0.0.7", 1), t) is not None


def test_the_rate_limits_memory_is_bounded() -> None:
    responder = LanBeacon(NET, pid(2), max_sources=3)
    seek = encode_seek(Seek(nonce(1), NET))
    for k in range(3):
        assert responder.receive_seek(seek, (f"10.0.1.{k}", 1), 0.0) is not None
    assert responder.receive_seek(seek, ("10.0.1.0", 1), 0.01) is None  # remembered
    assert responder.receive_seek(seek, ("10.0.1.3", 1), 0.01) is not None  # full: the memory is cleared
    assert responder.receive_seek(seek, ("10.0.1.0", 1), 0.02) is not None  # so 10.0.1.0 is answered again
