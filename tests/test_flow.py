"""crust.runtime.flow's pieces that need no reactor: the send gate and the receive path's message costs."""

from __future__ import annotations

import threading

import pytest

from crust.config import MESSAGE_OVERHEAD
from crust.errors import PeerLostError, SendTimeout, ServiceClosed
from crust.events import Event, MessageReceived, PeerLost
from crust.ids import PeerId
from crust.outbox import DROP_PRIORITY
from crust.engine.backpressure import message_costs
from crust.runtime.flow import SendGate

P = PeerId(bytes(32))
Q = PeerId(bytes([1]) * 32)


def test_message_costs_sum_per_peer_across_interleaved_runs_and_skip_other_events() -> None:
    events: list[Event] = [MessageReceived(P, b"ab"), MessageReceived(P, b""), PeerLost(Q, "x"), MessageReceived(Q, b"abc"),
              MessageReceived(PeerId(bytes(32)), b"a")]  # an equal PeerId that is another object
    costs, count, nbytes = message_costs(events)
    assert costs == {P: 3 + 3 * MESSAGE_OVERHEAD, Q: 3 + MESSAGE_OVERHEAD}
    assert (count, nbytes) == (4, 6)
    assert message_costs([]) == ({}, 0, 0)
    alternating: list[Event] = [MessageReceived(P, b"a"), MessageReceived(Q, b""), MessageReceived(P, b"bb"),
                                MessageReceived(Q, b"c")]
    assert message_costs(alternating)[0] == {P: 3 + 2 * MESSAGE_OVERHEAD, Q: 1 + 2 * MESSAGE_OVERHEAD}


def test_gate_admits_under_the_limit_and_times_out_above_it() -> None:
    gate = SendGate(P, limit=1000)
    gate.admit(0, 1000, None)  # under the limit when it starts: admitted, even though it ends above
    with pytest.raises(SendTimeout, match="priority 0 stayed full"):
        gate.admit(0, 1, 0.01)
    gate.admit(1, 10, 0.0)  # another priority has its own count
    gate.admit(DROP_PRIORITY, 1500, None)  # droppable priorities may hold twice the limit
    gate.admit(DROP_PRIORITY, 1, None)
    with pytest.raises(SendTimeout):
        gate.admit(DROP_PRIORITY, 1, 0.0)


def test_gate_release_wakes_a_blocked_sender_and_close_fails_one() -> None:
    gate = SendGate(P, limit=1000)
    gate.admit(0, 1000, None)
    admitted = threading.Event()

    def sender() -> None:
        gate.admit(0, 1, 10.0)
        admitted.set()

    thread = threading.Thread(target=sender)
    thread.start()
    assert not admitted.wait(0.05)  # blocked while full
    gate.release(((0, 1000 + MESSAGE_OVERHEAD),))
    assert admitted.wait(5.0)
    thread.join(5.0)
    gate.admit(0, 1000, None)
    errors: list[BaseException] = []

    def doomed() -> None:
        try:
            gate.admit(0, 1, 10.0)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    thread = threading.Thread(target=doomed)
    thread.start()
    gate.close()
    thread.join(5.0)
    assert len(errors) == 1 and isinstance(errors[0], PeerLostError)
    with pytest.raises(PeerLostError):
        gate.admit(1, 1, None)  # a closed gate admits nothing, on any priority
    gate.close(ServiceClosed)
    with pytest.raises(ServiceClosed):
        gate.admit(0, 1, None)


def test_gate_counts_exactly_under_concurrent_senders() -> None:
    gate = SendGate(P, limit=1 << 40)
    threads = [threading.Thread(target=lambda: [gate.admit(0, 10, None) for _ in range(20_000)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30.0)
    assert gate._queued[0] == 4 * 20_000 * (10 + MESSAGE_OVERHEAD)  # no addition lost
