"""The control half of an rUDP connection: its identity, handshake, resets, path challenges and path key.

:class:`Control` is the base of :class:`~crust.rudp.stream.RudpStream`: it
holds the connection's ids, the handshake's state and the path's (its
slots), and handles the datagrams that open, reset or move a connection
(SYN, COOKIE, RST, PATH); ``stream.py`` is the data path (data, acks, FIN,
probes), the timers and the close.

Theory of operation
-------------------
*Handshake and identity.*  SYN, SYN-ACK, ACK.  A stream that sent a SYN and
receives a plain SYN answers with a SYN-ACK, and a side is connected once its
SYN is acked, so crossing SYNs (simultaneous open) give each side one
``RudpConnected`` and one pair of ISNs.  SYNs are resent with RTO backoff
until ``connect_timeout``.  A COOKIE naming our id and ISN (a listener's
stateless answer, ``cookie.py``) makes SYN_SENT resend the SYN at once,
carrying the cookie from then on.  Each side picks a random nonzero 32-bit
id; a datagram whose ``dst`` is not ours (only a first SYN may say 0) or whose
``src`` is not the peer's is dropped, so a blind spoofer must guess both: 64
bits, the connection's token.  None of these datagrams is tagged (auth.py):
the path key comes from the secure handshake that runs once this one is over.

*Resets.*  An RST counts only at exactly the peer's next seq; elsewhere in
the window it gets a challenge ACK (RFC 5961 §3.2), which a peer that really
reset answers exactly from its TIME_WAIT.  Once keyed, an RST must carry a
right tag as well (``auth.py``), so even an on-path attacker, who sees the
seq, cannot reset the connection.

*Paths.*  :meth:`Control.path_challenge` makes the challenge the owner sends
to a new address of the peer's; the peer's answer to the latest one is
``Heard.PATH`` (``path.py``).  Once keyed, the answer carries a tag: an
answer that moves the connection comes from the peer, not from whoever saw
the nonce.
"""

from __future__ import annotations

import enum

from .auth import PathAuth
from .events import RudpConnected, RudpEvent
from .keepalive import Keepalive
from .packet import ACK, KEYED, MASK, SYN, pack_syn, unwrap
from .path import Heard, PathCheck
from .pmtu import Pmtu
from .receive import ReceiveBuffer
from .recovery import Recovery
from .send import SendBuffer

__all__ = ["State", "Control"]


class State(enum.Enum):
    """Where a stream is."""

    LISTEN = "listen"  # created; waits for connect() or a SYN
    SYN_SENT = "syn-sent"
    SYN_RCVD = "syn-received"
    ESTABLISHED = "established"  # also while closing: the FIN flags tell
    CLOSED = "closed"


class Control:
    """The handshake steps of :class:`~crust.rudp.stream.RudpStream` (its base; see the module docstring)."""

    __slots__ = (  # set in RudpStream.__init__
        "_local_id", "_remote_id", "_isn", "_irs", "_state", "_connect_timeout", "_handshake_deadline",
        "_syn_pending", "_syn_sent_at", "_syn_xmits", "_cookie",
        "_ack_pending", "_rst_pending", "_dropped",  # what the next datagrams must say; failed checks
        "_path",  # path validation (path.py)
        "_auth", "_mark", "_peer_keyed",  # datagram tags once keyed, KEYED or 0, the peer said KEYED (auth.py)
    )

    _local_id: int
    _remote_id: int
    _isn: int
    _irs: int
    _state: State
    _connect_timeout: float
    _handshake_deadline: float
    _syn_pending: bool
    _syn_sent_at: float
    _syn_xmits: int
    _cookie: bytes | None
    _ack_pending: bool
    _rst_pending: bool
    _dropped: int
    _path: PathCheck
    _auth: PathAuth | None
    _mark: int
    _peer_keyed: bool
    # The data path's parts, which the handshake starts (RudpStream's slots).
    _rec: Recovery
    _tx: SendBuffer
    _rx: ReceiveBuffer
    _live: Keepalive
    _pmtu: Pmtu
    _events: list[RudpEvent]

    @property
    def connected(self) -> bool:
        """True from the handshake's end until the stream closes (closing included)."""
        return self._state is State.ESTABLISHED

    @property
    def closed(self) -> bool:
        """True once closed: ``RudpClosed`` was queued, or :meth:`abort` was called."""
        return self._state is State.CLOSED

    @property
    def local_id(self) -> int:
        """Our connection id."""
        return self._local_id

    @property
    def remote_id(self) -> int:
        """The peer's connection id; 0 until its first datagram."""
        return self._remote_id

    @property
    def dropped(self) -> int:
        """Well-formed datagrams (or their data) dropped: wrong ids, out of window, bogus acks."""
        return self._dropped

    @property
    def keyed(self) -> bool:
        """True once :meth:`set_path_key` gave the stream its path key."""
        return self._auth is not None

    # -- the handshake -----------------------------------------------------------

    def connect(self, now: float) -> None:
        """Active open: send a SYN.  A no-op unless the stream is fresh (a SYN may have come first)."""
        if self._state is not State.LISTEN:
            return
        self._state = State.SYN_SENT
        self._tx.start()
        self._syn_pending = True
        self._handshake_deadline = now + self._connect_timeout

    def _opening_deadline(self) -> float:
        rto_deadline = self._rec.rto_deadline
        if rto_deadline is not None:
            return min(self._handshake_deadline, rto_deadline)
        return self._handshake_deadline

    def _opening_timer(self, now: float) -> None:
        rec = self._rec
        if now >= self._handshake_deadline:
            # A peer that got our SYN-ACK may think it is connected: tell it (best effort).
            self._rst_pending = self._state is State.SYN_RCVD
            self._finish("connect timed out")
        elif rec.rto_deadline is not None and now >= rec.rto_deadline:
            rec.rtt.back_off()
            self._syn_pending = True
            rec.rto_deadline = None  # re-armed when the SYN leaves

    def _on_cookie(self, cookie: bytes, ack: int, now: float) -> None:
        if self._state is not State.SYN_SENT or ack != self._isn:
            self._dropped += 1  # answers no SYN of ours (or one we are past)
            return
        if cookie == self._cookie:
            return  # a duplicate: the SYN carrying it is on its way
        if self._syn_xmits == 1:  # the cookie's round trip is a clean RTT sample (Karn)
            self._rec.rtt.sample(now - self._syn_sent_at)
        self._cookie = cookie
        self._syn_pending = True  # send it again at once, with the cookie ...
        self._syn_xmits = 0  # ... as a first transmission: the listener keeps state from that one on
        self._rec.rto_deadline = None

    def _on_syn(self, flags: int, src: int, seq: int, ack: int, window: int, now: float) -> None:
        state = self._state
        if flags & ACK and ack != (self._isn + 1) & MASK:
            self._dropped += 1  # acks a SYN we never sent
            return
        if state is State.LISTEN or state is State.SYN_SENT:
            if state is State.LISTEN and flags & ACK:
                self._dropped += 1
                return
            self._remote_id = src
            self._irs = seq
            self._rx.rcv_nxt = 1
            self._tx.start(window)
            self._live.last_heard = now
            if flags & ACK:  # our SYN answered
                self._establish(now)
                self._ack_pending = True
            else:  # passive open, or the SYNs crossed: answer with a SYN-ACK
                if state is State.LISTEN:
                    self._handshake_deadline = now + self._connect_timeout
                self._state = State.SYN_RCVD
                self._syn_pending = True
            return
        if seq != self._irs:
            self._dropped += 1  # a SYN of some other connection attempt
            return
        self._live.last_heard = now
        if state is State.SYN_RCVD:
            if flags & ACK:  # crossing SYN-ACK in a simultaneous open
                self._tx.start(window)
                self._establish(now)
                self._ack_pending = True
            else:
                self._syn_pending = True  # our SYN-ACK was lost: resend it
        else:
            # A late SYN or SYN-ACK.  The peer got our SYN (it acked it), so it is at
            # least in SYN_RCVD, and a bare ACK is all it can still be waiting for.
            self._ack_pending = True

    def _establish(self, now: float) -> None:
        self._state = State.ESTABLISHED
        self._tx.snd_una = 1
        self._rec.on_established(now, self._syn_sent_at, self._syn_xmits)
        self._syn_pending = False
        self._live.last_heard = now
        self._pmtu.start(now)
        self._events.append(RudpConnected())

    def _send_syn(self, now: float, out: list[bytes]) -> None:
        """Our SYN (SYN_SENT) or SYN-ACK (SYN_RCVD), if one is due."""
        if not self._syn_pending:
            return
        self._syn_pending = False
        if self._state is State.SYN_SENT:
            out.append(pack_syn(self._local_id, self._isn, self._rx.window(), self._cookie))
        else:
            out.append(self._bare(SYN | ACK, self._isn))
        self._syn_sent_at = now
        self._syn_xmits += 1
        self._rec.rto_deadline = now + self._rec.rtt.rto

    # -- paths and the path key ---------------------------------------------------

    def path_challenge(self, nonce: bytes) -> bytes:
        """A PATH challenge for the owner to send to a new address of the peer's; it replaces any earlier one.

        The peer answers it with its next datagrams; that answer makes
        :meth:`receive_datagram` return ``Heard.PATH``.

        Args:
            nonce: ``NONCE_SIZE`` (12) bytes from the owner's CSPRNG.

        Raises:
            ValueError: the nonce is not 12 bytes, or the stream is not connected.
        """
        if self._state is not State.ESTABLISHED:
            raise ValueError("only a connected stream can challenge a path")
        return self._sealed(self._path.challenge(nonce, self._remote_id, self._local_id))

    def set_path_key(self, key: bytes) -> None:
        """Key the stream with the secure channel's path key (``auth.py``).

        From now on every datagram says ``KEYED`` and every FIN, RST and PATH
        answer carries a tag; the peer's must too once it has said ``KEYED``.

        Args:
            key: the path key (``NoiseXX.path_key``), 32 bytes, the same at both ends.

        Raises:
            TypeError: ``key`` is not bytes.
            ValueError: ``key`` is not 32 bytes, or the stream is keyed already.
        """
        if self._auth is not None:
            raise ValueError("the stream has its path key already")
        self._auth = PathAuth(key, enforce=self._peer_keyed)
        self._mark = KEYED

    @property
    def path_auth(self) -> PathAuth | None:
        """The stream's tagging state once keyed (its socket's TIME_WAIT keeps it), else None."""
        return self._auth

    def _sealed(self, datagram: bytes) -> bytes:
        return datagram if self._auth is None else self._auth.seal(datagram)

    def _on_path(self, flags: int, nonce: bytes, now: float) -> Heard:
        heard = self._path.receive(flags, nonce) if self._state is State.ESTABLISHED else None
        if heard is None:
            self._dropped += 1
            return Heard.NOTHING
        if heard is Heard.PATH:
            self._live.last_heard = now
        return heard

    # -- resets, and what RudpStream provides -----------------------------------------

    def _on_rst(self, flags: int, seq: int, ack: int) -> None:
        state = self._state
        if state is State.LISTEN:
            accept = False
        elif state is State.SYN_SENT:  # the peer's id is unknown: the RST must ack our SYN
            accept = bool(flags & ACK) and ack == (self._isn + 1) & MASK
        else:  # seq must be where the peer's data ends, inside our window
            rcv_nxt = self._rx.rcv_nxt
            off = unwrap(seq, rcv_nxt, self._irs)
            accept = off == rcv_nxt
            if not accept and rcv_nxt < off <= rcv_nxt + self._rx.window() + 1:
                self._ack_pending = True  # a challenge ACK: a real reset answers it exactly
        if not accept:
            self._dropped += 1
            return
        self._ack_pending = False
        self._finish("connection refused" if state is State.SYN_SENT else "connection reset by peer")

    def _finish(self, error: str | None, *, event: bool = True) -> None:
        raise NotImplementedError  # RudpStream's

    def _bare(self, flags: int, seq: int) -> bytes:
        raise NotImplementedError  # RudpStream's
