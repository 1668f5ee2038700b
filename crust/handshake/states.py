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

The exchange's inputs are the peer's messages (by class name) and our own
``Decision`` values (what finished securing a dial, what we decided about a
request); every state change of a connection goes through ``EXCHANGE``, so
the table is the whole machine and its diagram can be printed from it.

Each machine asks :func:`transition` for its next state.  A pair missing
from a table raises :class:`~crust.errors.LocalProtocolError`; the machine
fed by the remote side re-labels it as a remote error (h11's strategy).
"""

from __future__ import annotations

import enum
from typing import Hashable, Mapping, TypeVar, Union

from ..errors import LocalProtocolError

__all__ = ["Role", "SecureState", "SecureInput", "SECURE", "ExchangeState", "Decision", "ExchangeInput", "EXCHANGE",
           "transition"]


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
    """What a connection waits for after the secure handshake.

    ``JUDGING_*`` states are transient: a message puts the connection there,
    and the handler's decision moves it on before the input returns.
    """

    SECURING = "securing"  # the secure handshake is still running
    EXPECT_PURPOSE = "expect_purpose"  # responder: BootstrapRequest / ConnectRequest / EchoAddrReq
    JUDGING_BOOTSTRAP = "judging_bootstrap"  # responder: deciding on a BootstrapRequest
    CHECKING_REACHABILITY = "checking_reachability"  # responder: dialling back a Node's listeners
    EXPECT_CONNECT_REPLY = "expect_connect_reply"  # initiator of a connect: sent ConnectRequest(token)
    JUDGING_CONNECT = "judging_connect"  # either side: deciding on a ConnectRequest
    AWAIT_LOCAL_CONNECT = "await_local_connect"  # responder: a valid-looking ConnectRequest before our connect()
    EXPECT_CHOOSE = "expect_choose"  # a connect candidate of the smaller PeerId: waits for ChooseConnection
    EXPECT_GRANT = "expect_grant"  # initiator of a bootstrap
    EXPECT_ECHO = "expect_echo"  # initiator of an echo-address query (an observer connection)
    ESTABLISHED = "established"  # carries a peer (or retires after a duplicate race)
    CLOSED = "closed"  # finished: the engine has forgotten it


class Decision(enum.Enum):
    """Inputs that come from our side: what secured a connection, and what we decided about a request."""

    SECURED = "secured"  # responder: the secure handshake finished
    SECURED_BOOTSTRAP = "secured_bootstrap"  # initiator: ... on a bootstrap dial (sends BootstrapRequest)
    SECURED_CONNECT = "secured_connect"  # initiator: ... on a connect candidate (sends ConnectRequest)
    SECURED_ECHO = "secured_echo"  # initiator: ... on an observer connection (sends EchoAddrReq)
    SECURED_PROBE = "secured_probe"  # initiator: ... on a reachability dial-back (the proof; it closes)
    GRANT = "grant"  # a bootstrap request is granted
    DENY = "deny"  # ... or denied
    CHECK_REACHABILITY = "check_reachability"  # ... or waits for the dial-back to the Node's listeners
    PARK = "park"  # a ConnectRequest before our own connect(): hold it
    LOCAL_CONNECT = "local_connect"  # our connect() began: judge the parked request again
    CHOOSE = "choose"  # the greater PeerId picks this candidate (sends ChooseConnection)
    AWAIT_CHOICE = "await_choice"  # the smaller PeerId accepts and waits for the choice
    REFUSE = "refuse"  # the candidate is not wanted (wrong token, banned, already connected)
    FAIL = "fail"  # the stream ended, a deadline passed or the peer broke the protocol


_I, _R = Role.INITIATOR, Role.RESPONDER
_S = ExchangeState
ExchangeInput = Union[str, Decision]  # a message class name (the peer's input) or one of our decisions

EXCHANGE: Mapping[tuple[Role, ExchangeState, ExchangeInput], ExchangeState] = {
    # initiator: the purpose of the dial decides the first message
    (_I, _S.SECURING, Decision.SECURED_BOOTSTRAP): _S.EXPECT_GRANT,
    (_I, _S.SECURING, Decision.SECURED_CONNECT): _S.EXPECT_CONNECT_REPLY,
    (_I, _S.SECURING, Decision.SECURED_ECHO): _S.EXPECT_ECHO,
    (_I, _S.SECURING, Decision.SECURED_PROBE): _S.CLOSED,
    (_I, _S.EXPECT_GRANT, "BootstrapGranted"): _S.ESTABLISHED,
    (_I, _S.EXPECT_GRANT, "BootstrapDenied"): _S.CLOSED,
    (_I, _S.EXPECT_ECHO, "EchoAddrResp"): _S.CLOSED,
    (_I, _S.EXPECT_CONNECT_REPLY, "ConnectRequest"): _S.JUDGING_CONNECT,
    (_I, _S.EXPECT_CHOOSE, "ChooseConnection"): _S.ESTABLISHED,
    # responder: the first message says why the initiator came
    (_R, _S.SECURING, Decision.SECURED): _S.EXPECT_PURPOSE,
    (_R, _S.EXPECT_PURPOSE, "EchoAddrReq"): _S.EXPECT_PURPOSE,
    (_R, _S.EXPECT_PURPOSE, "BootstrapRequest"): _S.JUDGING_BOOTSTRAP,
    (_R, _S.JUDGING_BOOTSTRAP, Decision.GRANT): _S.ESTABLISHED,
    (_R, _S.JUDGING_BOOTSTRAP, Decision.DENY): _S.CLOSED,
    (_R, _S.JUDGING_BOOTSTRAP, Decision.CHECK_REACHABILITY): _S.CHECKING_REACHABILITY,
    (_R, _S.CHECKING_REACHABILITY, "EchoAddrReq"): _S.CHECKING_REACHABILITY,
    (_R, _S.CHECKING_REACHABILITY, Decision.GRANT): _S.ESTABLISHED,
    (_R, _S.CHECKING_REACHABILITY, Decision.DENY): _S.CLOSED,
    (_R, _S.EXPECT_PURPOSE, "ConnectRequest"): _S.JUDGING_CONNECT,
    (_R, _S.JUDGING_CONNECT, Decision.PARK): _S.AWAIT_LOCAL_CONNECT,
    (_R, _S.AWAIT_LOCAL_CONNECT, Decision.LOCAL_CONNECT): _S.JUDGING_CONNECT,
    (_R, _S.EXPECT_CHOOSE, "ChooseConnection"): _S.ESTABLISHED,
    # either side of a connect candidate
    **{(role, _S.JUDGING_CONNECT, decision): target for role in Role for decision, target in (
        (Decision.CHOOSE, _S.ESTABLISHED), (Decision.AWAIT_CHOICE, _S.EXPECT_CHOOSE), (Decision.REFUSE, _S.CLOSED))},
    # an established connection: the hot path (Data, Heartbeat, Goodbye, peer exchange) skips the
    # lookup, but the rows are here so the table is the whole machine
    **{(role, _S.ESTABLISHED, message): _S.ESTABLISHED for role in Role for message in (
        "Data", "Heartbeat", "Goodbye", "EchoAddrReq", "EchoAddrResp", "PeerExchangeRequest",
        "PeerExchangeResponse")},
    # any live connection may fail
    **{(role, state, Decision.FAIL): _S.CLOSED for role in Role for state in _S if state is not _S.CLOSED},
}
# Any other (role, state, input) is a violation: the peer's input raises
# LocalProtocolError, re-labelled RemoteProtocolError by the engine.

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
