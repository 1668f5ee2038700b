"""Bootstrap end to end (issue 3): cache, contact order, deaf/closed/blacklisted contacts.

The original crust's test list (crust-original.md §8a) ported to real Services on loopback.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import socket
import time

import pytest

import crust

from .livenet import WAIT, Net, refused_address


def cache_file(tmp_path: pathlib.Path) -> str:
    return str(tmp_path / "cache" / "bootstrap.json")


def read_cache(path: str) -> list[dict[str, object]]:
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    assert data["version"] == 1
    return list(data["contacts"])


def test_cache_is_written_and_reused_after_a_restart_without_contacts(net: Net, tmp_path: pathlib.Path) -> None:
    path = cache_file(tmp_path)
    a, ra, a_ep = net.listener()
    first = net.service(hard_coded_contacts=[str(a_ep)], bootstrap_cache_path=path)
    assert first.bootstrap(timeout=WAIT) == a.id
    first.close()  # waits for the worker that writes the cache
    entries = read_cache(path)
    assert [(e["addr"], e["peer_id"]) for e in entries] == [(str(a_ep), str(a.id))]
    assert os.stat(path).st_mode & 0o777 == 0o600

    again = net.service(bootstrap_cache_path=path)  # no hard-coded contacts at all
    assert again.bootstrap(timeout=WAIT) == a.id


def test_a_cached_contact_with_a_changed_key_is_refused_and_forgotten(net: Net, tmp_path: pathlib.Path) -> None:
    path = cache_file(tmp_path)
    a, ra, a_ep = net.listener()
    stranger = crust.Identity.generate().peer_id
    os.makedirs(os.path.dirname(path))
    with open(path, "w", encoding="utf-8") as file:
        json.dump({"version": 1, "contacts": [{"addr": str(a_ep), "peer_id": str(stranger),
                                               "last_success": time.time()}]}, file)
    b = net.service(bootstrap_cache_path=path)
    with pytest.raises(crust.BootstrapFailed) as failed:
        b.bootstrap(timeout=WAIT)
    assert failed.value.reasons == {str(a_ep): "peer_id_mismatch"}
    assert a.peers() == []  # A never learnt who B is: the initiator aborted before sending its key
    b.close()
    assert read_cache(path) == []


def test_a_corrupt_cache_is_logged_and_replaced(net: Net, tmp_path: pathlib.Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = cache_file(tmp_path)
    os.makedirs(os.path.dirname(path))
    with open(path, "w", encoding="utf-8") as file:
        file.write("{ not json")
    a, ra, a_ep = net.listener()
    with caplog.at_level(logging.WARNING, logger="crust"):
        b = net.service(hard_coded_contacts=[str(a_ep)], bootstrap_cache_path=path)
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert b.bootstrap(timeout=WAIT) == a.id
    b.close()
    assert [e["peer_id"] for e in read_cache(path)] == [str(a.id)]


def test_cached_contacts_come_before_hard_coded_ones(net: Net, tmp_path: pathlib.Path) -> None:
    path = cache_file(tmp_path)
    cached, rc, cached_ep = net.listener()
    hard, rh, hard_ep = net.listener()
    warmup = net.service(hard_coded_contacts=[str(cached_ep)], bootstrap_cache_path=path)
    assert warmup.bootstrap(timeout=WAIT) == cached.id
    warmup.close()
    # A long stagger: the second contact would only be tried if the first failed.
    b = net.service(hard_coded_contacts=[str(hard_ep)], bootstrap_cache_path=path, bootstrap_stagger=3.0)
    assert b.bootstrap(timeout=WAIT) == cached.id


def test_a_deaf_contact_costs_at_most_one_stagger(net: Net) -> None:
    a, ra, a_ep = net.listener()
    deaf, deaf_addr = net.deaf_server()
    b = net.service(hard_coded_contacts=[deaf_addr, refused_address(), str(a_ep)], bootstrap_stagger=0.05,
                    handshake_timeout=4.0)
    start = time.monotonic()
    assert b.bootstrap(timeout=WAIT) == a.id
    # Far below the 4 s the deaf contact's handshake would take to time out.
    assert time.monotonic() - start < 2.0


def test_a_blacklisted_contact_is_never_contacted(net: Net) -> None:
    a, ra, a_ep = net.listener()
    watcher = net.track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    watcher.bind(("127.0.0.1", 0))
    watcher.listen(4)
    watcher.setblocking(False)
    watched = f"127.0.0.1:{watcher.getsockname()[1]}"
    b = net.service(hard_coded_contacts=[watched, str(a_ep)])
    assert b.bootstrap(blacklist=[watched], timeout=WAIT) == a.id
    with pytest.raises(BlockingIOError):  # nobody ever connected to the blacklisted listener
        watcher.accept()


def test_only_blacklisted_contacts_fail(net: Net) -> None:
    a, ra, a_ep = net.listener()
    b = net.service(hard_coded_contacts=[str(a_ep)])
    with pytest.raises(crust.BootstrapFailed) as failed:
        b.bootstrap(blacklist=["127.0.0.1"], timeout=WAIT)
    assert failed.value.reasons == {str(a_ep): "blacklisted"}


def test_no_contacts_fail_at_once(net: Net) -> None:
    b = net.service()
    start = time.monotonic()
    with pytest.raises(crust.BootstrapFailed, match="no contacts"):
        b.bootstrap(timeout=WAIT)
    assert time.monotonic() - start < 1.0


def test_only_invalid_contacts_fail_within_the_timeout(net: Net) -> None:
    # Wiring of bootstrap(timeout=...): the run's own timeout in detail is in test_engine_network.py.
    deaf, deaf_addr = net.deaf_server()
    refused = refused_address()
    b = net.service(hard_coded_contacts=[deaf_addr, refused], handshake_timeout=5.0)
    start = time.monotonic()
    with pytest.raises(crust.BootstrapFailed) as failed:
        b.bootstrap(timeout=0.4)
    assert time.monotonic() - start < 0.4 + 2.0  # the run's own timeout, not the 5 s handshake one
    assert failed.value.reasons == {deaf_addr: "timed out", refused: "connect failed: Connection refused"}


def test_a_wrong_network_among_good_contacts_still_succeeds(net: Net) -> None:
    other, ro, other_ep = net.listener(network_name="elsewhere")
    good, rg, good_ep = net.listener()
    b = net.service(hard_coded_contacts=[str(other_ep), str(good_ep)])
    assert b.bootstrap(timeout=WAIT) == good.id
    assert other.peers() == []


def test_stop_bootstrap_cancels_a_running_start_bootstrap(net: Net) -> None:
    deaf, deaf_addr = net.deaf_server()
    b = net.service(hard_coded_contacts=[deaf_addr], handshake_timeout=5.0, bootstrap_timeout=5.0)
    rb_failed = net.event()
    b.on_bootstrap_failed(rb_failed.set)
    b.start_bootstrap()
    b.stop_bootstrap()
    assert rb_failed.wait(WAIT)


def test_a_service_built_from_the_config_file_applies_new_whitelists_live(
        net: Net, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "node.crust.config"
    settings = dict(net.config().to_dict(), config_reload_interval=0.1)
    crust.Config.from_dict(settings).save(path)
    monkeypatch.setenv("CRUST_CONFIG", str(path))
    a = crust.Service()  # no config: read from $CRUST_CONFIG, and re-read every 0.1 s
    net.services.append(a)
    lost = net.event()
    a.on_lost(lambda peer_id: lost.set())
    a_ep = a.start_listening()[0]
    b, rb = net.client(str(a_ep))
    assert b.bootstrap(timeout=WAIT) == a.id
    assert a.is_peer_whitelisted(b.id)

    crust.Config.from_dict(dict(settings, whitelisted_node_ips=["127.0.0.9"])).save(path)
    assert lost.wait(WAIT), "A kept a peer its new whitelist excludes"
    rb.wait(lambda: rb.lost == [a.id], what="B told why it was dropped (Goodbye)")
    with pytest.raises(crust.BootstrapFailed) as failed:
        b.bootstrap(timeout=WAIT)
    assert failed.value.reasons == {str(a_ep): "denied: node_not_whitelisted"}


def test_peer_exchange_lets_a_node_reach_a_peer_it_was_never_told_about(net: Net) -> None:
    c, rc, c_ep = net.listener()
    b, rb, b_ep = net.listener(hard_coded_contacts=[str(c_ep)])
    assert b.bootstrap(timeout=WAIT) == c.id  # B knows C
    a = net.service(hard_coded_contacts=[str(b_ep)])  # A knows only B
    assert a.bootstrap(timeout=WAIT) == b.id
    # The exchange answer arrives just after the grant and has no public event: watch the
    # private list, with a bounded wait (a condition, not a sleep standing in for it).
    deadline = time.monotonic() + WAIT
    learned: list[crust.Contact] = []
    while not learned and time.monotonic() < deadline:
        learned = a._call(lambda: a._book.learned)
        net.event().wait(0.01)
    assert [(x.addr, x.peer_id) for x in learned] == [(c_ep, c.id)]
    b.close()
    assert a.bootstrap(timeout=WAIT) == c.id  # B is gone; A reaches C through what B told it
