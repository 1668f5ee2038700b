"""read_config_file(): where the default config file is looked for, and what a bad one says."""

from __future__ import annotations

import json
import logging
import pathlib

import pytest

import crust
from crust.config import Config
from crust.config_file import (
    config_file_candidates, default_bootstrap_cache_path, find_config_file, load_config, read_config_file,
)
from crust.errors import ConfigError


@pytest.fixture
def places(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, pathlib.Path]:
    """No env var, a script in tmp/bin, a user config dir in tmp/xdg: nothing exists yet."""
    (tmp_path / "bin").mkdir()
    monkeypatch.delenv("CRUST_CONFIG", raising=False)
    monkeypatch.setattr("sys.argv", [str(tmp_path / "bin" / "myapp.py"), "--flag"])
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return {
        "env": tmp_path / "env.json",
        "program": tmp_path / "bin" / "myapp.crust.config",
        "user": tmp_path / "xdg" / "crust" / "crust.config",
    }


def write(path: pathlib.Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_it_is_exported() -> None:
    assert crust.read_config_file is read_config_file


def test_candidates_in_order(places: dict[str, pathlib.Path], monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_file_candidates() == [str(places["program"]), str(places["user"])]
    monkeypatch.setenv("CRUST_CONFIG", str(places["env"]))
    assert config_file_candidates() == [str(places["env"]), str(places["program"]), str(places["user"])]


def test_home_config_dir_when_xdg_is_unset(places: dict[str, pathlib.Path], monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: pathlib.Path) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_file_candidates()[-1] == str(tmp_path / "home" / ".config" / "crust" / "crust.config")


def test_no_script_no_program_candidate(places: dict[str, pathlib.Path], monkeypatch: pytest.MonkeyPatch) -> None:
    for argv in ([], [""], ["-c"]):
        monkeypatch.setattr("sys.argv", argv)
        assert config_file_candidates() == [str(places["user"])]


def test_env_var_wins(places: dict[str, pathlib.Path], monkeypatch: pytest.MonkeyPatch) -> None:
    write(places["env"], {"tcp_port": 1111})
    write(places["program"], {"tcp_port": 2222})
    write(places["user"], {"tcp_port": 3333})
    monkeypatch.setenv("CRUST_CONFIG", str(places["env"]))
    assert find_config_file() == str(places["env"])
    assert read_config_file().tcp_port == 1111


def test_env_var_naming_a_missing_file_is_an_error(places: dict[str, pathlib.Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write(places["user"], {"tcp_port": 3333})
    monkeypatch.setenv("CRUST_CONFIG", str(places["env"]))
    with pytest.raises(ConfigError, match="CRUST_CONFIG.*env.json"):
        read_config_file()


def test_program_file_beside_the_script(places: dict[str, pathlib.Path]) -> None:
    write(places["program"], {"tcp_port": 2222})
    write(places["user"], {"tcp_port": 3333})
    assert read_config_file().tcp_port == 2222


def test_user_config_dir(places: dict[str, pathlib.Path]) -> None:
    write(places["user"], {"tcp_port": 3333, "network_name": "test"})
    cfg = read_config_file()
    assert (cfg.tcp_port, cfg.network_name) == (3333, "test")


def test_none_found_gives_defaults_and_logs_where_it_looked(
        places: dict[str, pathlib.Path], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="crust"):
        assert read_config_file() == Config()
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "crust")
    assert str(places["program"]) in text and str(places["user"]) in text
    assert not places["program"].exists() and not places["user"].exists()  # nothing was created


def test_bad_json_names_the_file(places: dict[str, pathlib.Path]) -> None:
    places["user"].parent.mkdir(parents=True)
    places["user"].write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="crust.config"):
        read_config_file()


@pytest.mark.parametrize("data, match", [
    ({"tcp_port": "80"}, "tcp_port must be an int"),
    ({"tcp_port": 70000}, "tcp_port must be in"),
    ({"enable_tcp": "yes"}, "enable_tcp must be a bool"),
    ({"upnp_lease": 0}, r"upnp_lease must be 1\.\.604800 seconds"),
    ({"upnp_lease": "3600"}, "upnp_lease must be"),
    ({"whitelisted_node_ips": ["not-an-ip"]}, "not an IP address"),
    ({"hard_coded_contacts": [{"addr": "nonsense"}]}, "hard_coded_contacts"),
    ({"hard_coded_contacts": "1.2.3.4:5"}, "hard_coded_contacts must be a list"),
    ([1, 2], "JSON object"),
    # Found by tests/test_decoder_fuzz.py: each used to escape as another exception, or load.
    ({"dev": {"colour": "red"}}, "unknown config field.*colour"),  # was TypeError
    ({"listen_host": 2130706433}, "listen_host must be an IP address"),  # was accepted as an int
])
def test_bad_values_are_named(places: dict[str, pathlib.Path], data: object, match: str) -> None:
    write(places["user"], data)
    with pytest.raises(ConfigError, match=match) as info:
        read_config_file()
    assert str(places["user"]) in str(info.value)


def test_unknown_fields_are_named(places: dict[str, pathlib.Path]) -> None:
    write(places["user"], {"tcp_port": 1, "tcp_prot": 2, "colour": "red"})
    with pytest.raises(ConfigError, match="colour, tcp_prot"):
        read_config_file()


def test_original_field_names_are_accepted(places: dict[str, pathlib.Path]) -> None:
    pid = "ab" * 32
    write(places["program"], {
        "hard_coded_contacts": ["127.0.0.1:5483", {"addr": "10.0.0.1:1", "peer_id": pid}],
        "tcp_acceptor_port": 5483,
        "service_discovery_port": None,
        "bootstrap_cache_name": "/tmp/cache.json",
        "whitelisted_node_ips": None,
        "network_name": "net",
        "dev": {"disable_external_reachability_requirement": True},
    })
    cfg = read_config_file()
    assert cfg.tcp_port == 5483
    assert cfg.service_discovery_port == 5484
    assert cfg.bootstrap_cache_path == "/tmp/cache.json"
    assert cfg.disable_external_reachability_requirement is True
    assert [str(c.addr) for c in cfg.hard_coded_contacts] == ["127.0.0.1:5483", "10.0.0.1:1"]
    assert str(cfg.hard_coded_contacts[1].peer_id) == pid


def test_json_nested_too_deep_is_a_config_error(places: dict[str, pathlib.Path]) -> None:
    places["user"].parent.mkdir(parents=True)
    places["user"].write_text("[" * 5000, encoding="utf-8")  # found by the fuzz: was RecursionError
    with pytest.raises(ConfigError, match="cannot read config file"):
        read_config_file()


def test_original_names_inside_dev_are_accepted(places: dict[str, pathlib.Path]) -> None:
    write(places["user"], {"dev": {"tcp_acceptor_port": 5483, "udp_port": None}})
    cfg = read_config_file()
    assert (cfg.tcp_port, cfg.udp_port) == (5483, 0)


def test_saved_config_reads_back(places: dict[str, pathlib.Path]) -> None:
    cfg = Config(tcp_port=4000, whitelisted_client_ips=frozenset({"10.0.0.1"}), hard_coded_contacts=(crust.Contact("1.2.3.4:5"),),
                 service_discovery_targets=("10.0.0.255", "10.0.0.1"))  # in that order: it used to come back sorted
    places["user"].parent.mkdir(parents=True)
    cfg.save(places["user"])
    assert read_config_file() == cfg


def test_config_borrows_its_file_access_from_config_file(tmp_path: pathlib.Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # crust.config is sans-IO: the default cache path, load() and save() are crust.config_file's.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert Config().bootstrap_cache_path == str(tmp_path / "cache" / "crust" / "bootstrap_cache.json")
    assert Config().bootstrap_cache_path == default_bootstrap_cache_path()
    path = tmp_path / "node.json"
    Config(tcp_port=7).save(path)
    assert json.loads(path.read_text(encoding="utf-8"))["tcp_port"] == 7
    assert Config.load(path) == load_config(path) == Config(tcp_port=7)
    with pytest.raises(ConfigError, match="cannot read config file .*missing.json"):
        Config.load(tmp_path / "missing.json")
