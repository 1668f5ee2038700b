"""Rows for what users hand us: connection info, endpoints and ids, config and identity files, the cache."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Callable, TypeVar

from hypothesis import strategies as st

from crust.bootstrap.cache import BootstrapCache, CacheEntry
from crust.cli.chat import decode_info, encode_info
from crust.config import Config
from crust.config_file import load_config
from crust.connection_info import MAX_ENDPOINTS, PubConnectionInfo
from crust.errors import ConfigError
from crust.identity import Identity
from crust.ids import Contact, Endpoint, PeerId
from .base import Decoder, ip_endpoints, ip_hosts, json_objects, json_values, peer_ids, text

token_16 = st.binary(min_size=16, max_size=16)
conn_infos = st.builds(
    PubConnectionInfo.gather, peer_ids, token_16, listeners=st.lists(ip_endpoints(1), max_size=6),
    tcp_punch=st.lists(ip_endpoints(1, ("tcp",)), max_size=4), udp_punch=st.lists(ip_endpoints(1, ("udp",)), max_size=4))
endpoint_texts = st.lists(ip_endpoints(1).map(str) | st.sampled_from(["x:y", "udp://1.2.3.4:0", "[::1]:9"]),
                          max_size=MAX_ENDPOINTS + 1)
conn_info_json = json_objects({
    "version": st.sampled_from([1, 2, 3, 0, -1, 10**30]), "peer_id": peer_ids.map(str), "token": token_16.map(bytes.hex),
    "endpoints": endpoint_texts, "listeners": endpoint_texts, "tcp_punch": endpoint_texts, "udp_punch": endpoint_texts,
})
hostnames = st.from_regex(r"\A[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z]{1,5}){0,2}\Z")
any_endpoints = st.builds(Endpoint, ip_hosts | hostnames, st.integers(0, 65535), st.sampled_from(("tcp", "udp")))
contact_endpoints = st.builds(Endpoint, ip_hosts | hostnames, st.integers(1, 65535), st.sampled_from(("tcp", "udp")))


_T = TypeVar("_T")


def _from_file(parse: Callable[[str], _T], data: bytes) -> _T:
    """Run a file parser on ``data`` written to a private (mode 0600) temporary file."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "input")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        return parse(path)


def _config(data: bytes) -> Config:
    config = _from_file(load_config, data)
    assert isinstance(config.listen_host, str)
    return config


def _config_bytes(config: Config) -> bytes:
    return json.dumps(config.to_dict()).encode()


positive_seconds = st.floats(min_value=1e-3, max_value=1e6)
counts = st.integers(1, 1 << 40)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    """Valid Configs, every field drawn."""
    heartbeat = draw(positive_seconds)
    max_message = draw(st.integers(1, 1 << 30))
    ips = st.lists(ip_hosts, max_size=3)
    return Config(
        # A valid config's contacts have real ports: Config refuses port 0 there.
        hard_coded_contacts=draw(st.lists(st.builds(Contact, contact_endpoints, st.none() | peer_ids), max_size=3)),
        tcp_port=draw(st.integers(0, 65535)), udp_port=draw(st.integers(0, 65535)), listen_host=draw(ip_hosts),
        enable_tcp=draw(st.booleans()), enable_udp=draw(st.booleans()), enable_upnp=draw(st.booleans()),
        force_acceptor_port_in_ext_ep=draw(st.booleans()), service_discovery_port=draw(st.integers(0, 65535)),
        service_discovery_targets=draw(st.none() | ips.map(tuple)), bootstrap_cache_path=draw(st.none() | st.text()),
        whitelisted_node_ips=draw(st.none() | ips), whitelisted_client_ips=draw(st.none() | ips),
        network_name=draw(st.none() | st.text(max_size=20)),
        disable_external_reachability_requirement=draw(st.booleans()), heartbeat_interval=heartbeat,
        inactivity_timeout=heartbeat * draw(st.floats(1.01, 100)), max_message_size=max_message,
        relay=draw(st.booleans()), relay_max_circuits=draw(counts), relay_max_bytes_per_s=draw(counts),
        handshake_timeout=draw(positive_seconds), max_pending_handshakes=draw(counts),
        max_pending_handshakes_per_ip=draw(counts), max_peers=draw(counts), bootstrap_timeout=draw(positive_seconds),
        bootstrap_max_in_flight=draw(counts), bootstrap_stagger=draw(st.floats(0, 1e6)),
        send_queue_limit=draw(st.integers(max_message, 1 << 40)), drop_after=draw(positive_seconds),
        receive_backlog_limit=draw(st.integers(max_message, 1 << 40)),
        service_discovery_window=draw(positive_seconds), connect_timeout=draw(positive_seconds),
        peer_exchange=draw(st.booleans()), config_reload_interval=draw(positive_seconds),
    )


_CONFIG_FIELDS = {f.name: st.nothing() for f in dataclasses.fields(Config)}
config_json = json_objects({
    **_CONFIG_FIELDS, "tcp_acceptor_port": st.integers(0, 65535), "bootstrap_cache_name": st.text(max_size=10),
    "listen_host": ip_hosts, "hard_coded_contacts": st.lists(any_endpoints.map(str) | st.fixed_dictionaries(
        {"addr": any_endpoints.map(str)}, optional={"peer_id": peer_ids.map(str) | json_values}), max_size=3),
    "dev": st.dictionaries(st.sampled_from([*_CONFIG_FIELDS, "tcp_acceptor_port", "nope"]), json_values, max_size=3),
})


def _identity(data: bytes) -> bytes:
    return _from_file(Identity.load, data).private_bytes


def _identity_file(private: bytes) -> bytes:
    return f"crust-identity v1\n{private.hex()}\n".encode()


def _cache(data: bytes) -> list[Any]:
    return BootstrapCache.loads(text(data)).entries()


def _cache_text(entries: list[Any]) -> bytes:
    cache = BootstrapCache()
    for entry in reversed(entries):  # record_success puts each at the front
        cache.record_success(entry.contact, entry.last_success)
    return cache.dumps().encode()


cache_entries = st.lists(st.builds(CacheEntry, st.builds(Contact, any_endpoints, peer_ids), st.floats(-1e12, 1e12)),
                         max_size=5, unique_by=lambda e: (e.contact.addr.host, e.contact.addr.port))
cache_json = json_objects({"version": st.just(1), "contacts": st.lists(st.fixed_dictionaries({}, optional={
    "addr": any_endpoints.map(str), "peer_id": peer_ids.map(str), "last_success": st.floats()}), max_size=4)})

USER = (
    Decoder("connection_info.bytes", PubConnectionInfo.from_bytes, (ValueError,),
            ("crust.connection_info.PubConnectionInfo.from_bytes",), conn_infos, PubConnectionInfo.to_bytes,
            canonical=False, max_size=400),
    Decoder("connection_info.json", PubConnectionInfo.from_json, (ValueError,),
            ("crust.connection_info.PubConnectionInfo.from_json",), conn_infos, lambda i: i.to_json().encode(),
            canonical=False, noise=conn_info_json),
    Decoder("cli.chat.decode_info", lambda data: decode_info(text(data)), (ValueError,), ("crust.cli.chat.decode_info",),
            conn_infos, lambda info: encode_info(info).encode(), canonical=False,
            noise=conn_info_json | conn_infos.map(lambda i: i.to_json().encode())),
    Decoder("ids.endpoint", lambda data: Endpoint.parse(text(data)), (ValueError,), ("crust.ids.Endpoint.parse",),
            any_endpoints, lambda ep: str(ep).encode(), canonical=False,
            noise=st.tuples(st.sampled_from(["", "tcp://", "udp://", "UDP://", "x://", " "]), ip_hosts | hostnames,
                            st.sampled_from([":", "]:", ":-", "::"]), st.text("0123456789٣²", max_size=7)).map(
                lambda t: "".join(t).encode())),
    Decoder("ids.peer_id", lambda data: PeerId.from_str(text(data)), (ValueError,), ("crust.ids.PeerId.from_str",),
            peer_ids, lambda pid: str(pid).encode(), canonical=False),
    Decoder("bootstrap.cache", _cache, (ConfigError,), ("crust.bootstrap.cache.BootstrapCache.loads",),
            cache_entries, _cache_text, canonical=False, noise=cache_json),
    Decoder("config.file", _config, (ConfigError,), (
        "crust.config_file.load_config", "crust.config.Config.from_dict", "crust.config.Config.load"),
        configs(), _config_bytes, canonical=False, noise=config_json | st.integers(1, 3000).map(
            lambda depth: b"[" * depth * 10)),
    Decoder("identity.file", _identity, (ConfigError,), ("crust.identity.Identity.load",),
            st.binary(min_size=32, max_size=32), _identity_file, canonical=False,
            noise=st.binary(min_size=32, max_size=32).map(_identity_file).map(lambda f: f.upper())),
)
