"""Small shared builders for the sans-IO tests (h11's ConnectionPair, aioquic's client_and_server).

Nothing here opens a socket or reads a clock: machines are wired back to
back in memory and bytes are moved between them by hand.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterator, TypeVar

from crust.channel import SecureChannel
from crust.crypto.keys import KeyPair
from crust.handshake.secure import SecureHandshake
from crust.ids import PeerId, name_hash

DEFAULT_MAX_MESSAGE = 2 * 1024 * 1024  # bytes, Config.max_message_size's default
# The one bound of every test's wait for an event that should come promptly (a callback, a
# socket closing, a thread joining): generous, so a loaded machine does not fail a test, and
# never spent by a passing one.  Windows that prove an *absence* are short and named where used.
WAIT = 10.0  # seconds

F = TypeVar("F", bound=Callable[..., None])


def both_modes(test: F) -> F:
    """Run ``test(..., one_byte=...)`` with ``one_byte=False`` and then ``True``, as one test item.

    h11's rule (every decoder test also runs byte at a time) without doubling
    the number of items; a failure is annotated with the mode that failed.
    """

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        for one_byte in (False, True):
            try:
                test(*args, one_byte=one_byte, **kwargs)
            except BaseException as exc:
                exc.add_note(f"[input fed {'one byte at a time' if one_byte else 'in one chunk'}]")
                raise

    signature = inspect.signature(test)
    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "one_byte"]
    )
    return run  # type: ignore[return-value]


def bytewise(data: bytes) -> Iterator[bytes]:
    """``data`` one byte at a time (as ``bytes`` of length 1, never ints)."""
    for i in range(len(data)):
        yield data[i:i + 1]


def _collect(result: Any, out: list[Any]) -> None:
    if isinstance(result, list):
        out.extend(result)
    elif result is not None:
        out.append(result)


def feed_bytewise(fn: Callable[[bytes], Any], data: bytes) -> list[Any]:
    """Call ``fn`` with each byte of ``data``; collect what it returns.

    A returned list is flattened into the result and ``None`` is skipped, so
    ``feed_bytewise(channel.receive_data, data)`` gives the same list of
    messages as ``channel.receive_data(data)`` does.
    """
    out: list[Any] = []
    for byte in bytewise(data):
        _collect(fn(byte), out)
    return out


def feed(fn: Callable[[bytes], Any], data: bytes, *, one_byte: bool = False) -> list[Any]:
    """Feed ``data`` to ``fn`` in one chunk, or byte at a time; results as :func:`feed_bytewise`."""
    if one_byte:
        return feed_bytewise(fn, data)
    out: list[Any] = []
    _collect(fn(data), out)
    return out


def handshake_pair(
    network_a: str | None = None,
    network_b: str | None = None,
    expected: PeerId | None = None,
    *,
    static_a: KeyPair | None = None,
    static_b: KeyPair | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE,
) -> tuple[SecureHandshake, SecureHandshake]:
    """An initiator (``a``, network ``network_a``) and a responder (``b``) with fresh static keys.

    ``expected`` is the PeerId the initiator insists on.  Pass ``static_a`` /
    ``static_b`` to choose the key pairs (e.g. to know the PeerIds, or to use
    one key on both sides).
    """
    a = SecureHandshake(
        initiator=True,
        static=static_a if static_a is not None else KeyPair.generate(),
        name_hash=name_hash(network_a),
        max_message_size=max_message_size,
        expected_peer=expected,
    )
    b = SecureHandshake(
        initiator=False,
        static=static_b if static_b is not None else KeyPair.generate(),
        name_hash=name_hash(network_b),
        max_message_size=max_message_size,
    )
    return a, b


def transfer(src: SecureHandshake, dst: SecureHandshake, *, one_byte: bool = False) -> int:
    """Move everything ``src`` wants to send into ``dst``; returns how many bytes moved."""
    data = src.data_to_send()
    if data:
        if dst.complete:
            raise AssertionError(f"{len(data)} handshake bytes for a side that already completed")
        feed(dst.receive_data, data, one_byte=one_byte)
    return len(data)


def run_handshake(a: SecureHandshake, b: SecureHandshake, *, one_byte: bool = False) -> None:
    """Shuttle bytes between ``a`` and ``b`` until both complete; an error from either propagates.

    Raises:
        AssertionError: neither side has anything to send but one is not complete.
    """
    while not (a.complete and b.complete):
        moved = transfer(a, b, one_byte=one_byte) + transfer(b, a, one_byte=one_byte)
        if not moved:
            raise AssertionError(f"handshake stalled: a={a.state}, b={b.state}")


def channel_pair(*, max_message_size: int = DEFAULT_MAX_MESSAGE) -> tuple[SecureChannel, SecureChannel]:
    """Two connected SecureChannels: what ``a`` seals, ``b`` receives, and the other way round."""
    a, b = handshake_pair(max_message_size=max_message_size)
    run_handshake(a, b)
    assert a.channel is not None and b.channel is not None
    assert a.trailing_data == b"" and b.trailing_data == b""
    return a.channel, b.channel
