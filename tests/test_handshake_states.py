"""crust.handshake.states: the transition tables and their single lookup function."""

from __future__ import annotations

import itertools
from typing import Any, Mapping

import pytest

import crust.handshake.secure as secure_module
from crust.errors import HandshakeError, LocalProtocolError
from crust.handshake.states import (
    EXCHANGE,
    Decision,
    SECURE,
    ExchangeState,
    Role,
    SecureInput,
    SecureState,
    transition,
)
from crust.wire import messages

from tests.helpers import handshake_pair, run_handshake

MESSAGE_INPUTS = sorted({key[2] for key in EXCHANGE if isinstance(key[2], str)})
EXCHANGE_INPUTS: list[Any] = [*MESSAGE_INPUTS, *Decision]


def test_transition_returns_every_row() -> None:
    tables: list[Mapping[Any, Any]] = [SECURE, EXCHANGE]
    for table in tables:
        for key, value in table.items():
            assert transition(table, key) is value


def test_every_unknown_secure_pair_raises() -> None:
    misses = 0
    for key in itertools.product(Role, SecureState, SecureInput):
        if key in SECURE:
            continue
        misses += 1
        with pytest.raises(LocalProtocolError, match="no transition"):
            transition(SECURE, key)
    assert misses == len(Role) * len(SecureState) * len(SecureInput) - len(SECURE)


def test_every_unknown_exchange_pair_raises() -> None:
    for key in itertools.product(Role, ExchangeState, EXCHANGE_INPUTS + ["Bogus"]):
        if key in EXCHANGE:
            continue
        with pytest.raises(LocalProtocolError):
            transition(EXCHANGE, key)


def test_garbage_keys_raise_local_protocol_error() -> None:
    table: Mapping[Any, Any] = SECURE
    for key in [None, "x", (Role.INITIATOR,), (Role.INITIATOR, SecureState.DONE, 3)]:
        with pytest.raises(LocalProtocolError):
            transition(table, key)


def test_reject_and_done_have_no_rows() -> None:
    # REJECT always ends the handshake (reported, never a transition); DONE is final.
    assert not [k for k in SECURE if k[2] is SecureInput.REJECT]
    assert not [k for k in SECURE if k[1] is SecureState.DONE]


def test_secure_input_values_are_wire_bytes() -> None:
    assert (SecureInput.HELLO, SecureInput.REJECT, SecureInput.NOISE) == (1, 2, 3)


def test_exchange_inputs_name_real_messages() -> None:
    # A typo in a message name would make a row unreachable forever.
    for name in MESSAGE_INPUTS:
        assert name in messages.__all__ and isinstance(getattr(messages, name), type), name


def test_every_table_value_is_a_state() -> None:
    assert all(isinstance(v, SecureState) for v in SECURE.values())
    assert all(isinstance(v, ExchangeState) for v in EXCHANGE.values())


def reachable(table: Mapping[Any, Any], role: Role, start: Any) -> set[Any]:
    """States of ``role`` reachable from ``start`` through the rows of ``table``."""
    seen = {start}
    frontier = [start]
    while frontier:
        state = frontier.pop()
        for (r, s, _), nxt in table.items():
            if r is role and s is state and nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


def test_secure_table_graph() -> None:
    for role in Role:
        assert SecureState.DONE in reachable(SECURE, role, SecureState.EXPECT_PREAMBLE)
    assert reachable(SECURE, Role.INITIATOR, SecureState.EXPECT_PREAMBLE) == {
        SecureState.EXPECT_PREAMBLE, SecureState.EXPECT_NOISE2, SecureState.DONE,
    }
    assert reachable(SECURE, Role.RESPONDER, SecureState.EXPECT_PREAMBLE) == {
        SecureState.EXPECT_PREAMBLE, SecureState.EXPECT_HELLO, SecureState.EXPECT_NOISE3, SecureState.DONE,
    }


def test_exchange_table_graph() -> None:
    # From SECURING, each side can reach ESTABLISHED, and every live state can end in CLOSED.
    for role in Role:
        assert ExchangeState.ESTABLISHED in reachable(EXCHANGE, role, ExchangeState.SECURING)
        for state in ExchangeState:
            if state is not ExchangeState.CLOSED:
                assert ExchangeState.CLOSED in reachable(EXCHANGE, role, state), (role, state)
    assert reachable(EXCHANGE, Role.INITIATOR, ExchangeState.EXPECT_ECHO) == {
        ExchangeState.EXPECT_ECHO, ExchangeState.CLOSED}
    assert not [key for key in EXCHANGE if key[1] is ExchangeState.CLOSED]  # CLOSED is final
    # Every row starts in SECURING or in a state some row leads to: no dead rows.
    targets = set(EXCHANGE.values())
    for role, state, _ in EXCHANGE:
        assert state is ExchangeState.SECURING or state in targets, (role, state)


def test_judging_states_take_only_our_decisions() -> None:
    # JUDGING_* are transient: the peer's messages never reach a connection there.
    for role, state, what in EXCHANGE:
        if state in (ExchangeState.JUDGING_BOOTSTRAP, ExchangeState.JUDGING_CONNECT):
            assert isinstance(what, Decision), (role, state, what)


def state_diagram() -> str:
    """The exchange machine as Graphviz DOT, printed from the table alone."""
    lines = ["digraph exchange {"]
    for (role, state, what), target in sorted(EXCHANGE.items(), key=lambda item: str(item[0])):
        label = what.value if isinstance(what, Decision) else what
        lines.append(f'  "{role.value}:{state.value}" -> "{role.value}:{target.value}" [label="{label}"];')
    lines.append("}")
    return "\n".join(lines)


def test_state_diagram_prints_from_the_table() -> None:
    dot = state_diagram()
    assert dot.count(" -> ") == len(EXCHANGE)
    for state in ExchangeState:
        assert f":{state.value}" in dot, state


def test_every_secure_row_is_used_by_real_handshakes(monkeypatch: pytest.MonkeyPatch) -> None:
    used: set[Any] = set()

    def recording(table: Mapping[Any, Any], key: Any) -> Any:
        if table is SECURE:
            used.add(key)
        return transition(table, key)

    monkeypatch.setattr(secure_module, "transition", recording)
    a, b = handshake_pair()
    run_handshake(a, b)
    assert used == set(SECURE)


def test_misses_from_real_machines_go_through_transition(monkeypatch: pytest.MonkeyPatch) -> None:
    # A message out of turn is looked up in the table (and missed), not rejected by a stray if.
    misses: list[Any] = []

    def recording(table: Mapping[Any, Any], key: Any) -> Any:
        if key not in table:
            misses.append(key)
        return transition(table, key)

    monkeypatch.setattr(secure_module, "transition", recording)
    a, b = handshake_pair()
    hello = a.data_to_send()
    b.receive_data(hello)
    with pytest.raises(HandshakeError) as info:
        b.receive_data(hello[8:])  # the same HELLO again, while the responder waits for NOISE
    assert info.value.reason == "bad_handshake"
    assert misses == [(Role.RESPONDER, SecureState.EXPECT_NOISE3, SecureInput.HELLO)]
