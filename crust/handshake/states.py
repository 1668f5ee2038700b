"""Every handshake state and transition, in one place (h11's rule).

Theory of operation.  A new connection runs two handshakes in a row:

1. **Secure** (``SECURE``): both sides send the preamble; the initiator
   sends HELLO (network-name hash in clear + Noise ``-> e``); the responder
   answers NOISE (``<- e, ee, s, es``) or REJECT; the initiator finishes with
   NOISE (``-> s, se``).  The result is a :class:`~crust.channel.SecureChannel`.
2. **Exchange** (``EXCHANGE``), inside the channel: the initiator states why
   it came (``BootstrapRequest``, ``ConnectRequest`` or ``EchoAddrReq``) and
   the responder grants, denies or answers.  A granted connection is
   ``ESTABLISHED``: a peer link carrying Data and Heartbeats.

Each machine asks :func:`transition` for its next state.  A pair missing
from a table raises :class:`~crust.errors.LocalProtocolError`; the machine
fed by the remote side re-labels it as a remote error (h11's strategy).
"""

from __future__ import annotations

import enum
from typing import Hashable, Mapping, TypeVar

from ..errors import LocalProtocolError

__all__ = ["Role", "SecureState", "SecureInput", "SECURE", "ExchangeState", "EXCHANGE", "transition"]


class Role(enum.Enum):
    """Who dialled: the initiator speaks first."""

    INITIATOR = "initiator"
    RESPONDER = "responder"


class SecureState(enum.Enum):
    """What the secure handshake waits for."""

    EXPECT_PREAMBLE = "expect_preamble"
    EXPECT_HELLO = "expect_hello"
    EXPECT_NOISE2 = "expect_noise2"
    EXPECT_NOISE3 = "expect_noise3"
    DONE = "done"


class SecureInput(enum.IntEnum):
    """What arrived; the values of HELLO, REJECT and NOISE are their wire type bytes."""

    PREAMBLE = 0
    HELLO = 1
    REJECT = 2
    NOISE = 3


SECURE: Mapping[tuple[Role, SecureState, SecureInput], SecureState] = {
    (Role.INITIATOR, SecureState.EXPECT_PREAMBLE, SecureInput.PREAMBLE): SecureState.EXPECT_NOISE2,
    (Role.INITIATOR, SecureState.EXPECT_NOISE2, SecureInput.NOISE): SecureState.DONE,
    (Role.RESPONDER, SecureState.EXPECT_PREAMBLE, SecureInput.PREAMBLE): SecureState.EXPECT_HELLO,
    (Role.RESPONDER, SecureState.EXPECT_HELLO, SecureInput.HELLO): SecureState.EXPECT_NOISE3,
    (Role.RESPONDER, SecureState.EXPECT_NOISE3, SecureInput.NOISE): SecureState.DONE,
}
# REJECT has no row: it is always the end, reported as the reason it carries.


class ExchangeState(enum.Enum):
    """What a connection waits for after the secure handshake."""

    SECURING = "securing"  # the secure handshake is still running
    EXPECT_PURPOSE = "expect_purpose"  # responder: BootstrapRequest / ConnectRequest / EchoAddrReq
    CHECKING_REACHABILITY = "checking_reachability"  # responder: dialling back a Node's listeners
    EXPECT_CONNECT_REPLY = "expect_connect_reply"  # initiator of a connect: sent ConnectRequest(token)
    AWAIT_LOCAL_CONNECT = "await_local_connect"  # responder: a valid-looking ConnectRequest before our connect()
    EXPECT_CHOOSE = "expect_choose"  # a connect candidate of the smaller PeerId: waits for ChooseConnection
    EXPECT_GRANT = "expect_grant"  # initiator of a bootstrap
    EXPECT_ECHO = "expect_echo"  # initiator of an echo-address query
    ESTABLISHED = "established"


EXCHANGE: Mapping[tuple[Role, ExchangeState, str], ExchangeState] = {
    (Role.RESPONDER, ExchangeState.EXPECT_PURPOSE, "BootstrapRequest"): ExchangeState.ESTABLISHED,
    (Role.RESPONDER, ExchangeState.EXPECT_PURPOSE, "EchoAddrReq"): ExchangeState.EXPECT_PURPOSE,
    (Role.RESPONDER, ExchangeState.CHECKING_REACHABILITY, "EchoAddrReq"): ExchangeState.CHECKING_REACHABILITY,
    (Role.RESPONDER, ExchangeState.EXPECT_PURPOSE, "ConnectRequest"): ExchangeState.EXPECT_CHOOSE,
    (Role.INITIATOR, ExchangeState.EXPECT_CONNECT_REPLY, "ConnectRequest"): ExchangeState.EXPECT_CHOOSE,
    (Role.INITIATOR, ExchangeState.EXPECT_CHOOSE, "ChooseConnection"): ExchangeState.ESTABLISHED,
    (Role.RESPONDER, ExchangeState.EXPECT_CHOOSE, "ChooseConnection"): ExchangeState.ESTABLISHED,
    (Role.INITIATOR, ExchangeState.EXPECT_GRANT, "BootstrapGranted"): ExchangeState.ESTABLISHED,
    (Role.INITIATOR, ExchangeState.EXPECT_GRANT, "BootstrapDenied"): ExchangeState.EXPECT_GRANT,
    (Role.INITIATOR, ExchangeState.EXPECT_ECHO, "EchoAddrResp"): ExchangeState.EXPECT_ECHO,
    (Role.INITIATOR, ExchangeState.ESTABLISHED, "EchoAddrResp"): ExchangeState.ESTABLISHED,
    (Role.RESPONDER, ExchangeState.ESTABLISHED, "EchoAddrReq"): ExchangeState.ESTABLISHED,
    (Role.INITIATOR, ExchangeState.ESTABLISHED, "EchoAddrReq"): ExchangeState.ESTABLISHED,
    (Role.RESPONDER, ExchangeState.ESTABLISHED, "EchoAddrResp"): ExchangeState.ESTABLISHED,
}
# Heartbeat, Goodbye and Data are handled for every ESTABLISHED connection
# directly (the hot path); any other (role, state, message) is a violation.

S = TypeVar("S")
K = TypeVar("K", bound=Hashable)


def transition(table: Mapping[K, S], key: K) -> S:
    """The next state for ``key`` in ``table``.

    Raises:
        LocalProtocolError: the table has no row for ``key``.
    """
    try:
        return table[key]
    except KeyError:
        raise LocalProtocolError(f"no transition for {key!r}") from None
