"""crust.handshake.states: the transition tables and their single lookup function."""

from __future__ import annotations

import itertools
from typing import Any, Mapping

import pytest

import crust.handshake.secure as secure_module
from crust.errors import HandshakeError, LocalProtocolError
from crust.handshake.states import (
    EXCHANGE,
    SECURE,
    ExchangeState,
    Role,
    SecureInput,
    SecureState,
    transition,
)
from crust.wire import messages

from tests.helpers import handshake_pair, run_handshake

EXCHANGE_INPUTS = sorted({key[2] for key in EXCHANGE})


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
    for key in itertools.product(Role, ExchangeState, EXCHANGE_INPUTS + ["Data", "Heartbeat", "Bogus"]):
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
    for name in EXCHANGE_INPUTS:
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
    # Each side's starting states (after SECURING) lead to ESTABLISHED or loop in place.
    assert ExchangeState.ESTABLISHED in reachable(EXCHANGE, Role.RESPONDER, ExchangeState.EXPECT_PURPOSE)
    assert ExchangeState.ESTABLISHED in reachable(EXCHANGE, Role.INITIATOR, ExchangeState.EXPECT_GRANT)
    assert reachable(EXCHANGE, Role.INITIATOR, ExchangeState.EXPECT_ECHO) == {ExchangeState.EXPECT_ECHO}
    # Every row starts in a state that is an entry state or the target of some row.
    entries = {ExchangeState.EXPECT_PURPOSE, ExchangeState.EXPECT_GRANT, ExchangeState.EXPECT_ECHO,
               ExchangeState.EXPECT_CONNECT_REPLY}
    assert ExchangeState.ESTABLISHED in reachable(EXCHANGE, Role.INITIATOR, ExchangeState.EXPECT_CONNECT_REPLY)
    targets = set(EXCHANGE.values())
    for role, state, _ in EXCHANGE:
        assert state in entries | targets, (role, state)


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
