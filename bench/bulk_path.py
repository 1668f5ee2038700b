#!/usr/bin/env python3
"""What crust's data path costs per message, in one process, without sockets or threads.

Usage::

    python bench/bulk_path.py                          # this tree
    PYTHONPATH=/tmp/before python bench/bulk_path.py   # another checkout, to compare

Messages go through the same objects as on a TCP connection: ``Outbox.push``,
``Outbox.fill`` and ``SecureChannel.seal`` on the sending side, the sealed
frames joined and cut into 256 KiB reads (what ``TcpStream`` reads at a time),
then ``SecureChannel.feed`` and ``next_batch`` on the receiving side, with the
cipher a crust handshake picks here (AES-256-OCB with AES-NI).  Two cases:
64 KiB messages (one frame each) and 100-byte messages (about 600 a frame).

For each side it prints the time per message (best of a few rounds, no
profiler) and, counted in a separate pass under ``sys.setprofile``, per
message: Python function calls in crust and in pycryptodome, builtin C calls,
and AEAD set-ups (a cipher state per frame).  The socket and thread costs are not here: see
``bench/messaging.py --profile``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from typing import Any, Callable

from crust.channel import SecureChannel
from crust.crypto.aead import Cipher, Opener, Sealer
from crust.crypto.ranking import available_ciphers
from crust.outbox import Outbox

READ_SIZE = 256 * 1024  # bytes per socket read (crust.transport.tcp._RECV_SIZE)
FRAME_CAPACITY = 64 * 1024 + 256  # crust.channel.MAX_FRAME_PLAINTEXT


def _channels(cipher: Cipher) -> tuple[SecureChannel, SecureChannel]:
    key = bytes(range(32))
    sender = SecureChannel(Sealer(key, cipher=cipher), Opener(bytes(32), cipher=cipher), max_message_size=1 << 24)
    receiver = SecureChannel(Sealer(bytes(32), cipher=cipher), Opener(key, cipher=cipher), max_message_size=1 << 24)
    return sender, receiver


def _send(outbox: Outbox, channel: SecureChannel, payload: bytes, count: int) -> list[bytes]:
    for _ in range(count):
        outbox.push(1, payload, 0.0)
    frames = []
    while outbox:
        pieces, _ = outbox.fill(FRAME_CAPACITY)
        frames.append(channel.seal(pieces))
    return frames


def _receive(channel: SecureChannel, reads: list[bytes]) -> int:
    got = 0
    for data in reads:
        channel.feed(data)
        while (batch := channel.next_batch()) is not None:
            got += len(batch)
    return got


def _reads(frames: list[bytes]) -> list[bytes]:
    stream = b"".join(frames)
    return [stream[i:i + READ_SIZE] for i in range(0, len(stream), READ_SIZE)]


class _Calls:
    """``sys.setprofile`` hook: Python calls (those in pycryptodome apart), builtin C calls, AEAD set-ups.

    An AEAD set-up is a new cipher state for a frame: ``AES.new`` (or
    ``ChaCha20.new``) on pycryptodome's documented path, ``OcbKey._start``
    on crust's direct one.  cffi's C functions raise no profile event.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            where = "pycryptodome" if "/Crypto/" in code.co_filename else "python"
            self.counts[where] += 1
            if (code.co_name == "new" and code.co_filename.endswith(("Cipher/AES.py", "Cipher/ChaCha20.py"))) or (
                    code.co_name == "_start" and code.co_filename.endswith("crust/crypto/ocb.py")):
                self.counts["setup"] += 1
        elif event == "c_call":
            self.counts["c"] += 1


def _counted(fn: Callable[[], object]) -> Counter[str]:
    calls = _Calls()
    sys.setprofile(calls)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls.counts


def measure(size: int, count: int, cipher: Cipher, rounds: int = 5) -> dict[str, float]:
    """Per-message costs of ``count`` messages of ``size`` bytes on each side."""
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    send_best = receive_best = float("inf")
    for _ in range(rounds):
        sender, receiver = _channels(cipher)
        outbox = Outbox(queue_limit=1 << 40, drop_after=1e9, unfinished_limit=1 << 40)
        start = time.perf_counter()
        frames = _send(outbox, sender, payload, count)
        send_best = min(send_best, time.perf_counter() - start)
        reads = _reads(frames)
        start = time.perf_counter()
        assert _receive(receiver, reads) == count
        receive_best = min(receive_best, time.perf_counter() - start)
    sender, receiver = _channels(cipher)
    outbox = Outbox(queue_limit=1 << 40, drop_after=1e9, unfinished_limit=1 << 40)
    box: dict[str, list[bytes]] = {}
    send_calls = _counted(lambda: box.setdefault("frames", _send(outbox, sender, payload, count)))
    reads = _reads(box["frames"])
    receive_calls = _counted(lambda: _receive(receiver, reads))
    out = {"frames_per_msg": len(box["frames"]) / count, "send_us": send_best / count * 1e6,
           "receive_us": receive_best / count * 1e6}
    for side, counts in (("send", send_calls), ("receive", receive_calls)):
        for kind in ("python", "pycryptodome", "c", "setup"):
            out[f"{side}_{kind}_calls"] = counts[kind] / count
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cipher", choices=[c.label for c in Cipher],
                    help="default: AES-256-OCB where the CPU runs it, else ChaCha20-Poly1305")
    args = ap.parse_args(argv)
    here = available_ciphers()
    cipher = next((c for c in Cipher if c.label == args.cipher), None) or (
        Cipher.AES_256_OCB if Cipher.AES_256_OCB in here else Cipher.CHACHA20_POLY1305)
    import crust

    print(f"crust from {crust.__file__}, cipher {cipher.label}")
    print("per message, sending side | receiving side: time (best of 5), Python calls in crust + in "
          "pycryptodome, builtin C calls, AEAD set-ups")
    for name, size, count in (("64 KiB", 64 * 1024, 400), ("100 B", 100, 60_000)):
        r = measure(size, count, cipher)
        print(f"{name} ({r['frames_per_msg']:.4f} frames/msg):")
        for side in ("send", "receive"):
            print(f"    {side:<8} {r[side + '_us']:8.2f} us  {r[side + '_python_calls']:7.2f} + "
                  f"{r[side + '_pycryptodome_calls']:6.2f} Python calls  {r[side + '_c_calls']:7.2f} C calls  "
                  f"{r[side + '_setup_calls']:.4f} AEAD set-ups")
    return 0


if __name__ == "__main__":
    sys.exit(main())
