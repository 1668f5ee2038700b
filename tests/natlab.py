"""The NAT lab: an "internet", public hosts, and home routers doing real Linux NAT.

Built on :class:`tests.netlab.Lab` (namespaces, processes, teardown), for the
NAT traversal and UPnP tests.  The rulesets are the ones measured in
``/work/shared/design/TESTLAB.md``; tests/test_natlab.py proves each type
behaves as its table says, with plain sockets.

* ``inet``: the internet, a namespace holding a bridge on ``198.51.100.0/24``
  (a documentation range; a range overlapping this machine's networks is
  refused).  The bridge itself has ``.1`` and ``.2``: the default gateway of
  every public namespace (it does not forward: unknown destinations vanish) and
  the two IPs of the lab's STUN server (:meth:`NatLab.stun`).
* :meth:`NatLab.public`: a host on the internet, with one or more public IPs.
* :meth:`NatLab.router`: a home router: WAN ``wan`` on the internet, a LAN
  bridge ``lan`` on ``10.N.0.0/24`` (``.1`` is the router), ``ip_forward=1``,
  and ``table inet natlab`` for its NAT type (:data:`NAT_TYPES`).  Unsolicited
  packets arriving on the WAN are dropped silently (no RST, no ICMP).
  ``"none"`` routes without NAT or filtering (its LAN is routed from the internet).
* :meth:`NatLab.host_behind`: a host on a router's LAN (default route via the router).
* ``upnp=True``: miniupnpd runs on the router (its own pidfile, config and
  lease file under the lab's temp dir), after the lab's STUN server has told it
  the WAN address is reachable; :meth:`NatLab.upnp_mappings` reads its mappings.
* ``idle_timeout``/``tcp_idle_timeout``: the router's NAT idle timeouts
  (conntrack timeouts are per network namespace; the full-cone map follows).
* :meth:`NatLab.restart_nat`: the router forgets every mapping and connection,
  as after a reboot (conntrack flushed over netlink, the cone map emptied);
  rules and UPnP mappings stay.
* Loss: :meth:`Lab.drop_randomly` works on routers (WAN ingress) and hosts.
* Faults (tests/test_lab_faults.py): :meth:`NatLab.cut_link` / ``restore_link``
  (every frame on a host's or router's link vanishes), :meth:`NatLab.router_down` /
  ``router_up`` (a reboot that lasts until ``router_up``: WAN silent, state
  forgotten), :meth:`NatLab.set_loss` / ``clear_loss`` / ``loss_counts`` (random
  loss in both directions of a link, nftables: there is no netem here).

Quick picture::

    with NatLab() as lab:                       # or: yield from natlab_or_skip() in a fixture
        server = lab.public("boot")             # Host, .ip == "198.51.100.10"
        r1 = lab.router("r1", "port-restricted", idle_timeout=5)
        a = lab.host_behind("r1", "a")          # Host, .ip == "10.1.0.2"
        r2 = lab.router("r2", "symmetric", upnp=True)
        b = lab.host_behind("r2", "b")
        proc = lab.run("a", [sys.executable, "peer.py", "--contact", server.ip])
        lab.upnp_mappings("r2")                 # [{"proto": "tcp", "ext_port": ..., ...}]

Tests get one from :func:`natlab_or_skip` (skips, or fails under ``CI=true``,
when namespaces, ``nft`` or -- with ``upnp=True`` -- ``miniupnpd`` are missing).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

from tests.netlab import (CMD_TIMEOUT, NFT, Host, Lab, LabError, LineReader, check_no_overlap, netns_unavailable_reason,
                          skip_or_fail)

MINIUPNPD = "miniupnpd"
INTERNET = "198.51.100.0/24"
NAT_TYPES = ("full-cone", "restricted", "port-restricted", "symmetric", "none")
TABLE = "natlab"  # the router's nftables table (family inet); miniupnpd adds its rules in here too
STUN_PORTS = (3478, 3479)
STUN_LIFETIME = 3600.0  # seconds; the server also ends when the lab closes its stdin
HERE = os.path.dirname(os.path.abspath(__file__))
STUN_SCRIPT = os.path.join(HERE, "stun_server.py")
# miniupnpd's log lines once STUN said the WAN is reachable, and once its last listener is up
UPNP_READY = ("Port forwarding is now enabled", "Listening for NAT-PMP/PCP traffic")
UPNP_START = 10.0  # seconds miniupnpd gets to start and pass its STUN test
DEFAULT_UDP_TIMEOUT = 120  # s, the kernel's nf_conntrack_udp_timeout_stream: the cone map's default

Address = tuple[str, int]

# Flush this namespace's conntrack table (what `conntrack -F` does, without needing
# the tool): one IPCTNL_MSG_CT_DELETE with no tuple to ctnetlink, then read the ack.
CT_FLUSH = """
import socket, struct, sys
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
s.bind((0, 0))
body = struct.pack("=BBH", 0, 0, 0)  # nfgenmsg: AF_UNSPEC (every family), NFNETLINK_V0, res_id
s.send(struct.pack("=IHHII", 16 + len(body), (1 << 8) | 2, 1 | 4, 1, 0) + body)  # CTNETLINK, CT_DELETE; REQUEST|ACK
reply = s.recv(4096)
kind, = struct.unpack_from("=H", reply, 4)
err, = struct.unpack_from("=i", reply, 16)
sys.exit(0 if kind == 2 and err == 0 else 1)  # NLMSG_ERROR carrying 0 is the ack
"""


@dataclass(frozen=True)
class Router:
    """A home router in a :class:`NatLab`."""

    name: str  # short name, what NatLab/Lab methods take
    ns: str
    nat_type: str
    wan_ip: str
    lan: str  # "10.1.0.0/24"
    lan_ip: str  # "10.1.0.1", the LAN hosts' gateway
    upnp: bool
    idle_timeout: int | None
    wan_ifname: str = "wan"
    lan_ifname: str = "lan"


def nat_ruleset(nat_type: str, lan: str, *, map_timeout: int, upnp: bool, wan: str = "wan", lan_if: str = "lan") -> str:
    """The router's ``table inet natlab`` for ``nat_type`` (TESTLAB.md "The four NAT types").

    Args:
        nat_type: one of :data:`NAT_TYPES` except ``"none"``.
        lan: the LAN's CIDR (only it is masqueraded).
        map_timeout: seconds an unused full-cone/restricted mapping is kept.
        upnp: add the chains miniupnpd fills, jumped to from the hooked chains.
        wan: the WAN interface name.
        lan_if: the LAN interface name.
    """
    if nat_type not in NAT_TYPES or nat_type == "none":
        raise ValueError(f"no NAT ruleset for nat_type {nat_type!r}")
    cone = nat_type in ("full-cone", "restricted")
    restricted = nat_type == "restricted"
    # Why each part exists:
    # - cone: after SNAT (priority srcnat + 10, where `ct reply proto-dst` is the external
    #   port) remember ext port -> internal ip:port, and DNAT unsolicited inbound UDP through
    #   it.  UDP only, as measured: TCP through these types behaves port-restricted.
    # - contacted (restricted): which remote IPs each ext port has sent to; DNAT only those.
    # - input drops the rest on the WAN without an answer: home routers are silent, and TCP
    #   simultaneous open needs the first SYN to vanish rather than draw a RST.
    # - miniupnpd only adds rules to its three chains; they must exist and be jumped to.
    # - STUN answers from the lab server's other address/port must reach miniupnpd, or it
    #   calls the NAT "restrictive" and refuses to forward.
    out = [f"table inet {TABLE} {{"]
    if cone:
        out += ["  map cone {", "    type inet_proto . inet_service : ipv4_addr . inet_service",
                f"    flags dynamic, timeout; timeout {map_timeout}s;", "  }"]
    if restricted:
        out += ["  set contacted {", "    type inet_proto . ipv4_addr . inet_service",
                f"    flags dynamic, timeout; timeout {map_timeout}s;", "  }"]
    if upnp:
        out += ["  chain miniupnpd { }", "  chain prerouting_miniupnpd { }", "  chain postrouting_miniupnpd { }"]
    out += ["  chain prerouting {", "    type nat hook prerouting priority dstnat; policy accept;"]
    if upnp:
        out.append(f'    iifname "{wan}" jump prerouting_miniupnpd')
    if cone:
        allowed = "meta l4proto . ip saddr . th dport @contacted " if restricted else ""
        out.append(f'    iifname "{wan}" meta l4proto udp {allowed}dnat ip to meta l4proto . th dport map @cone')
    out += ["  }", "  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;"]
    if upnp:
        out.append("    jump postrouting_miniupnpd")
    random = " fully-random" if nat_type == "symmetric" else ""
    out += [f'    oifname "{wan}" ip saddr {lan} masquerade{random}', "  }"]
    if cone:
        out += ["  chain remember {", "    type filter hook postrouting priority srcnat + 10; policy accept;",
                f'    oifname "{wan}" meta l4proto udp ct direction original ct status snat '
                "update @cone { meta l4proto . ct reply proto-dst : ct original ip saddr . ct original proto-src }"]
        if restricted:
            out.append(f'    oifname "{wan}" meta l4proto udp ct direction original ct status snat '
                       "update @contacted { meta l4proto . ip daddr . ct reply proto-dst }")
        out.append("  }")
    out += ["  chain forward {", "    type filter hook forward priority filter; policy drop;",
            "    ct state established,related accept", f'    iifname "{lan_if}" oifname "{wan}" accept']
    if upnp:
        out.append(f'    iifname "{wan}" jump miniupnpd')
    if cone:
        out.append(f'    iifname "{wan}" ct status dnat accept')
    out += ["  }", "  chain input {", "    type filter hook input priority filter; policy accept;",
            f'    iifname "{wan}" ct state established,related accept']
    if upnp:
        ports = ", ".join(str(p) for p in STUN_PORTS)
        out.append(f'    iifname "{wan}" udp sport {{ {ports} }} accept')
    out += [f'    iifname "{wan}" drop', "  }", "}"]
    return "\n".join(out) + "\n"


class NatLab(Lab):
    """A :class:`Lab` with an internet, public hosts and NAT routers (see the module docstring).

    Args:
        name_prefix: namespace name prefix (stale namespaces with it are removed first).
        internet: the internet's subnet; refused if it overlaps this machine's networks.
    """

    def __init__(self, name_prefix: str = "crustnat", internet: str = INTERNET) -> None:
        super().__init__(name_prefix)
        self.routers: dict[str, Router] = {}
        self.public_ips: dict[str, list[str]] = {}  # public host -> all its IPs (first = Host.ip)
        self._routes: list[tuple[str, str]] = []  # (LAN cidr, via WAN ip) of "none" routers
        self._attached: list[str] = []  # short names of namespaces on the internet
        self._stun: LineReader | None = None
        self._upnpd: dict[str, subprocess.Popen[bytes]] = {}
        try:
            self.internet = check_no_overlap(internet)
            self._free = (str(ip) for ip in self.internet.hosts())
            self.add_switch("inet", "br0")
            self.gateway = next(self._free)
            self.stun_ips = (self.gateway, next(self._free))
            for ip in self.stun_ips:
                self._ipc("inet", ["addr", "add", f"{ip}/{self.internet.prefixlen}", "dev", "br0"])
            self._attached.append("inet")
            for _ in range(7):  # .3 - .9 stay free; routers and public hosts count from .10
                next(self._free)
        except BaseException:
            self.close()
            raise

    # -- building ----------------------------------------------------------------

    def public(self, name: str, ips: int = 1) -> Host:
        """A host on the internet with ``ips`` public addresses (two for RFC 5780 tests).

        Returns:
            Its :class:`Host`; ``.ip`` is the first address, all are in ``public_ips[name]``.
        """
        if not 1 <= ips <= 8:
            raise ValueError(f"ips must be 1..8, not {ips}")
        self.add_ns(name)
        addresses = [self._next_ip() for _ in range(ips)]
        host = self.plug(name, "inet", f"{addresses[0]}/{self.internet.prefixlen}")
        for extra in addresses[1:]:
            self._ipc(name, ["addr", "add", f"{extra}/{self.internet.prefixlen}", "dev", "eth0"])
        self._attach(name)
        self.public_ips[name] = addresses
        return host

    def router(self, name: str, nat_type: str, *, upnp: bool = False, idle_timeout: int | None = None,
               tcp_idle_timeout: int | None = None, lan: str | None = None) -> Router:
        """A home router between the internet and a new LAN.

        Args:
            name: its short name (hosts behind it are added with :meth:`host_behind`).
            nat_type: one of :data:`NAT_TYPES`.
            upnp: run miniupnpd on it (not with ``"none"``).
            idle_timeout: seconds an idle UDP mapping lives (conntrack UDP timeouts and
                the full-cone map); the kernel default (30 s unreplied, 120 s
                both ways) if ``None``.
            tcp_idle_timeout: seconds an idle established TCP connection keeps its mapping.
            lan: the LAN's subnet (default ``10.N.0.0/24``, N counting routers from 1).

        Raises:
            LabError: a tool is missing, a subnet overlaps, or miniupnpd did not come up.
        """
        if nat_type not in NAT_TYPES:
            raise ValueError(f"nat_type must be one of {NAT_TYPES}, not {nat_type!r}")
        if upnp and nat_type == "none":
            raise ValueError("a router without NAT has nothing for UPnP to map")
        for what, value in (("idle_timeout", idle_timeout), ("tcp_idle_timeout", tcp_idle_timeout)):
            if value is not None and not 1 <= value <= 86400:
                raise ValueError(f"{what} must be 1..86400 seconds, not {value}")
        net = check_no_overlap(lan or f"10.{len(self.routers) + 1}.0.0/24")
        if net.num_addresses < 4:
            raise ValueError(f"LAN {net} is too small")
        lan_ip = str(net.network_address + 1)
        host = self.add_ns(name)
        wan_ip = self._next_ip()
        self.plug(name, "inet", f"{wan_ip}/{self.internet.prefixlen}", ifname="wan")
        self.switches[name] = "lan"  # the router is also its LAN's switch: Lab.plug() works for host_behind
        self._ipc(name, ["link", "add", "lan", "type", "bridge", "stp_state", "0", "forward_delay", "0"])
        self._ipc(name, ["addr", "add", f"{lan_ip}/{net.prefixlen}", "dev", "lan"])
        self._ipc(name, ["link", "set", "lan", "up"])
        router = Router(name, host.ns, nat_type, wan_ip, str(net), lan_ip, upnp, idle_timeout)
        self.routers[name] = router
        self._attach(name)
        self._sysctl_checked(name, {"net.ipv4.ip_forward": "1"})
        if nat_type == "none":
            self._route_lan(router)
            return router
        if shutil.which(NFT) is None:
            raise LabError("nftables `nft` is not installed")
        udp = str(idle_timeout) if idle_timeout else None
        self._sysctl_checked(name, {k: v for k, v in (
            ("net.netfilter.nf_conntrack_udp_timeout", udp),
            ("net.netfilter.nf_conntrack_udp_timeout_stream", udp),
            ("net.netfilter.nf_conntrack_tcp_timeout_established",
             str(tcp_idle_timeout) if tcp_idle_timeout else None)) if v is not None})
        self._nft_file(name, nat_ruleset(nat_type, str(net), map_timeout=idle_timeout or DEFAULT_UDP_TIMEOUT,
                                         upnp=upnp))
        if upnp:
            self._start_upnpd(router)
        return router

    def host_behind(self, router: str, name: str) -> Host:
        """A host on ``router``'s LAN, next free address, default route via the router."""
        r = self.routers[router]
        net = ipaddress.ip_network(r.lan)
        taken = {h.ip for h in self.hosts.values()}
        free = (str(ip) for ip in net.hosts() if str(ip) != r.lan_ip and str(ip) not in taken)
        address = next(free, None)
        if address is None:
            raise LabError(f"LAN {net} of {router} is full")
        self.add_ns(name)
        host = self.plug(name, router, f"{address}/{net.prefixlen}")
        self._ipc(name, ["route", "add", "default", "via", r.lan_ip])
        return host

    # -- services and state ------------------------------------------------------

    def stun(self) -> tuple[Address, Address]:
        """Start the lab's STUN server in ``inet`` (once); returns its primary and alternate address.

        Two IPs x two ports (:data:`STUN_PORTS`), RFC 5389 binding with RFC 3489
        CHANGE-REQUEST (tests/stun_server.py).
        """
        if self._stun is None:
            argv = [sys.executable, STUN_SCRIPT, "--addresses", ",".join(self.stun_ips),
                    "--ports", ",".join(str(p) for p in STUN_PORTS), "--lifetime", str(STUN_LIFETIME)]
            reader = LineReader(self.run("inet", argv), name="stun")
            ready = reader.wait_for("ready", CMD_TIMEOUT)
            if ready is None or ready.get("event") != "ready":
                raise LabError(f"STUN server did not start: {reader.lines} {self.log_of(reader.proc)}")
            self._stun = reader
        return (self.stun_ips[0], STUN_PORTS[0]), (self.stun_ips[1], STUN_PORTS[1])

    def restart_nat(self, router: str) -> None:
        """Make ``router`` forget every NAT mapping and tracked connection, like a reboot.

        Flushes the router's conntrack table and its full-cone/restricted maps.
        The ruleset, timeouts and miniupnpd's port mappings stay.
        """
        r = self.routers[router]
        if r.nat_type in ("full-cone", "restricted"):
            sets = ["cone", "contacted"] if r.nat_type == "restricted" else ["cone"]
            for name in sets:
                self._nft(router, ["flush", "set" if name == "contacted" else "map", "inet", TABLE, name])
        done = self.exec(router, [sys.executable, "-c", CT_FLUSH])
        if done.returncode != 0:
            raise LabError(f"conntrack flush on {router} failed: {done.stderr.strip()}")

    def upnp_mappings(self, router: str) -> list[dict[str, Any]]:
        """The port mappings miniupnpd has in force on ``router`` (read from its nftables chain).

        Returns:
            One dict per mapping: ``proto`` ("tcp"/"udp"), ``ext_port``, ``int_ip``, ``int_port``.
        """
        done = self._nft(router, ["-j", "list", "chain", "inet", TABLE, "prerouting_miniupnpd"])
        mappings = []
        for item in json.loads(done.stdout).get("nftables", []):
            rule = item.get("rule")
            if rule:
                found = _dnat_of(rule.get("expr", []))
                if found:
                    mappings.append(found)
        return mappings

    def upnp_log(self, router: str) -> str:
        """The tail of miniupnpd's log on ``router`` (for failure messages); empty without UPnP."""
        proc = self._upnpd.get(router)
        return self.log_of(proc) if proc else ""

    def conntrack(self, router: str) -> list[str]:
        """The router's conntrack entries, ``/proc/net/nf_conntrack`` lines (for checks and failure messages)."""
        return self.exec(router, ["cat", "/proc/net/nf_conntrack"]).stdout.splitlines()

    def ruleset(self, router: str) -> str:
        """``nft list ruleset`` of ``router`` (for failure messages)."""
        return self._nft(router, ["list", "ruleset"]).stdout

    # -- faults: cut links, router reboots, loss both ways (tests/test_lab_faults.py) --------

    def cut_link(self, host: str) -> None:
        """Cut ``host``'s link: every frame into or out of its interface (a router's: its WAN) vanishes.

        An nftables ``netdev`` table dropping at the interface's ingress and
        egress hooks: the link stays up and carrier stays on, so the endpoints
        see nothing but silence, as when a cable breaks somewhere upstream.
        Undone by :meth:`restore_link`.

        Raises:
            LabError: ``host`` has no interface, or ``nft`` refused the rules.
        """
        self._netdev_fault(host, str(self.hosts[host].ifname), "fault_cut", {"ingress": "drop", "egress": "drop"})

    def restore_link(self, host: str) -> None:
        """Undo :meth:`cut_link` on ``host`` (a link that is not cut is left alone)."""
        self.exec(host, [NFT, "delete", "table", "netdev", "fault_cut"])

    def set_loss(self, host: str, percent: float) -> None:
        """Drop ``percent`` % of the IPv4 packets in each direction of ``host``'s link, independently.

        netem is what one would reach for, but these kernels have none (TESTLAB.md
        "Lossy, slow links"): a rule drawing a random number per packet at the
        ingress hook of both ends of the link (an nftables ``netdev`` table in
        each namespace, apart from :meth:`Lab.drop_randomly`'s).  Both ends send
        one MTU-sized segment per frame (``gso_max_segs 1``): a veth otherwise
        passes TCP's 64 KiB GSO super-packets whole, and one drop would cost ~45
        segments at once.  Undone by :meth:`clear_loss`; a second call replaces the first.

        Raises:
            ValueError: ``percent`` is not in 0..100 (steps of 0.01).
            LabError: ``host`` has no interface, or ``nft`` refused the rules.
        """
        per_10000 = round(percent * 100) if isinstance(percent, (int, float)) and not isinstance(percent, bool) else -1
        if not 0 <= per_10000 <= 10000:
            raise ValueError(f"percent must be 0..100, not {percent!r}")
        self.clear_loss(host)
        # numgen's range is 0..9999, so "< 10000" would be out of range: drop all without it.
        share = "" if per_10000 == 10000 else f"numgen random mod 10000 < {per_10000} "
        # Counted twice: every packet, then those dropped (loss_counts).
        rule = f"meta protocol ip counter {share}counter drop"
        for short, ifname in self._link_ends(host):
            self._ipc(short, ["link", "set", "dev", ifname, "gso_max_segs", "1"])
            self._netdev_fault(short, ifname, _loss_table(host), {"ingress": rule})

    def loss_counts(self, host: str) -> tuple[int, int]:
        """IPv4 packets that met :meth:`set_loss`'s rules on ``host``'s link, and those dropped, both ways.

        Returns:
            ``(seen, dropped)``; ``(0, 0)`` without loss.
        """
        seen = dropped = 0
        for short, _ in self._link_ends(host):
            done = self.exec(short, [NFT, "-j", "list", "table", "netdev", _loss_table(host)])
            if done.returncode != 0:
                continue
            for item in json.loads(done.stdout).get("nftables", []):
                counters = [e["counter"]["packets"] for e in item.get("rule", {}).get("expr", []) if "counter" in e]
                if len(counters) == 2:
                    seen, dropped = seen + counters[0], dropped + counters[1]
        return seen, dropped

    def clear_loss(self, host: str) -> None:
        """Undo :meth:`set_loss` on ``host`` (a link without loss is left alone; frames stay one segment)."""
        for short, _ in self._link_ends(host):
            self.exec(short, [NFT, "delete", "table", "netdev", _loss_table(host)])

    def router_down(self, router: str) -> None:
        """Power ``router`` off: its WAN goes silent (:meth:`cut_link`) and it forgets every mapping.

        Its LAN hosts keep their links and addresses, as behind a real router
        that is rebooting; what they send meanwhile goes nowhere.  Undone by
        :meth:`router_up`.
        """
        self.cut_link(router)
        self.restart_nat(router)

    def router_up(self, router: str) -> None:
        """Power ``router`` on again after :meth:`router_down`: state forgotten once more, WAN back.

        The flush comes first: packets its LAN sent while it was down created
        tracked connections (dropped at the WAN egress) that a rebooted router
        would not have.
        """
        self.restart_nat(router)
        self.restore_link(router)

    def _link_ends(self, host: str) -> list[tuple[str, str]]:
        """Both ends of ``host``'s link: ``(namespace short name, interface)``, the host's first."""
        h = self.hosts[host]
        if h.ifname is None or h.ip is None:
            raise LabError(f"{host} has no link")
        if host in self.routers or host in self.public_ips:
            return [(host, h.ifname), ("inet", f"p-{host}")]
        ip = ipaddress.ip_address(h.ip)
        for r in self.routers.values():
            if ip in ipaddress.ip_network(r.lan):
                return [(host, h.ifname), (r.name, f"p-{host}")]
        raise LabError(f"{host} is on no link of this lab")

    def _netdev_fault(self, short: str, ifname: str, table: str, rules: dict[str, str]) -> None:
        """A ``netdev`` table ``table`` in ``short`` applying ``rules[hook]`` at ``ifname``'s hooks."""
        chains = "".join(f"  chain {hook} {{\n    type filter hook {hook} device {ifname} priority 0;\n"
                         f"    {rule}\n  }}\n" for hook, rule in rules.items())
        path = os.path.join(self.tmpdir, f"{table}-{short}.nft")
        with open(path, "w") as f:  # a file: nft's one-line syntax cannot end a chain after a rule
            f.write(f"table netdev {table} {{\n{chains}}}\n")
        self._nft(short, ["-f", path])

    # -- internals -----------------------------------------------------------------

    def _next_ip(self) -> str:
        ip = next(self._free, None)
        if ip is None or ip == str(self.internet.broadcast_address):
            raise LabError(f"the internet {self.internet} has no free address left")
        return ip

    def _ipc(self, short: str, args: list[str]) -> None:
        done = self.exec(short, ["ip", *args])
        if done.returncode != 0:
            raise LabError(f"ip {' '.join(args)} in {short} failed: {done.stderr.strip()}")

    def _nft(self, short: str, args: list[str]) -> subprocess.CompletedProcess[str]:
        done = self.exec(short, [NFT, *args])
        if done.returncode != 0:
            raise LabError(f"nft {' '.join(args)} in {short} failed: {done.stderr.strip()}")
        return done

    def _nft_file(self, short: str, text: str) -> None:
        path = os.path.join(self.tmpdir, f"{short}.nft")
        with open(path, "w") as f:
            f.write(text)
        self._nft(short, ["-f", path])

    def _sysctl_checked(self, short: str, settings: dict[str, str]) -> None:
        """Set sysctls and read them back: unlike :meth:`Lab.sysctl`, a missing key is an error."""
        for key, value in settings.items():
            done = self.exec(short, ["sysctl", "-q", "-w", f"{key}={value}"])
            got = self.exec(short, ["sysctl", "-n", key]).stdout.strip()
            if done.returncode != 0 or got != value:
                raise LabError(f"cannot set {key}={value} in {short}: {done.stderr.strip() or got}")

    def _attach(self, short: str) -> None:
        """A new namespace on the internet: default route via the gateway, routes to routed LANs."""
        if short != "inet":
            self._ipc(short, ["route", "add", "default", "via", self.gateway])
        for cidr, via in self._routes:
            self._ipc(short, ["route", "add", cidr, "via", via])
        self._attached.append(short)

    def _route_lan(self, router: Router) -> None:
        """Make a ``"none"`` router's LAN reachable from everything on the internet."""
        for short in self._attached:
            if short != router.name:
                self._ipc(short, ["route", "add", router.lan, "via", router.wan_ip])
        self._routes.append((router.lan, router.wan_ip))

    def _start_upnpd(self, router: Router) -> None:
        if shutil.which(MINIUPNPD) is None:
            raise LabError("miniupnpd is not installed (Debian package miniupnpd-nftables)")
        stun_host, stun_port = self.stun()[0]
        base = os.path.join(self.tmpdir, f"upnp-{router.name}")
        conf = "\n".join([
            f"ext_ifname={router.wan_ifname}", f"listening_ip={router.lan_ifname}", "http_port=5000",
            "enable_upnp=yes", "enable_natpmp=yes", "secure_mode=yes", "system_uptime=yes",
            f"upnp_table_name={TABLE}", f"upnp_nat_table_name={TABLE}", "upnp_forward_chain=miniupnpd",
            "upnp_nat_chain=prerouting_miniupnpd", "upnp_nat_postrouting_chain=postrouting_miniupnpd",
            "ext_perform_stun=yes", f"ext_stun_host={stun_host}", f"ext_stun_port={stun_port}",
            f"lease_file={base}.leases", f"uuid={uuid.uuid4()}", "notify_interval=60",
            f"allow 1024-65535 {router.lan} 1024-65535", "deny 0-65535 0.0.0.0/0 0-65535", ""])
        with open(base + ".conf", "w") as f:
            f.write(conf)
        proc = self.run(router.name, [MINIUPNPD, "-f", base + ".conf", "-d", "-P", base + ".pid"],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self._upnpd[router.name] = proc
        deadline = time.monotonic() + UPNP_START
        for _ in range(10_000):  # bounded: until the log says so, it exits, or the deadline
            log = self.log_of(proc, limit=100_000)
            if all(line in log for line in UPNP_READY):
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"miniupnpd on {router.name} did not enable port forwarding:\n{log}")
            time.sleep(0.05)  # polling its log file: there is no event to wait on
        raise LabError(f"miniupnpd on {router.name} did not start")


def _dnat_of(exprs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``{proto, ext_port, int_ip, int_port}`` of one miniupnpd DNAT rule in ``nft -j`` form.

    miniupnpd matches the protocol as the raw IPv4 header byte (``@nh,72,8 0x6``)
    and the port as ``th dport``.
    """
    proto: str | None = None
    ext_port: int | None = None
    for e in exprs:
        match = e.get("match") or {}
        left, right = match.get("left"), match.get("right")
        if isinstance(left, dict) and isinstance(right, int):
            payload = left.get("payload", {})
            if payload.get("field") == "dport":
                ext_port = right
            elif (payload.get("base"), payload.get("offset"), payload.get("len")) == ("nh", 72, 8):
                proto = {6: "tcp", 17: "udp"}.get(right)
        dnat = e.get("dnat")
        if dnat and proto and ext_port is not None:
            return {"proto": proto, "ext_port": ext_port, "int_ip": dnat.get("addr"), "int_port": dnat.get("port")}
    return None


def _loss_table(host: str) -> str:
    """The name of :meth:`NatLab.set_loss`'s table for ``host``'s link (a switch holds one per link)."""
    return "fault_loss_" + "".join(c if c.isalnum() else "_" for c in host)


def natlab_unavailable_reason(upnp: bool = False) -> str | None:
    """Why a :class:`NatLab` cannot be built here (``upnp``: with miniupnpd), or ``None``."""
    reason = netns_unavailable_reason()
    if reason is None and shutil.which(NFT) is None:
        reason = "nftables `nft` is not installed (.ci/run installs it)"
    if reason is None and upnp and shutil.which(MINIUPNPD) is None:
        reason = "miniupnpd is not installed (.ci/run installs miniupnpd-nftables)"
    return reason


def natlab_or_skip(name_prefix: str = "crustnat", upnp: bool = False) -> Iterator[NatLab]:
    """Generator body for a pytest fixture: skip (fail under ``CI=true``) if the lab cannot run; yield; close."""
    skip_or_fail(natlab_unavailable_reason(upnp))
    lab = NatLab(name_prefix)
    try:
        yield lab
    finally:
        lab.close()


if __name__ == "__main__":  # `python -m tests.natlab`: one router of each type, timed, then torn down
    why = natlab_unavailable_reason(upnp=True)
    if why:
        sys.exit(f"cannot run: {why}")
    t0 = time.monotonic()
    with NatLab("natlab-demo") as demo:
        demo.public("pub", ips=2)
        for i, kind in enumerate(NAT_TYPES):
            demo.router(f"r{i}", kind, upnp=kind == "port-restricted")
            demo.host_behind(f"r{i}", f"h{i}")
        t1 = time.monotonic()
        print(f"built {demo} ({len(demo.hosts) + 1} namespaces, miniupnpd on r2) in {t1 - t0:.3f} s")
    print(f"torn down in {time.monotonic() - t1:.3f} s")
