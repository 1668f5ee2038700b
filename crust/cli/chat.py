"""``python -m crust chat``: a line chat between crust peers.

Each chat listens, answers LAN beacons and prints its *connection info* on
one line (base64 of ``PubConnectionInfo.to_bytes()``).  It bootstraps off
``--contact`` (or the config's contacts) and peers that answer on the LAN;
peers that cannot find each other that way swap connection infos: each
pastes the other's into ``/connect <info>`` within ``connect_timeout``
(30 s) of the other, and crust connects them directly (hole punching
through NATs where it can).

Standard input, one line at a time: ``/connect <info>``, ``/peers``,
``/info`` (fresh connection info), ``/quit`` (or end of input); any other
line goes to every connected peer.  Output: ``* `` status lines, and
``<peer> text`` for what peers say (control characters replaced).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import sys
import threading
from typing import Any, TextIO

import crust

from .common import add_node_options, endpoint, identity_from, node_config, printable, short, table

__all__ = ["add_parser", "decode_info", "encode_info"]

HELP = "commands: /connect <info>, /peers, /info, /quit; any other line is sent to every peer"


def add_parser(commands: Any) -> None:
    """Register ``chat`` with ``commands``."""
    parser = commands.add_parser(
        "chat", help="chat with peers found on the LAN, by --contact, or by swapped connection info",
        description=f"A line chat. Finds peers on the LAN and through --contact; prints its connection info "
                    f"for another chat's /connect. Reads standard input: {HELP}.")
    parser.add_argument("--contact", action="append", type=endpoint, default=[], metavar="ENDPOINT",
                        help="bootstrap off this node (host:port; repeatable) instead of the configured contacts")
    parser.add_argument("--no-lan", dest="lan", action="store_false",
                        help="neither look for peers on the LAN nor answer LAN beacons")
    add_node_options(parser)
    parser.set_defaults(run=run)


def encode_info(info: crust.PubConnectionInfo) -> str:
    """Connection info as one pasteable word: URL-safe base64 of its compact bytes, unpadded."""
    return base64.urlsafe_b64encode(info.to_bytes()).decode("ascii").rstrip("=")


def decode_info(text: str) -> crust.PubConnectionInfo:
    """What :func:`encode_info` made, or ``PubConnectionInfo.to_json()`` text.

    Raises:
        ValueError: neither form, or invalid content (the message says which).
    """
    text = text.strip()
    if text.startswith("{"):
        return crust.PubConnectionInfo.from_json(text)
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not connection info: neither JSON nor base64") from None
    return crust.PubConnectionInfo.from_bytes(raw)


class Chat:
    """One chat session: the Service's callbacks print, :meth:`handle` runs one input line."""

    def __init__(self, svc: crust.Service, out: TextIO) -> None:
        self.svc = svc
        self._out = out
        self._lock = threading.Lock()  # callbacks (crust-dispatch) and input (main thread) both print
        self.ours = svc.prepare_connection_info()
        svc.on_new_peer(self._joined)
        svc.on_lost(lambda peer_id: self.say(f"* {short(peer_id)} left"))
        svc.on_message(self._message)
        svc.on_bootstrap_failed(lambda: self.say(
            "* no peer found by contact or on the LAN; others can still join you, or use /connect"))
        svc.on_connect_failure(lambda peer_id: self.say(f"* could not connect to {short(peer_id)}"))

    def say(self, line: str) -> None:
        """Print one line now (flushed: a pipe must see it at once)."""
        with self._lock:
            print(line, file=self._out, flush=True)

    def _joined(self, info: crust.PeerInfo) -> None:
        self.say(f"* {short(info.id)} joined ({info.origin}, {info.transport} {info.addr})")

    def _message(self, peer_id: crust.PeerId, data: bytes) -> None:
        self.say(f"<{short(peer_id)}> {printable(data.decode('utf-8', errors='replace'))}")

    def handle(self, line: str) -> bool:
        """Act on one input line; False when the chat should end."""
        line = line.rstrip("\r\n")
        command, _, rest = line.partition(" ")
        if command == "/quit":
            return False
        if command == "/connect":
            self._connect(rest)
        elif command == "/peers":
            self._peers()
        elif command == "/info":
            self.ours = self.svc.prepare_connection_info()
            self.say(f"* connection info: {encode_info(self.ours.to_pub())}")
        elif command.startswith("/"):
            self.say(f"* unknown command {printable(command)}; {HELP}")
        elif line.strip():
            self._send(line)
        return True

    def _connect(self, text: str) -> None:
        try:
            theirs = decode_info(text)
            self.svc.start_connect(self.ours, theirs)
        except (ValueError, crust.CrustError) as exc:  # ConnectToSelf is a CrustError
            self.say(f"* cannot connect: {exc}")
            return
        self.say(f"* connecting to {short(theirs.peer_id)}; it must /connect to your info too")

    def _peers(self) -> None:
        peers = self.svc.peers()
        if not peers:
            self.say("* no peers yet")
            return
        rows = [("peer", "addr", "transport", "origin", "rtt ms")]
        rows += [(short(p.id), str(p.addr), p.transport, str(p.origin), "-" if p.rtt is None else f"{p.rtt * 1000:.2f}")
                 for p in peers]
        self.say(table(rows, right={4}))

    def _send(self, line: str) -> None:
        peers = self.svc.peers()
        if not peers:
            self.say("* nobody to send to yet")
        for info in peers:
            try:
                self.svc.send(info.id, line.encode("utf-8"))
            except crust.PeerNotFound:
                pass  # it left meanwhile; on_lost says so
            except crust.CrustError as exc:
                self.say(f"* not sent to {short(info.id)}: {exc}")


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Chat until ``/quit`` or the end of input."""
    overrides: dict[str, Any] = {}
    if args.contact:
        overrides["hard_coded_contacts"] = args.contact
    config = node_config(args, **overrides)
    with crust.Service(config, identity_from(args)) as svc:
        listeners = svc.start_listening()
        lan = args.lan
        if lan:
            try:
                svc.set_service_discovery_listen(True)  # answer seekers, and seek before bootstrapping
            except crust.ListenerError as exc:
                lan = False
                print(f"* LAN beacon off: {exc}", file=sys.stderr)
        chat = Chat(svc, stdout or sys.stdout)
        chat.say(f"* you are {short(svc.id)}, listening on {', '.join(map(str, listeners))}")
        chat.say(f"* connection info: {encode_info(chat.ours.to_pub())}")
        if config.hard_coded_contacts or lan:
            svc.start_bootstrap(user=crust.CrustUser.CLIENT)
        chat.say(f"* {HELP}")
        for line in stdin or sys.stdin:
            if not chat.handle(line):
                break
        chat.say("* bye")
    return 0
