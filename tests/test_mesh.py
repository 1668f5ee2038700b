"""A mesh that grows by itself (Config.target_peers): real Services on loopback.

Ten Services each know only the first one; with ``target_peers=9`` they end
fully meshed through peer exchange, each link once.
"""

from __future__ import annotations

import time

import crust

from .livenet import WAIT, Net, Recorder

N = 10


def test_ten_services_that_know_only_the_first_end_fully_meshed(net: Net) -> None:
    cfg = dict(target_peers=N - 1, enable_udp=False, disable_external_reachability_requirement=False)
    first = net.service(**cfg)
    seed = first.start_listening()[0]
    services, recorders = [first], [Recorder(first)]
    for _ in range(N - 1):
        svc = net.service(hard_coded_contacts=[str(seed)], **cfg)
        recorders.append(Recorder(svc))
        svc.start_listening()  # a Node: its mesh dials are bootstraps that need a reachable listener
        assert svc.bootstrap(timeout=WAIT) == first.id
        services.append(svc)
    ids = {svc.id for svc in services}
    deadline = time.monotonic() + 3 * WAIT
    for svc in services:  # bounded: each Service must reach the full mesh before the deadline
        while {p.id for p in svc.peers()} != ids - {svc.id}:
            assert time.monotonic() < deadline, f"{svc!r} has {len(svc.peers())} peers"
            time.sleep(0.05)
    for rec in recorders:
        assert not rec.lost  # duplicates were settled without losing a peer
    assert all(len(svc.peers()) == N - 1 for svc in services)


def test_target_peers_is_checked() -> None:
    for bad in (-1, 5000):
        try:
            crust.Config(target_peers=bad, bootstrap_cache_path=None)
        except crust.ConfigError as err:
            assert "target_peers" in str(err)
        else:
            raise AssertionError(f"target_peers={bad} was accepted")
