"""BootstrapCache (crust/bootstrap/cache.py): MRU order, limits, and its JSON form."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crust.bootstrap.cache import BootstrapCache, CacheEntry
from crust.errors import ConfigError
from crust.ids import Contact, Endpoint, PeerId


def pid(n: int) -> PeerId:
    return PeerId(n.to_bytes(32, "big"))


def contact(n: int, port: int | None = None) -> Contact:
    return Contact(Endpoint(f"10.0.{n // 256 % 256}.{n % 256}", port or 5000 + n % 1000), pid(n))


def test_most_recent_first() -> None:
    cache = BootstrapCache()
    for n in range(3):
        cache.record_success(contact(n), 100.0 + n)
    assert cache.contacts() == [contact(2), contact(1), contact(0)]
    cache.record_success(contact(0), 200.0)
    assert cache.contacts() == [contact(0), contact(2), contact(1)]
    assert cache.entries()[0] == CacheEntry(contact(0), 200.0)
    assert len(cache) == 3


def test_dedup_by_host_and_port_replaces_the_peer_id() -> None:
    cache = BootstrapCache()
    addr = Endpoint("10.0.0.1", 5483)
    cache.record_success(Contact(addr, pid(1)), 1.0)
    cache.record_success(Contact(Endpoint("10.0.0.2", 5483), pid(2)), 2.0)
    cache.record_success(Contact(addr, pid(3)), 3.0)
    assert cache.contacts() == [Contact(addr, pid(3)), Contact(Endpoint("10.0.0.2", 5483), pid(2))]
    # The transport is not part of the key: the same host:port over UDP is the same entry.
    cache.record_success(Contact(Endpoint("10.0.0.1", 5483, "udp"), pid(3)), 4.0)
    assert len(cache) == 2


def test_trims_the_oldest_beyond_max_entries() -> None:
    cache = BootstrapCache()
    total = BootstrapCache.MAX_ENTRIES + 10
    for n in range(total):
        cache.record_success(contact(n, port=1000 + n), float(n))
    assert BootstrapCache.MAX_ENTRIES == 1500
    assert len(cache) == 1500
    kept = cache.contacts()
    assert kept[0] == contact(total - 1, port=1000 + total - 1)
    assert kept[-1] == contact(10, port=1010)  # the ten oldest are gone


def test_failure_drops_the_entry() -> None:
    cache = BootstrapCache()
    cache.record_success(contact(1), 1.0)
    cache.record_success(contact(2), 2.0)
    cache.record_failure(contact(1).addr)
    assert cache.contacts() == [contact(2)]
    cache.record_failure(Endpoint("192.0.2.1", 1))  # not cached: no-op
    assert len(cache) == 1


def test_contacts_without_peer_id_or_bad_times_are_refused() -> None:
    cache = BootstrapCache()
    with pytest.raises(ValueError, match="PeerId"):
        cache.record_success(Contact("10.0.0.1:1"), 1.0)
    for when in (float("nan"), float("inf"), True):
        with pytest.raises(ValueError):
            cache.record_success(contact(1), when)
    assert len(cache) == 0


def test_round_trip() -> None:
    cache = BootstrapCache()
    cache.record_success(Contact(Endpoint("::1", 7), pid(7)), 7.5)
    cache.record_success(Contact(Endpoint("example.com", 80), pid(8)), 8.0)
    cache.record_success(Contact(Endpoint("10.0.0.9", 9, "udp"), pid(9)), 1_700_000_000.25)
    text = cache.dumps()
    data = json.loads(text)
    assert data["version"] == 1
    assert data["contacts"][0] == {"addr": "udp://10.0.0.9:9", "peer_id": str(pid(9)), "last_success": 1_700_000_000.25}
    again = BootstrapCache.loads(text)
    assert again.entries() == cache.entries()
    assert again.skipped == 0
    assert BootstrapCache.loads(BootstrapCache().dumps()).contacts() == []


@pytest.mark.parametrize("text, match", [
    ("", "not valid JSON"),
    ("{", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('"x"', "JSON object"),
    ('{"contacts": []}', "version"),
    ('{"version": 2, "contacts": []}', "version"),
    ('{"version": true, "contacts": []}', "version"),
    ('{"version": "1", "contacts": []}', "version"),
    ('{"version": 1}', "contacts"),
    ('{"version": 1, "contacts": {}}', "contacts"),
    ("[" * 100_000, "not valid JSON"),
])
def test_malformed_files_raise_config_error(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BootstrapCache.loads(text)


def test_malformed_entries_are_skipped_and_counted() -> None:
    good = {"addr": "10.0.0.1:5483", "peer_id": str(pid(1)), "last_success": 5.0}
    bad = [
        "10.0.0.2:1",
        {"addr": "10.0.0.2:1", "last_success": 1.0},  # no peer_id
        {"addr": "10.0.0.2:1", "peer_id": "zz", "last_success": 1.0},
        {"addr": "10.0.0.2:1", "peer_id": str(pid(2))[:-2], "last_success": 1.0},
        {"addr": "nonsense", "peer_id": str(pid(2)), "last_success": 1.0},
        {"addr": "10.0.0.2:99999", "peer_id": str(pid(2)), "last_success": 1.0},
        {"addr": 5, "peer_id": str(pid(2)), "last_success": 1.0},
        {"addr": "10.0.0.2:1", "peer_id": str(pid(2)), "last_success": "yesterday"},
        {"addr": "10.0.0.2:1", "peer_id": str(pid(2)), "last_success": None},
        {"addr": "10.0.0.2:1", "peer_id": str(pid(2)), "last_success": False},
    ]
    text = json.dumps({"version": 1, "contacts": [bad[0], good, *bad[1:]]})
    cache = BootstrapCache.loads(text)
    assert cache.contacts() == [Contact("10.0.0.1:5483", pid(1))]
    assert cache.skipped == len(bad)
    nan = '{"version": 1, "contacts": [{"addr": "10.0.0.2:1", "peer_id": "%s", "last_success": NaN}]}' % pid(2)
    assert BootstrapCache.loads(nan).skipped == 1
    huge = '{"version": 1, "contacts": [{"addr": "10.0.0.2:1", "peer_id": "%s", "last_success": 1%s}]}' % (
        pid(2), "0" * 400)
    assert BootstrapCache.loads(huge).skipped == 1


def test_loads_dedups_and_caps() -> None:
    entries = [{"addr": "10.0.0.1:1", "peer_id": str(pid(1)), "last_success": 9.0},
               {"addr": "10.0.0.1:1", "peer_id": str(pid(2)), "last_success": 1.0}]
    entries += [{"addr": f"10.1.{n // 256}.{n % 256}:1", "peer_id": str(pid(n + 10)), "last_success": 1.0}
                for n in range(BootstrapCache.MAX_ENTRIES + 5)]
    cache = BootstrapCache.loads(json.dumps({"version": 1, "contacts": entries}))
    assert len(cache) == BootstrapCache.MAX_ENTRIES
    assert cache.contacts()[0] == Contact("10.0.0.1:1", pid(1))  # the first (most recent) wins
    assert cache.skipped == 0


_json = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["version", "contacts", "addr", "peer_id", "last_success", "x"]), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | _json.map(json.dumps))
def test_loads_of_anything_raises_only_config_error(text: str) -> None:
    try:
        cache = BootstrapCache.loads(text)
    except ConfigError:
        return
    assert BootstrapCache.loads(cache.dumps()).entries() == cache.entries()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries({
    "addr": st.sampled_from(["10.0.0.1:1", "10.0.0.2:2", "[::1]:3", "udp://10.0.0.1:1", "bad", 3]),
    "peer_id": st.sampled_from([str(pid(1)), str(pid(2)), "00", None]),
    "last_success": st.one_of(st.floats(), st.integers(), st.integers(min_value=10**308), st.none()),
}), max_size=8))
def test_loads_of_cache_shaped_files(entries: list[dict[str, object]]) -> None:
    cache = BootstrapCache.loads(json.dumps({"version": 1, "contacts": entries}))
    assert len(cache) + cache.skipped <= len(entries)
    assert BootstrapCache.loads(cache.dumps()).entries() == cache.entries()
