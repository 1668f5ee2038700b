"""Reliable UDP (PROTOCOL.md §10): a sans-IO machine that turns datagrams into a TCP-like stream.

``RudpStream`` is one connection.  It reads no clock and touches no socket:
the owner (``transport.udp.RudpConnection``) feeds it datagrams and ``now``
(seconds), sends what ``datagrams_to_send`` returns, drains ``take_events``
and calls ``handle_timer`` at ``get_timer``.  After *every* call that can
change state the owner collects ``datagrams_to_send``, even if the stream
has just closed: the last ACK of a close and the RST of an abort leave so.

The wire format is in ``packet.py``, loss recovery and congestion control in
``recovery.py``, the write buffer and the peer's window in ``send.py``,
reassembly and our receive window in ``receive.py``, PING scheduling in
``keepalive.py``, the control datagrams in ``control.py``, tags in
``auth.py``; this module is the connection: timers, receiving, sending and
close.

Theory of operation
-------------------
*Sequence space.*  As in TCP, sequence numbers count bytes and the SYN and
FIN take one each (ISN ``i``: SYN ``i``, stream byte ``k`` at ``i + 1 + k``);
inside, offsets from the ISN (see ``packet.unwrap``).

*Identity, handshake, resets, paths and the path key* are the base class's
(:class:`~crust.rudp.control.Control`): a datagram whose ids are not the
connection's 64-bit token is dropped, and once :meth:`set_path_key` has
keyed the stream (the secure channel above is up) it tags its datagrams and,
once the peer has keyed too, drops one without a right tag before it can
move or end anything (``auth.py``; counted in ``unauthenticated``).

*Datagram size.*  Data datagrams start at 1247 bytes and grow as path MTU
discovery (``pmtu.py``, opt-in through ``max_datagram``) confirms larger
ones: PROBEs ride the stream's timer, their answers set the segment size of
new data, and two RTOs in a row fall back to the base and re-cut what is
unacknowledged.

*Following the peer* to a new address is its owner's job (the stream knows
no addresses): ``receive_datagram`` says what a datagram was
(:class:`~crust.rudp.path.Heard`).

*Acknowledgements.*  Every datagram carries the cumulative ack, the window
and up to ``MAX_SACK_BLOCKS`` SACK ranges (the newest arrival's first, then
the lowest, RFC 2018).  What arrives between two ``datagrams_to_send`` calls
is acked once by that call, on data if any is sent; no delayed-ack timer.

*Timers.*  One deadline (``get_timer``) covers the handshake, the RTO,
RACK's reordering window and the tail-loss probe (``recovery.py``), the persist probe (``send.py``), the keep-alive PING and
the idle timeout (``keepalive.py``).  ``MAX_RTO_RETRIES`` retransmission
timeouts in a row, or ``idle_timeout`` with nothing heard, end the stream
("timed out").  A PING, for a keep-alive or a window probe, is an ACK the
peer must answer.

*Closing.*  ``close()`` queues a FIN after the data; the peer's FIN, once
every byte before it is in, makes us queue ours (no half-close).  Our FIN
acked, theirs in and nothing held back: ``RudpClosed(None)``, after which
nothing but ``resume_reading`` is awaited.  TIME_WAIT is the socket's
(``timewait.py``, which answers a resent FIN with :meth:`final_ack`); the
last ACK is also sent twice, and a side whose peer's FIN is in and whose
only unacked segment is its FIN calls the close orderly after
``_FIN_RETRIES`` timeouts with the peer silent.  ``abort()`` sends an RST
and closes with no event.  A received RST that passes its checks gives
``RudpClosed("connection reset by peer")`` (or "connection refused" in
answer to our SYN).

*Hostile input* that does not parse is counted in ``malformed``; well-formed
datagrams failing a check (ids, acks for data never sent, data past the
window, an inexact RST) in ``dropped``; a wrong or missing tag in ``unauthenticated``.  Neither raises, grows state beyond
the window, nor closes the stream: acks and sequence numbers outside the
window are ignored, never treated as the peer's error.
"""

from __future__ import annotations

from .auth import PathAuth
from .events import RudpClosed, RudpData, RudpEvent, RudpSent
from .keepalive import Keepalive
from .control import Control, State
from .packet import (ACK, COOKIE, FIN, HALF, HEADER, HEADER_SIZE, MAGIC, MASK, MAX_DATAGRAM, MAX_PAYLOAD, PATH, PING,
                     PROBE, RST, SYN, TAG_SIZE, TAGGED, KEYED, parse_header, path_nonce, sack_offsets, unwrap)
from .path import Heard, PathCheck
from .pmtu import Pmtu
from .receive import ReceiveBuffer
from .recovery import MAX_RTO_RETRIES, Recovery, Segment
from .send import SendBuffer

__all__ = ["RudpStream"]

_FIN_RETRIES = 3  # timeouts on a last FIN whose peer has closed too before calling the close orderly


class RudpStream(Control):
    """One reliable-UDP connection as a sans-IO machine (see the module docstring)."""

    __slots__ = (  # the connection's identity, handshake, path and key are Control's
        # the parts: sender's recovery state, send and receive halves, liveness
        "_rec", "_tx", "_rx", "_live",
        # what the next datagrams must say, what the owner must hear
        "_ping_pending", "_events", "_malformed", "_unauthenticated",
        "_pmtu",  # path MTU discovery (pmtu.py)
    )

    def __init__(
        self,
        local_id: int,
        initial_seq: int,
        now: float,
        *,
        keepalive_interval: float = 15.0,
        idle_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        receive_window: float = 256 * 1024,
        max_datagram: float = MAX_DATAGRAM,
    ) -> None:
        """Create a stream in the listening state: call :meth:`connect`, or feed it a SYN.

        Args:
            local_id: our connection id, random, 1..2**32-1 (the caller's CSPRNG).
            initial_seq: our ISN, random, 0..2**32-1.
            now: the current time in seconds.
            keepalive_interval: seconds without sending after which a connected
                stream sends a PING (NAT mappings commonly expire after 30 s+).
            idle_timeout: seconds without hearing the peer after which the
                stream closes with "timed out".
            connect_timeout: seconds the handshake may take.
            receive_window: bytes the peer may have in flight to us; bounds our
                receive buffers (held while paused, plus out of order).  Typed
                float so an owner's ``dict[str, float]`` of options fits; the
                value is truncated to an int.
            max_datagram: the largest datagram (bytes, the header included) path
                MTU discovery may try; the default, 1247, never probes.

        Raises:
            ValueError: an id, ISN, duration, window or datagram size is out of range.
        """
        window = int(receive_window)
        if not 0 < local_id <= MASK:
            raise ValueError(f"local_id must be in 1..2**32-1, got {local_id}")
        if not 0 <= initial_seq <= MASK:
            raise ValueError(f"initial_seq must be in 0..2**32-1, got {initial_seq}")
        if not MAX_PAYLOAD <= window < HALF:  # below 2**31 keeps the 32-bit unwrapping exact
            raise ValueError(f"receive_window must be in {MAX_PAYLOAD}..2**31-1 bytes, got {receive_window}")
        if min(keepalive_interval, idle_timeout, connect_timeout) <= 0:
            raise ValueError("keepalive_interval, idle_timeout and connect_timeout must be positive")
        self._local_id = local_id
        self._remote_id = 0
        self._isn = initial_seq
        self._irs = 0
        self._state = State.LISTEN
        self._connect_timeout = connect_timeout
        self._handshake_deadline = now + connect_timeout
        self._syn_pending = False
        self._syn_sent_at = 0.0
        self._syn_xmits = 0
        self._cookie: bytes | None = None  # the listener's, once it sent one: our SYNs carry it
        self._rec = Recovery()
        self._tx = SendBuffer()  # offsets: 0 is our SYN
        self._rx = ReceiveBuffer(window)  # offsets: 0 is the peer's SYN
        self._live = Keepalive(keepalive_interval, idle_timeout, now)
        self._ack_pending = False
        self._ping_pending = False
        self._rst_pending = False
        self._events: list[RudpEvent] = []
        self._malformed = 0
        self._dropped = 0
        self._path = PathCheck()
        self._auth: PathAuth | None = None
        self._mark = 0  # KEYED once keyed: in the n byte of all we send
        self._peer_keyed = False
        self._unauthenticated = 0
        self._pmtu = Pmtu(int(max_datagram))

    # -- properties ------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes written but not yet acknowledged by the peer."""
        return self._tx.pending_bytes

    @property
    def buffered_bytes(self) -> int:
        """Received bytes we hold: held back by :meth:`pause_reading` plus out of order."""
        return self._rx.buffered_bytes

    @property
    def srtt(self) -> float | None:
        """Smoothed round-trip time in seconds; None before the first sample."""
        return self._rec.rtt.srtt

    @property
    def rto(self) -> float:
        """Current retransmission timeout in seconds, backoff included."""
        return self._rec.rtt.rto

    @property
    def cwnd(self) -> int:
        """Congestion window in bytes."""
        return self._rec.cwnd

    @property
    def retransmits(self) -> int:
        """Segments sent again (fast retransmit, RACK, tail-loss probes, recovery and timeouts)."""
        return self._rec.retransmits

    @property
    def timeouts(self) -> int:
        """Retransmission timer expiries with data outstanding."""
        return self._rec.timeouts

    @property
    def malformed(self) -> int:
        """Datagrams dropped because they did not parse."""
        return self._malformed

    @property
    def unauthenticated(self) -> int:
        """Datagrams with the connection's ids dropped for their tag: wrong, or missing once required."""
        return self._unauthenticated

    # -- commands --------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue stream bytes (without limit: the owner paces itself by ``RudpSent``).

        Writes after :meth:`close`, after the peer's FIN or once closed are
        ignored, as ``TcpStream.write`` ignores them: the owner closed, or
        will learn through ``RudpClosed``.  Writes before the handshake ends
        are sent once it does.
        """
        if self._tx.fin_queued or self._state is State.CLOSED or not data:
            return
        self._tx.write(data)

    def close(self, now: float) -> None:
        """Close in order: FIN after the queued data; ``RudpClosed(None)`` when both FINs are acked."""
        if self._state is State.CLOSED:
            return
        if self._state is State.LISTEN:
            self._finish(None)
            return
        self._tx.fin_queued = True

    def abort(self, now: float) -> None:
        """Reset: send an RST (if the peer is known) and close at once; no event follows, not even queued ones."""
        if self._state is State.CLOSED:
            return
        self._rst_pending = self._remote_id != 0
        self._finish(None, event=False)
        self._events.clear()
        self._rx.chunks.clear()
        self._tx.newly_acked = 0

    def pause_reading(self) -> None:
        """Hold back ``RudpData``; the advertised window shrinks as the held bytes grow."""
        self._rx.pause()

    def resume_reading(self) -> None:
        """Deliver what was held back and advertise the reopened window at once."""
        if not self._rx.paused:
            return
        if self._rx.resume() and self._state is State.ESTABLISHED:
            self._ack_pending = True  # window update; the peer's persist probes are the fallback
        self._maybe_finish()

    def take_events(self) -> list[RudpEvent]:
        """Every event since the last call, in order."""
        self._flush_stream_events()
        events, self._events = self._events, []
        return events

    # -- timers ----------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The absolute time of the next deadline, or None."""
        state = self._state
        rto_deadline = self._rec.rto_deadline
        if state is State.ESTABLISHED:
            if self._tx.fin_acked and self._rx.fin_in:
                return None  # the network part is over: only resume_reading() is awaited
            when = self._live.idle_deadline()
            if not self._ping_pending:
                when = min(when, self._live.ping_deadline())
            if rto_deadline is not None:
                when = min(when, rto_deadline)
            loss_deadline = self._rec.loss_deadline
            if loss_deadline is not None:
                when = min(when, loss_deadline)
            persist_deadline = self._tx.persist_deadline
            if persist_deadline is not None:
                when = min(when, persist_deadline)
            probe_deadline = self._pmtu.deadline()
            if probe_deadline is not None:
                when = min(when, probe_deadline)
            return when
        if state is State.SYN_SENT or state is State.SYN_RCVD:
            return self._opening_deadline()
        return None

    def handle_timer(self, now: float) -> None:
        """Act on every deadline that has passed (early calls are harmless)."""
        state = self._state
        rec = self._rec
        if state is State.SYN_SENT or state is State.SYN_RCVD:
            self._opening_timer(now)
            return
        if state is not State.ESTABLISHED or (self._tx.fin_acked and self._rx.fin_in):
            return
        if now >= self._live.idle_deadline():
            self._finish("timed out")
            return
        if rec.rto_deadline is not None and now >= rec.rto_deadline:
            self._on_rto(now)
            if self._state is State.CLOSED:
                return
        loss_deadline = rec.loss_deadline
        if loss_deadline is not None and now >= loss_deadline:
            rec.on_loss_timer(now, self._tx.snd_una, self._tx.snd_nxt)
        persist_deadline = self._tx.persist_deadline
        if persist_deadline is not None and now >= persist_deadline:
            self._ping_pending = True
            self._tx.on_persist_timer(now)
        if now >= self._live.ping_deadline():
            self._ping_pending = True
        self._pmtu.on_timer(now, rec.rtt.rto)

    def _on_rto(self, now: float) -> None:
        rec, tx = self._rec, self._tx
        rec.count_timeout(now)
        if self._rx.fin_in and tx.snd_una == tx.fin_off and rec.consecutive_rtos > _FIN_RETRIES \
                and self._live.last_heard < rec.first_rto_at:
            # All was delivered both ways and only our FIN is unacked; the peer has been
            # silent since we began resending it, so it most likely finished and its last
            # ACK was lost (there is no TIME_WAIT).  Unacked *data* never ends this way:
            # a peer with nothing to send is silent too, and data must not be given up on.
            self._finish(None)
            return
        if rec.consecutive_rtos > MAX_RTO_RETRIES:
            self._finish("timed out")
            return
        rec.on_timeout(now, tx.snd_una, tx.snd_nxt)
        if rec.consecutive_rtos >= 2 and self._pmtu.black_hole(now):  # the path may have shrunk
            tx.mss = self._pmtu.payload
            rec.resegment(tx.mss)

    # -- receiving ---------------------------------------------------------------

    def receive_datagram(self, datagram: bytes, now: float) -> Heard:
        """Take one datagram addressed to this stream (a SYN included).  Never raises.

        Returns:
            ``Heard.PEER`` if, as far as rUDP can tell, it came from the peer
            and is not stale: a connected stream's datagram with both ids
            right and an ack neither beyond what we sent nor behind what the
            peer acked before.  ``Heard.PATH`` for the peer's answer to our
            latest :meth:`path_challenge`.  ``Heard.NOTHING`` otherwise.
        """
        if self._state is State.CLOSED:
            return Heard.NOTHING
        header = parse_header(datagram)
        if header is None:
            self._malformed += 1
            return Heard.NOTHING
        flags, dst, src, seq, ack, window, nsack, payload_at = header
        if payload_at < 0:
            self._malformed += 1
            return Heard.NOTHING
        if (dst != self._local_id and not (dst == 0 and flags == SYN)) \
                or (self._remote_id and src != self._remote_id):
            self._dropped += 1
            return Heard.NOTHING
        mark = datagram[22]
        end = len(datagram) - TAG_SIZE if mark & TAGGED else len(datagram)
        auth = self._auth
        if auth is None:
            self._peer_keyed = self._peer_keyed or bool(mark & KEYED)
        elif not auth.accepts(datagram):
            self._unauthenticated += 1  # forged, or altered: it moves and ends nothing
            return Heard.NOTHING
        if flags & (RST | SYN | COOKIE | PATH | PROBE):
            if flags & PATH:
                return self._on_path(flags, path_nonce(datagram), now)
            if flags & PROBE:
                self._on_probe(flags, seq, ack, len(datagram), now)
            elif flags & RST:
                self._on_rst(flags, seq, ack)
            elif flags & SYN:
                self._on_syn(flags, src, seq, ack, window, now)
            else:
                self._on_cookie(datagram[HEADER_SIZE:], ack, now)
            return Heard.NOTHING
        state = self._state
        if state is State.SYN_RCVD:
            if ack != (self._isn + 1) & MASK:
                self._dropped += 1
                return Heard.NOTHING
            self._establish(now)
        elif state is not State.ESTABLISHED:
            self._dropped += 1  # LISTEN and SYN_SENT only take SYNs
            return Heard.NOTHING
        tx = self._tx
        una = tx.snd_una
        ack_off = unwrap(ack, una, self._isn)
        if ack_off > tx.snd_nxt:
            self._dropped += 1  # acks data never sent: spoofed or broken
            return Heard.NOTHING
        self._live.last_heard = now
        if ack_off >= una:
            sacks = sack_offsets(datagram, nsack, una, self._isn) if nsack else []
            self._rec.on_ack(una, ack_off, sacks, tx.snd_nxt, now)
            tx.on_ack(ack_off, window)
        if payload_at < end or flags & FIN:
            self._on_data(seq, datagram[payload_at:end], bool(flags & FIN))
        if flags & PING:
            self._ack_pending = True
        self._maybe_finish()
        return Heard.PEER if ack_off >= una else Heard.NOTHING

    def _on_probe(self, flags: int, probe_id: int, size: int, arrived: int, now: float) -> None:
        if self._state is not State.ESTABLISHED:
            self._dropped += 1
        elif self._pmtu.receive(flags, probe_id, size, arrived, now):
            self._tx.mss = self._rec.mss = self._pmtu.payload

    def _on_data(self, seq: int, payload: bytes, fin: bool) -> None:
        self._ack_pending = True  # even duplicates: our ACK may be what was lost
        rx = self._rx
        if not rx.receive(unwrap(seq, rx.rcv_nxt, self._irs), payload, fin):
            self._dropped += 1  # past the window, or past / moving the peer's FIN
        elif rx.fin_in:
            self._tx.fin_queued = True  # no half-close: answer the FIN with ours

    def _maybe_finish(self) -> None:
        if self._tx.fin_acked and self._rx.fin_in and not self._rx.has_held and self._state is State.ESTABLISHED:
            self._finish(None)

    def _finish(self, error: str | None, *, event: bool = True) -> None:
        self._state = State.CLOSED
        if error is not None:
            self._ack_pending = False
        if event:
            self._flush_stream_events()
            self._events.append(RudpClosed(error))
        self._rec.clear()
        self._tx.clear()
        self._rx.drop_out_of_order()
        self._syn_pending = self._ping_pending = False

    def _flush_stream_events(self) -> None:
        tx = self._tx
        if tx.newly_acked:
            self._events.append(RudpSent(tx.newly_acked))
            tx.newly_acked = 0
        if self._rx.chunks:
            self._events.append(RudpData(self._rx.take()))

    # -- sending -----------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Everything to transmit now: SYNs, data within min(cwnd, window), ACKs, PINGs, FIN, RST."""
        out: list[bytes] = []
        state = self._state
        if state is State.ESTABLISHED:
            self._send_established(now, out)
        elif state is State.SYN_SENT or state is State.SYN_RCVD:
            self._send_syn(now, out)
        elif state is State.CLOSED and self._remote_id:
            if self._rst_pending:
                out.append(self._bare(RST | ACK, (self._isn + self._tx.snd_nxt) & MASK))
            elif self._ack_pending:  # the last ACK of a close: nothing will repeat it, so send it twice
                out += [self._bare(ACK, (self._isn + self._tx.snd_nxt) & MASK)] * 2
            self._rst_pending = self._ack_pending = False
        if out:
            self._live.last_sent = now
        return out

    def final_ack(self) -> bytes | None:
        """For a stream closed after the peer's FIN: the ACK of that FIN, to answer it again; else None."""
        if self._state is not State.CLOSED or not self._rx.fin_in or not self._remote_id:
            return None
        return self._bare(ACK, (self._isn + self._tx.snd_nxt) & MASK)

    def _bare(self, flags: int, seq: int) -> bytes:
        """A datagram without payload or SACK blocks, acking what we have (tagged once keyed)."""
        ack = (self._irs + self._rx.rcv_nxt) & MASK
        return self._sealed(HEADER.pack(MAGIC, flags, self._remote_id, self._local_id, seq, ack, self._rx.window(),
                                        self._mark))

    def _send_established(self, now: float, out: list[bytes]) -> None:
        # The hot path: every name the loops use is a local.
        rx, rec = self._rx, self._rec
        sack, nsack = rx.sack_blocks(self._irs)
        pack = HEADER.pack
        ack = (self._irs + rx.rcv_nxt) & MASK
        window = rx.window()
        remote, local, isn = self._remote_id, self._local_id, self._isn
        on_sent = rec.on_sent
        auth, marked = self._auth, nsack | self._mark

        def emit(seg: Segment) -> None:
            if seg.fin and auth is not None:  # a FIN ends the connection: tagged (auth.py)
                out.append(auth.join(pack(MAGIC, ACK | FIN, remote, local, (isn + seg.start) & MASK, ack, window,
                                          marked | TAGGED), sack, seg.data))
            else:
                out.append(pack(MAGIC, ACK | FIN if seg.fin else ACK, remote, local, (isn + seg.start) & MASK, ack,
                                window, marked) + sack + seg.data)
            on_sent(seg, now)

        self._tx.send_segments(rec, emit, now)
        # 4. A bare ACK if nothing above carried one; a PING asks the peer to answer.
        if out:
            self._ping_pending = False
        elif self._ack_pending or self._ping_pending:
            flags = ACK
            if self._ping_pending:
                flags |= PING
                self._live.on_ping_sent(now, rec.rtt.rto)
            out.append(pack(MAGIC, flags, remote, local, (isn + self._tx.snd_nxt) & MASK, ack, window, marked) + sack)
            self._ping_pending = False
        self._ack_pending = False
        answer = self._path.take_answer(remote, local)
        if answer is not None:
            out.append(self._sealed(answer))
        self._pmtu.take_datagrams(remote, local, out)
