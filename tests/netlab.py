"""A small network lab: Linux network namespaces wired with veth pairs and bridges.

Used by the tests that need real interfaces (interface broadcast, later NAT):
nothing they send ever reaches the machine's own interfaces.

* Every namespace is named ``<prefix>-<pid>-<short name>``, so two test runs
  never collide; a build first deletes namespaces of its own name and those
  of dead processes with the same prefix (leftovers of a killed run).
* veth pairs are created directly inside lab namespaces
  (``ip -n A link add X type veth peer name Y netns B``): nothing appears in the
  root namespace, even for a moment.
* Every namespace gets ``lo`` up, ``rp_filter=0`` and ``bridge-nf-call-*=0``
  (``br_netfilter`` is built in on these kernels; see
  ``/work/shared/design/TESTLAB.md``).
* A subnet that overlaps an address or route of the root namespace is refused.
* :meth:`Lab.close` ends the lab's processes by process group (each one runs in
  its own session) and then deletes its namespaces; it runs from ``__exit__``,
  so a ``with Lab(...)`` or a fixture tears the lab down on failure too.

Quick picture::

    with Lab("crustlan") as lab:
        h1, h2 = lab.build_lan(2)             # hosts on 10.77.0.1/24 and .2, behind one bridge
        proc = lab.run(h1.name, [sys.executable, "peer.py"])
        lines = LineReader(proc)
        first = lines.next_json(timeout=5)

Tests call :func:`require_netns` (or the :func:`lab_or_skip` helper) first: it
skips when namespaces cannot be made here (not root, no ``CAP_SYS_ADMIN``,
no ``ip``) — and fails instead when ``CI=true``, where the lab must run.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, TypeVar

from tests.lines import LineReader

IP = "ip"
NFT = "nft"
CMD_TIMEOUT = 5.0  # seconds any one `ip`/`sysctl` command may take
STOP_GRACE = 2.0  # seconds a lab process gets after SIGTERM before SIGKILL
MAX_IFNAME = 15  # IFNAMSIZ - 1

# Set in every lab namespace (missing keys are ignored: `sysctl -e`).
NS_SYSCTLS = {
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    "net.bridge.bridge-nf-call-iptables": "0",
    "net.bridge.bridge-nf-call-ip6tables": "0",
    "net.bridge.bridge-nf-call-arptables": "0",
}


_LabT = TypeVar("_LabT", bound="Lab")


class LabError(RuntimeError):
    """The lab could not be built (or would have touched the machine's own networks)."""


# -- can we run at all? --------------------------------------------------------

_probe_result: list[str | None] = []


def netns_unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or ``None`` if they can (probed once)."""
    if _probe_result:
        return _probe_result[0]
    reason: str | None = None
    if shutil.which(IP) is None:
        reason = "iproute2 `ip` is not installed"
    elif os.geteuid() != 0:
        reason = "network namespace lab needs root (euid is %d)" % os.geteuid()
    else:
        name = f"netlab-probe-{os.getpid()}"
        done = _ip(["netns", "add", name], check=False)
        if done.returncode != 0:
            reason = f"`ip netns add` failed (no CAP_SYS_ADMIN?): {done.stderr.strip()}"
        else:
            _ip(["netns", "del", name], check=False)
    _probe_result.append(reason)
    return reason


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(reason: str | None) -> None:
    """Skip the calling test for ``reason`` (if any); in CI (``CI=true``) fail instead, the lab must run there."""
    import pytest

    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI=true but the namespace lab cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def require_netns() -> None:
    """Skip the calling test when the lab cannot run here; in CI (``CI=true``) fail instead."""
    skip_or_fail(netns_unavailable_reason())


# -- small command helpers -----------------------------------------------------

def _run(argv: Sequence[str], *, check: bool = True, timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _ip(args: Sequence[str], *, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run([IP, *(("-n", ns) if ns else ()), *args], check=check)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_netns() -> list[str]:
    out = _ip(["-j", "netns", "list"], check=False).stdout.strip()
    try:
        return [entry["name"] for entry in json.loads(out or "[]")]
    except (ValueError, KeyError, TypeError):  # older iproute2 without -j for netns
        return [line.split()[0] for line in _ip(["netns", "list"]).stdout.splitlines() if line.strip()]


def root_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Networks of every address and route in the root namespace (read only)."""
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in json.loads(_ip(["-j", "addr", "show"]).stdout or "[]"):
        for info in entry.get("addr_info", []):
            try:
                nets.append(ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}").network)
            except (KeyError, ValueError):
                pass
    for family in ("-4", "-6"):
        for route in json.loads(_ip([family, "-j", "route", "show"], check=False).stdout or "[]"):
            dst = route.get("dst", "")
            if dst and dst != "default":
                try:
                    nets.append(ipaddress.ip_network(dst, strict=False))
                except ValueError:
                    pass
    return nets


def check_no_overlap(subnet: str) -> ipaddress.IPv4Network:
    """``subnet`` as a network; :class:`LabError` if it overlaps one of the machine's own networks."""
    net = ipaddress.ip_network(subnet, strict=True)
    if not isinstance(net, ipaddress.IPv4Network):
        raise LabError(f"lab subnets are IPv4 for now, not {subnet}")
    for own in root_networks():
        if own.version == 4 and own.prefixlen > 0 and net.overlaps(own) and not own.is_loopback:
            raise LabError(f"lab subnet {net} overlaps this machine's network {own}: refused")
    return net


# -- the lab -------------------------------------------------------------------

@dataclass(frozen=True)
class Host:
    """One lab namespace with (optionally) an address on a lab LAN."""

    name: str  # short name ("h1"), what Lab methods take
    ns: str  # the namespace's full name
    ip: str | None = None  # address on the LAN, if plugged into one
    ifname: str | None = None


class Lab:
    """A set of namespaces, their links and processes, all removed by :meth:`close`."""

    def __init__(self, name_prefix: str) -> None:
        if not name_prefix or not all(c.isalnum() or c in "-_" for c in name_prefix):
            raise ValueError(f"name_prefix must be alphanumeric (and -_), not {name_prefix!r}")
        self.prefix = name_prefix
        self.tag = f"{name_prefix}-{os.getpid()}-"
        self.hosts: dict[str, Host] = {}
        self.switches: dict[str, str] = {}  # short name -> bridge name inside it
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._files: list[Any] = []
        self.tmpdir = tempfile.mkdtemp(prefix=self.tag)
        self._closed = False
        try:
            self.remove_stale()
        except BaseException:
            self.close()
            raise

    def __enter__(self: _LabT) -> _LabT:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Lab {self.tag}* {sorted(self.hosts)}>"

    # -- namespaces ------------------------------------------------------------

    def remove_stale(self) -> list[str]:
        """Delete namespaces named like ours (this pid) or of a dead run with the same prefix.

        Processes still running inside such a namespace (a daemon a killed run
        started there, e.g. miniupnpd) are killed first: nothing else runs in a
        lab namespace, and a namespace outlives ``ip netns del`` while they do.
        A dead run's temp dir goes too.
        """
        removed = []
        for name in list_netns():
            if not name.startswith(self.prefix + "-"):
                continue
            pid_text = name[len(self.prefix) + 1:].split("-", 1)[0]
            if not pid_text.isdigit():
                continue
            if name.startswith(self.tag) or not _pid_alive(int(pid_text)):
                for pid in _ip(["netns", "pids", name], check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                _ip(["netns", "del", name], check=False)
                removed.append(name)
        for path in glob.glob(os.path.join(tempfile.gettempdir(), glob.escape(self.prefix) + "-*")):
            pid_text = os.path.basename(path)[len(self.prefix) + 1:].split("-", 1)[0]
            if pid_text.isdigit() and not _pid_alive(int(pid_text)):  # a killed run's temp dir
                shutil.rmtree(path, ignore_errors=True)
        return removed

    def add_ns(self, short: str) -> Host:
        """A new namespace with ``lo`` up and the lab sysctls; ``short`` names it in this lab."""
        self._check_open()
        if short in self.hosts or short in self.switches:
            raise LabError(f"lab already has a namespace called {short!r}")
        ns = self.tag + short
        _ip(["netns", "add", ns])
        self._namespaces.append(ns)
        _ip(["link", "set", "lo", "up"], ns=ns)
        self.sysctl(ns, NS_SYSCTLS)
        host = Host(short, ns)
        self.hosts[short] = host
        return host

    def sysctl(self, ns: str, settings: dict[str, str]) -> None:
        """Set sysctls inside namespace ``ns`` (full name); unknown keys are ignored."""
        args = [f"{k}={v}" for k, v in settings.items()]
        _run([IP, "netns", "exec", ns, "sysctl", "-q", "-e", "-w", *args])

    def add_switch(self, short: str = "sw", bridge: str = "br0") -> str:
        """A namespace holding one bridge (STP off, so ports forward at once); returns its ns."""
        host = self.add_ns(short)
        del self.hosts[short]
        self.switches[short] = bridge
        _ip(["link", "add", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0"], ns=host.ns)
        _ip(["link", "set", bridge, "up"], ns=host.ns)
        return host.ns

    def plug(self, host: str, switch: str, address: str, ifname: str = "eth0") -> Host:
        """Connect ``host`` to ``switch`` by a veth pair; ``address`` is ``"10.77.0.2/24"`` style."""
        self._check_open()
        h, sw_ns = self.hosts[host], self.tag + switch
        bridge = self.switches[switch]
        port = f"p-{host}"
        for name in (port, ifname):
            if len(name) > MAX_IFNAME:
                raise LabError(f"interface name {name!r} is longer than {MAX_IFNAME} characters")
        iface = ipaddress.ip_interface(address)
        _ip(["link", "add", port, "type", "veth", "peer", "name", ifname, "netns", h.ns], ns=sw_ns)
        _ip(["link", "set", port, "master", bridge, "up"], ns=sw_ns)
        # `brd +`: the broadcast address is set explicitly (what netifaces reports as "broadcast").
        _ip(["addr", "add", str(iface), "brd", "+", "dev", ifname], ns=h.ns)
        _ip(["link", "set", ifname, "up"], ns=h.ns)
        # rp_filter is also per interface (the stricter of all/<if> applies).
        self.sysctl(h.ns, {f"net.ipv4.conf.{ifname}.rp_filter": "0"})
        updated = Host(host, h.ns, str(iface.ip), ifname)
        self.hosts[host] = updated
        return updated

    def build_lan(self, hosts: int, subnet: str = "10.77.0.0/24", switch: str = "sw",
                  first: int = 1) -> list[Host]:
        """``hosts`` namespaces ``h1..hN`` on ``subnet`` (``h1`` = network + ``first``) behind one bridge."""
        if not 1 <= hosts <= 200:
            raise ValueError(f"hosts must be 1..200, not {hosts}")
        net = check_no_overlap(subnet)
        self.add_switch(switch)
        built = []
        for i in range(1, hosts + 1):
            name = f"h{i}"
            self.add_ns(name)
            built.append(self.plug(name, switch, f"{net.network_address + first + i - 1}/{net.prefixlen}"))
        return built

    def drop_randomly(self, host: str, per_10000: int) -> None:
        """Drop ``per_10000``/10000 of the IPv4 packets arriving on ``host``'s LAN interface.

        These kernels have no ``netem`` (TESTLAB.md "Lossy, slow links"): the
        loss is an nftables ``netdev`` ingress rule on the host's veth end, so it
        lives and dies with the lab namespace.

        Raises:
            LabError: ``nft`` is missing or refused the rule.
        """
        if not 0 <= per_10000 <= 10000:
            raise ValueError(f"per_10000 must be 0..10000, not {per_10000}")
        h = self.hosts[host]
        if h.ifname is None:
            raise LabError(f"{host} has no LAN interface to make lossy")
        if shutil.which(NFT) is None:
            raise LabError("nftables `nft` is not installed")
        ruleset = os.path.join(self.tmpdir, f"lossy-{host}.nft")
        # numgen's range is 0..9999, so "< 10000" would be out of range: drop all without it.
        share = "" if per_10000 == 10000 else f"numgen random mod 10000 < {per_10000}"
        with open(ruleset, "w") as f:  # a file: nft's one-line syntax cannot end a chain after a rule
            f.write(f"table netdev lossy {{\n  chain ingress {{\n"
                    f"    type filter hook ingress device {h.ifname} priority 0;\n"
                    f"    meta protocol ip {share} drop\n  }}\n}}\n")
        done = self.exec(host, [NFT, "-f", ruleset])
        if done.returncode != 0:
            raise LabError(f"nft refused the loss rule on {host}: {done.stderr.strip()}")

    def stop_dropping(self, host: str) -> None:
        """Undo :meth:`drop_randomly` on ``host`` (its loss table goes; a host without one is left alone)."""
        self.exec(host, [NFT, "delete", "table", "netdev", "lossy"])

    # -- processes -------------------------------------------------------------

    def exec(self, host: str, argv: Sequence[str], timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run a short command inside ``host`` to completion (output captured, not checked)."""
        return _run([IP, "netns", "exec", self._ns(host), *argv], check=False, timeout=timeout)

    def run(self, host: str, argv: Sequence[str], *, stdin: Any = subprocess.PIPE, stdout: Any = subprocess.PIPE,
            stderr: Any = None, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host``; ended by :meth:`close` if still running then.

        The process gets its own session (so its group can be killed), stdin and stdout
        pipes by default, and stderr in a log file whose path is ``proc.log_path``.
        """
        self._check_open()
        log_path = os.path.join(self.tmpdir, f"{host}-{len(self._procs)}.log")
        if stderr is None:
            stderr = open(log_path, "wb")
            self._files.append(stderr)
        proc = subprocess.Popen([IP, "netns", "exec", self._ns(host), *argv], stdin=stdin, stdout=stdout,
                                stderr=stderr, start_new_session=True, **kwargs)
        proc.log_path = log_path  # type: ignore[attr-defined]
        self._procs.append(proc)
        return proc

    def log_of(self, proc: subprocess.Popen[Any], limit: int = 4000) -> str:
        """The tail of ``proc``'s stderr log (for failure messages)."""
        path: str = getattr(proc, "log_path", "")
        try:
            with open(path, "rb") as f:
                return f.read()[-limit:].decode(errors="replace")
        except (OSError, AttributeError):
            return ""

    def stop(self, proc: subprocess.Popen[Any], grace: float = STOP_GRACE) -> int | None:
        """Close ``proc``'s stdin, give it ``grace`` s to exit, then SIGTERM/SIGKILL its group."""
        if proc.stdin and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, CMD_TIMEOUT)):
            try:
                os.killpg(proc.pid, sig)  # its own session: pgid == pid, a group we started
            except ProcessLookupError:
                pass
            try:
                return proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return None

    # -- teardown --------------------------------------------------------------

    def close(self) -> None:
        """End every lab process (by pid/group), delete every lab namespace. Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for proc in self._procs:
            if proc.poll() is None:
                if proc.stdin is not None:
                    _quiet_close(proc.stdin)
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_GRACE
        for proc in self._procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(CMD_TIMEOUT)
                except subprocess.TimeoutExpired:
                    errors.append(f"process {proc.pid} survived SIGKILL")
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    _quiet_close(pipe)
        for f in self._files:
            _quiet_close(f)
        for ns in reversed(self._namespaces):
            done = _ip(["netns", "del", ns], check=False)
            if done.returncode != 0 and ns in list_netns():
                errors.append(f"cannot delete namespace {ns}: {done.stderr.strip()}")
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        if errors:
            raise LabError("; ".join(errors))

    def _ns(self, host: str) -> str:
        if host in self.hosts:
            return self.hosts[host].ns
        if host in self.switches:
            return self.tag + host
        raise LabError(f"no namespace {host!r} in this lab")

    def _check_open(self) -> None:
        if self._closed:
            raise LabError("lab is closed")


def _quiet_close(f: Any) -> None:
    try:
        f.close()
    except OSError:
        pass


# -- reading a lab process's output: tests.lines.LineReader ------------------------

def expect_event(lab: Lab, peer: LineReader, event: str, timeout: float) -> dict[str, Any]:
    """The peer's next ``event`` line within ``timeout`` s; fails the test (with its output) otherwise.

    An ``"error"`` line or the end of output fails too, showing what the peer printed.
    """
    import pytest

    msg = peer.wait_for(event, timeout)
    if msg is None or msg.get("event") != event:
        peer.drain(1.0)
        pytest.fail(f"expected {event!r} from {peer.name}, got {msg!r}\n"
                    f"stdout: {peer.lines}\nstderr:\n{lab.log_of(peer.proc)}", pytrace=False)
    return msg


def lab_or_skip(name_prefix: str) -> Iterator[Lab]:
    """Generator body for a pytest fixture: skip/fail via :func:`require_netns`, yield a Lab, close it."""
    require_netns()
    lab = Lab(name_prefix)
    try:
        yield lab
    finally:
        lab.close()


if __name__ == "__main__":  # `python tests/netlab.py`: build a 3-host LAN, ping across it, tear down
    why = netns_unavailable_reason()
    if why:
        sys.exit(f"cannot run: {why}")
    t0 = time.monotonic()
    with Lab("netlab-demo") as demo:
        hs = demo.build_lan(3)
        t1 = time.monotonic()
        print(f"built {demo} in {t1 - t0:.3f} s")
        print(demo.exec("h1", ["ping", "-c", "1", "-W", "1", hs[1].ip or ""]).stdout)
        t2 = time.monotonic()
    print(f"torn down in {time.monotonic() - t2:.3f} s")
