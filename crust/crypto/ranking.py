"""Which transport cipher this process prefers, decided by measuring them here.

Theory of operation
-------------------
The fastest AEAD depends on the CPU and on the library build: with AES-NI and
PCLMULQDQ, pycryptodome's AES-OCB seals 64 KiB three to four times faster than
its ChaCha20 and Poly1305 together; without them AES is slow *and* leaks
timing.  So nothing is assumed:

* :func:`available_ciphers`: ChaCha20-Poly1305 always; AES-256-OCB only with
  AES-NI; AES-256-GCM only with AES-NI and carry-less multiply (both
  constant-time only in hardware, see :mod:`crust.crypto.aes`).
* :func:`measure`: seals a 64 KiB frame and a 100-byte frame with each
  available cipher, a few times in interleaved rounds, and keeps each one's
  best time (a few milliseconds in all).  A cipher's *score* is the sum: the
  cost of one bulk frame plus one lone small message, so both throughput
  and latency count.
* :func:`measure_preference` does that once per process and remembers the
  order, best first; :func:`preferred_ciphers` is what a handshake offers.
  Until a process has measured, ChaCha20-Poly1305 leads (crust's only cipher
  before negotiation existed) and the AES modes follow.
* :func:`force_preference` overrides both, for tests and benchmarks.

Reading a clock is I/O for this package (sans-IO: ARCHITECTURE.md §4), so
the clock is a parameter: the shell (``crust.service``) passes
``time.perf_counter``.  The cache is one module global written with a single
assignment, so threads racing to measure at most measure twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from crust.crypto import aes
from crust.crypto.aead import Cipher, Sealer

__all__ = [
    "SealCost",
    "available_ciphers",
    "check_preference",
    "force_preference",
    "measure",
    "measure_preference",
    "measured_costs",
    "preferred_ciphers",
]

BULK_SIZE = 64 * 1024  # bytes: a full transport frame
SMALL_SIZE = 100  # bytes: a lone small message
ROUNDS = 5  # interleaved rounds; each seals BULK once and SMALL SMALL_REPEAT times per cipher
SMALL_REPEAT = 4

# A public, constant key: the measurement's output is thrown away, so neither
# the key nor nonce reuse across processes matters.
_KEY = bytes(range(32))
_BULK = bytes(BULK_SIZE)
_SMALL = bytes(SMALL_SIZE)


@dataclass(frozen=True)
class SealCost:
    """One cipher's measured cost on this machine.

    Attributes:
        cipher: the AEAD.
        bulk_us: best time to seal a 64 KiB frame, in microseconds.
        small_us: best time to seal a 100-byte frame, in microseconds.
    """

    cipher: Cipher
    bulk_us: float
    small_us: float

    @property
    def score(self) -> float:
        """What the ranking sorts on: one bulk frame plus one small one (µs; lower is better)."""
        return self.bulk_us + self.small_us


def available_ciphers() -> tuple[Cipher, ...]:
    """The ciphers this process may offer: ChaCha20-Poly1305, plus the AES modes its CPU runs in hardware."""
    ocb, gcm = aes.hardware_support()
    found = [Cipher.CHACHA20_POLY1305]
    if gcm:
        found.append(Cipher.AES_256_GCM)
    if ocb:
        found.append(Cipher.AES_256_OCB)
    return tuple(found)


def check_preference(order: Iterable[Cipher]) -> tuple[Cipher, ...]:
    """Validate a preference order (best first) and return it as a tuple.

    Args:
        order: distinct :class:`Cipher` members, ChaCha20-Poly1305 among them
            (every crust peer can fall back to it), each available here.

    Returns:
        The order as a tuple.

    Raises:
        TypeError: an element is not a :class:`Cipher`.
        ValueError: a duplicate, no ChaCha20-Poly1305, or a cipher this CPU
            cannot run in constant time.
    """
    result = tuple(order)
    for cipher in result:
        if not isinstance(cipher, Cipher):
            raise TypeError(f"a cipher preference holds Cipher members, not {type(cipher).__name__}")
    if len(set(result)) != len(result):
        raise ValueError(f"a cipher preference lists each cipher once: {[c.label for c in result]}")
    if Cipher.CHACHA20_POLY1305 not in result:
        raise ValueError("a cipher preference must include chacha20-poly1305 (every peer's fallback)")
    here = available_ciphers()
    missing = [c.label for c in result if c not in here]
    if missing:
        raise ValueError(f"not available on this CPU (no hardware AES/carry-less multiply): {missing}")
    return result


def measure(clock: Callable[[], float], ciphers: Iterable[Cipher] | None = None) -> tuple[SealCost, ...]:
    """Time a bulk and a small seal with each cipher; return the costs, best score first.

    Args:
        clock: a monotonic clock in seconds (``time.perf_counter``).
        ciphers: what to measure (default: :func:`available_ciphers`).

    Returns:
        One :class:`SealCost` per cipher, sorted by score (ties keep the input order).
    """
    todo = tuple(available_ciphers() if ciphers is None else ciphers)
    seals = {cipher: Sealer(_KEY, cipher=cipher).seal for cipher in todo}
    bulk = {cipher: float("inf") for cipher in todo}
    small = dict(bulk)
    for seal in seals.values():  # first calls load code, fault in buffers, warm caches: not counted
        seal(_SMALL)
        seal(_BULK)
    # Rounds interleave the ciphers so a burst of other load hits all of them
    # alike; the minimum is the cost without interference.
    for _ in range(ROUNDS):
        for cipher, seal in seals.items():
            start = clock()
            seal(_BULK)
            bulk[cipher] = min(bulk[cipher], clock() - start)
            for _ in range(SMALL_REPEAT):
                start = clock()
                seal(_SMALL)
                small[cipher] = min(small[cipher], clock() - start)
    costs = [SealCost(cipher, bulk[cipher] * 1e6, small[cipher] * 1e6) for cipher in todo]
    return tuple(sorted(costs, key=lambda cost: cost.score))


_measured: tuple[SealCost, ...] = ()
_forced: tuple[Cipher, ...] | None = None


def measure_preference(clock: Callable[[], float]) -> tuple[SealCost, ...]:
    """Measure once per process (later calls return the first result) and rank by it.

    Args:
        clock: a monotonic clock in seconds (``time.perf_counter``).

    Returns:
        The costs found, best first; :func:`preferred_ciphers` follows them
        unless :func:`force_preference` is in effect.
    """
    global _measured
    if not _measured:
        _measured = measure(clock)
    return _measured


def measured_costs() -> tuple[SealCost, ...]:
    """What :func:`measure_preference` found, best first; empty before it ran."""
    return _measured


def force_preference(order: Iterable[Cipher] | None) -> None:
    """Make every later handshake of this process offer ``order``; ``None`` undoes it.

    Args:
        order: a preference order, best first (see :func:`check_preference`), or None.

    Raises:
        TypeError, ValueError: as :func:`check_preference`.
    """
    global _forced
    _forced = None if order is None else check_preference(order)


def preferred_ciphers() -> tuple[Cipher, ...]:
    """This process's preference order, best first: forced, else measured, else ChaCha20-Poly1305 first."""
    if _forced is not None:
        return _forced
    if _measured:
        return tuple(cost.cipher for cost in _measured)
    return available_ciphers()
