"""A Tk chat window over crust: peer list, messages, an input line.

One window is the seed; others bootstrap off it and the seed passes every
line on to everyone else (as examples/chat.py does on a terminal)::

    python examples/chat_tk.py --listen                # prints: listening on 127.0.0.1:5483
    python examples/chat_tk.py 127.0.0.1:5483          # in other terminals

Threading: Tk may only be touched from the thread running its main loop.
So the Service runs with ``dispatch="manual"``: crust starts no callback
thread, and ``svc.run_callbacks()``, called from Tk's ``after`` loop every
``PUMP_MS``, runs the callbacks right here on the Tk thread, where they may
update widgets directly.  Nothing crust calls ever runs on another thread.

Every line shown in the message pane is also printed to stdout (the tests
read it there).
"""

from __future__ import annotations

import argparse
import sys
import tkinter as tk

import crust

NETWORK = "crust-chat-tk"
PUMP_MS = 30  # how often Tk's loop runs crust's callbacks: well under what a human notices


class ChatWindow:
    """The window: peers on the left, messages on the right, the input line below."""

    def __init__(self, root: tk.Tk, svc: crust.Service, relay: bool) -> None:
        self.root, self.svc, self.relay = root, svc, relay
        self.me = str(svc.id)[:8]
        root.title(f"crust chat {self.me}")
        self.peers = tk.Listbox(root, width=12)
        self.peers.grid(row=0, column=0, sticky="ns")
        self.log = tk.Text(root, width=48, height=16, state="disabled", wrap="word")
        self.log.grid(row=0, column=1, sticky="nsew")
        self.entry = tk.Entry(root)
        self.entry.grid(row=1, column=0, columnspan=2, sticky="ew")
        self.entry.bind("<Return>", self.on_enter)
        self.entry.focus_set()
        root.columnconfigure(1, weight=1)
        root.rowconfigure(0, weight=1)
        root.protocol("WM_DELETE_WINDOW", self.quit)
        # Callbacks: called by run_callbacks() below, on this (the Tk) thread.
        svc.on_new_peer(self.joined)
        svc.on_lost(self.left)
        svc.on_message(self.got)
        svc.on_bootstrap_failed(lambda: self.show("* could not join; is the seed running?"))

    def show(self, line: str) -> None:
        self.log.configure(state="normal")
        self.log.insert("end", line + "\n")
        self.log.configure(state="disabled")
        self.log.see("end")
        print(line, flush=True)

    def refresh_peers(self) -> None:
        self.peers.delete(0, "end")
        for info in self.svc.peers():
            self.peers.insert("end", str(info.id)[:8])

    def joined(self, info: crust.PeerInfo) -> None:
        self.show(f"* {str(info.id)[:8]} joined")
        self.refresh_peers()

    def left(self, peer_id: crust.PeerId) -> None:
        self.show(f"* {str(peer_id)[:8]} left")
        self.refresh_peers()

    def got(self, peer_id: crust.PeerId, data: bytes) -> None:
        text = "".join(c for c in data.decode("utf-8", errors="replace") if c.isprintable())
        self.show(text)
        if self.relay:  # the seed passes each line on to everyone else
            self.broadcast(data, skip=peer_id)

    def on_enter(self, event: object = None) -> None:
        text = self.entry.get().strip()
        self.entry.delete(0, "end")
        if text:
            line = f"{self.me}: {text}"
            self.show(line)
            self.broadcast(line.encode())

    def broadcast(self, data: bytes, skip: crust.PeerId | None = None) -> None:
        for info in self.svc.peers():
            if info.id != skip:
                try:
                    self.svc.send(info.id, data, timeout=1.0)  # short: the UI must not freeze
                except crust.CrustError as exc:  # left meanwhile, or its queue is full
                    self.show(f"* not sent to {str(info.id)[:8]}: {exc}")

    def pump(self) -> None:
        """Run crust's queued callbacks on the Tk thread, then come back in PUMP_MS."""
        try:
            self.svc.run_callbacks()
        except crust.ServiceClosed:
            return
        self.root.after(PUMP_MS, self.pump)

    def quit(self) -> None:
        self.svc.close()
        self.root.destroy()


def main() -> int:
    parser = argparse.ArgumentParser(description="A Tk chat over crust.")
    parser.add_argument("contact", nargs="?", help="the seed's host:port to join")
    parser.add_argument("--listen", action="store_true", help="be the seed: listen and relay lines to all")
    parser.add_argument("--host", default="127.0.0.1", help="address the seed listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5483, help="port the seed listens on (default 5483; 0: any)")
    parser.add_argument("--geometry", help="Tk window geometry, e.g. 480x300+0+0")
    args = parser.parse_args()
    if args.listen == bool(args.contact):
        parser.error("give either --listen or the seed's host:port")

    config = crust.Config(network_name=NETWORK, bootstrap_cache_path=None, listen_host=args.host,
                          tcp_port=args.port if args.listen else 0,
                          hard_coded_contacts=[] if args.listen else [args.contact])
    root = tk.Tk()
    if args.geometry:
        root.geometry(args.geometry)
    svc = crust.Service(config, dispatch="manual")  # no callback thread: pump() runs them on Tk's
    try:
        window = ChatWindow(root, svc, relay=args.listen)
        if args.listen:
            window.show(f"* listening on {', '.join(map(str, svc.start_listening()))}")
        else:
            window.show(f"* joining {args.contact}")
            svc.start_bootstrap(user=crust.CrustUser.CLIENT)  # returns at once: the window stays live
        window.pump()
        root.mainloop()
    finally:
        svc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
