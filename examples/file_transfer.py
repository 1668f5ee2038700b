"""Send a file to another crust node, in chunks, with a progress bar and a hash check at the end.

Start the receiver, then point the sender at the endpoint it prints::

    python examples/file_transfer.py receive --out downloads/     # prints: receiving on 127.0.0.1:40123
    python examples/file_transfer.py send big.iso 127.0.0.1:40123

The sender bootstraps off the receiver (as a Client: it need not be
reachable itself) and sends three kinds of message, each a one-byte tag
and a body:

* ``H`` + JSON ``{"name", "size", "sha256"}``: what is coming;
* ``D`` + up to ``CHUNK`` bytes of the file, in order (crust keeps a peer's
  messages in order, and ``send()`` blocks while the queue is full, so the
  sender never holds more than crust's send queue in memory);
* the receiver answers ``A`` + JSON ``{"ok", "sha256"}`` once it has
  ``size`` bytes and has checked their SHA-256 against the header.

Both sides exit 0 when the hashes match, 1 otherwise.  Use ``--host
0.0.0.0`` on the receiver to accept senders from other machines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time

import crust

NETWORK = "crust-file-transfer"
CHUNK = 256 * 1024  # bytes per message: well under Config.max_message_size (2 MiB)
WAIT = 60.0  # seconds either side waits for the other before giving up


class ProgressBar:
    """``[#####.....]  52%  12.3 MiB/s`` on stderr, redrawn in place at most ten times a second."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label = total, label
        self.started = time.monotonic()
        self.drawn = self.started - 1.0  # the first show() draws at once

    def show(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.drawn < 0.1:
            return
        self.drawn = now
        fraction = done / self.total if self.total else 1.0
        rate = done / max(now - self.started, 1e-6) / 2**20
        bar = "#" * int(fraction * 30)
        sys.stderr.write(f"\r{self.label} [{bar:.<30}] {fraction:4.0%}  {rate:6.1f} MiB/s")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


class Incoming:
    """The file being received: written and hashed chunk by chunk, checked when complete."""

    def __init__(self, header: dict[str, object], out_dir: str) -> None:
        self.size = int(str(header["size"]))
        self.expected = str(header["sha256"])
        name = os.path.basename(str(header["name"])) or "received.bin"  # never a path from the peer
        self.path = os.path.join(out_dir, name)
        self.file = open(self.path, "wb")
        self.hash = hashlib.sha256()
        self.got = 0
        self.bar = ProgressBar(self.size, f"receiving {name}")

    def add(self, chunk: bytes) -> bool:
        """Write a chunk; True once every byte is here (the file is then closed)."""
        self.file.write(chunk)
        self.hash.update(chunk)
        self.got += len(chunk)
        self.bar.show(self.got)
        if self.got < self.size:
            return False
        self.bar.show(self.got, final=True)
        self.file.close()
        return True

    @property
    def ok(self) -> bool:
        return self.got == self.size and self.hash.hexdigest() == self.expected


def receive(args: argparse.Namespace) -> int:
    config = crust.Config(network_name=NETWORK, listen_host=args.host, tcp_port=args.port,
                          bootstrap_cache_path=None)
    os.makedirs(args.out, exist_ok=True)
    done = threading.Event()
    incoming: list[Incoming] = []  # set by the first header
    with crust.Service(config) as svc:

        @svc.on_message
        def got(peer_id: crust.PeerId, data: bytes) -> None:
            tag, body = data[:1], data[1:]
            if tag == b"H" and not incoming:
                incoming.append(Incoming(json.loads(body), args.out))
                complete = incoming[0].size == 0 and incoming[0].add(b"")
            elif tag == b"D" and incoming and not done.is_set():
                complete = incoming[0].add(body)
            else:
                return
            if complete:
                answer = {"ok": incoming[0].ok, "sha256": incoming[0].hash.hexdigest()}
                svc.send(peer_id, b"A" + json.dumps(answer).encode())
                done.set()

        endpoint = svc.start_listening()[0]
        print(f"receiving on {endpoint}", flush=True)
        if not done.wait(args.timeout):
            print(f"no complete file within {args.timeout} s", file=sys.stderr)
            return 1
    file = incoming[0]
    if file.ok:
        print(f"received {file.path} ({file.got} bytes), sha256 {file.expected} ok", flush=True)
        return 0
    print(f"received {file.path} ({file.got} bytes), but its sha256 {file.hash.hexdigest()} is not the "
          f"sender's {file.expected}", flush=True)
    return 1


def send(args: argparse.Namespace) -> int:
    size = os.path.getsize(args.file)
    digest = hashlib.sha256()
    with open(args.file, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    config = crust.Config(network_name=NETWORK, hard_coded_contacts=[args.receiver], bootstrap_cache_path=None)
    answer: list[dict[str, object]] = []
    answered = threading.Event()
    with crust.Service(config) as svc:

        @svc.on_message
        def got(peer_id: crust.PeerId, data: bytes) -> None:
            if data[:1] == b"A":
                answer.append(json.loads(data[1:]))
                answered.set()

        receiver = svc.bootstrap(user=crust.CrustUser.CLIENT)
        header = {"name": os.path.basename(args.file), "size": size, "sha256": digest.hexdigest()}
        svc.send(receiver, b"H" + json.dumps(header).encode())
        bar = ProgressBar(size, f"sending {header['name']}")
        sent = 0
        with open(args.file, "rb") as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                svc.send(receiver, b"D" + block, timeout=WAIT)  # blocks while crust's queue is full
                sent += len(block)
                bar.show(sent)
        bar.show(sent, final=True)
        if not answered.wait(WAIT):
            print("the receiver did not confirm the file", file=sys.stderr)
            return 1
    if answer[0]["ok"]:
        print(f"sent {args.file} ({size} bytes); the receiver's sha256 matches", flush=True)
        return 0
    print(f"sent {args.file}, but the receiver's sha256 {answer[0]['sha256']} differs from ours", flush=True)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description="Send a file to another crust node, with a hash check.")
    commands = parser.add_subparsers(dest="command", required=True)
    rx = commands.add_parser("receive", help="wait for one file and save it")
    rx.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    rx.add_argument("--port", type=int, default=0, help="TCP port (default: a random free one)")
    rx.add_argument("--out", default=".", help="directory to save the file in (default: here)")
    rx.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds (default 300)")
    tx = commands.add_parser("send", help="send a file to a receiver")
    tx.add_argument("file", help="the file to send")
    tx.add_argument("receiver", help="the receiver's host:port, as it printed")
    args = parser.parse_args()
    try:
        return receive(args) if args.command == "receive" else send(args)
    except crust.CrustError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
