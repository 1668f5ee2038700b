"""crust.identity: saving and loading a Service's long-term key."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from crust.crypto.keys import KeyPair
from crust.errors import ConfigError, CrustError
from crust.identity import Identity, InsecureKeyFileWarning

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")

PRIVATE = bytes(range(32))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_is_an_identity_and_a_key_pair() -> None:
    identity = Identity.generate()
    assert type(identity) is Identity
    assert isinstance(identity, KeyPair)
    assert identity.peer_id.raw == identity.public_bytes


def test_save_load_round_trip(tmp_path: Path) -> None:
    identity = Identity.generate()
    path = tmp_path / "node.key"
    identity.save(path)
    loaded = Identity.load(path)
    assert type(loaded) is Identity
    assert loaded.private_bytes == identity.private_bytes
    assert loaded.peer_id == identity.peer_id


def test_accepts_str_paths(tmp_path: Path) -> None:
    path = str(tmp_path / "node.key")
    Identity(PRIVATE).save(path)
    assert Identity.load(path).private_bytes == PRIVATE


def test_file_format(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    Identity(PRIVATE).save(path)
    assert path.read_bytes() == b"crust-identity v1\n" + PRIVATE.hex().encode() + b"\n"


@posix_only
def test_saved_file_has_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        Identity.generate().save(path)
    finally:
        os.umask(old_umask)
    assert mode_of(path) == 0o600


@posix_only
def test_save_replaces_an_existing_file_and_fixes_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_text("old contents")
    path.chmod(0o644)
    identity = Identity.generate()
    identity.save(path)
    assert mode_of(path) == 0o600
    assert Identity.load(path).private_bytes == identity.private_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["node.key"]  # no temporary file left behind


def test_save_into_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "node.key"
    with pytest.raises(ConfigError, match="missing"):
        Identity.generate().save(path)


@posix_only
def test_loading_a_readable_file_warns(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    Identity(PRIVATE).save(path)
    path.chmod(0o644)
    with pytest.warns(InsecureKeyFileWarning) as record:
        loaded = Identity.load(path)
    assert loaded.private_bytes == PRIVATE
    message = str(record[0].message)
    assert str(path) in message and "0644" in message


@posix_only
def test_group_access_alone_warns(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    Identity(PRIVATE).save(path)
    path.chmod(0o640)
    with pytest.warns(InsecureKeyFileWarning, match="0640"):
        Identity.load(path)


def test_warning_class() -> None:
    assert issubclass(InsecureKeyFileWarning, UserWarning)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(ConfigError, match="nope.key"):
        Identity.load(path)


def test_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path.name)):
        Identity.load(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage",
        b"crust-identity v1\n",
        b"crust-identity v2\n" + PRIVATE.hex().encode() + b"\n",
        b"crust-identity v1\n" + PRIVATE.hex().encode(),  # no trailing newline
        b"crust-identity v1\n" + PRIVATE.hex()[:-2].encode() + b"\n",  # 31 bytes
        b"crust-identity v1\n" + PRIVATE.hex().encode() + b"00\n",  # 33 bytes
        b"crust-identity v1\n" + PRIVATE.hex().replace("0", " ", 1).encode() + b"\n",
        b"crust-identity v1\n" + b"zz" * 32 + b"\n",
        b"crust-identity v1\n" + PRIVATE.hex().encode() + b"\nextra\n",
        b"crust-identity v1\r\n" + PRIVATE.hex().encode() + b"\r\n",
        b"\xff\xfe" + PRIVATE.hex().encode(),
        b"x" * 5000,
    ],
)
def test_corrupt_file_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "corrupt.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        Identity.load(path)
    assert str(path) in str(info.value)
    assert PRIVATE.hex() not in str(info.value)  # a near-miss key must not leak into logs
    assert isinstance(info.value, CrustError) and isinstance(info.value, ValueError)


def test_repr_hides_the_private_key() -> None:
    identity = Identity(PRIVATE)
    text = repr(identity)
    assert PRIVATE.hex() not in text
    assert PRIVATE.hex()[:8] not in text
    assert text.startswith("Identity(") and repr(identity.peer_id) in text
    assert PRIVATE.hex() not in str(identity)
