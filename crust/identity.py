"""A Service's long-term identity, and how it is kept on disk.

:class:`Identity` is a :class:`~crust.crypto.keys.KeyPair` that can be saved
and loaded.  This is shell code (it opens files); the key maths lives in the
sans-IO ``crust.crypto`` package.

File format (text, ASCII, exactly two lines, each ending in a newline)::

    crust-identity v1
    <the private key as 64 hex digits>

The file is created with mode 0600 and replaced atomically, so a crash never
leaves half a key behind.  Loading a file that group or others may access
still works, but warns with :class:`InsecureKeyFileWarning`.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from typing import Union

from crust.crypto.keys import KEY_SIZE, KeyPair
from crust.errors import ConfigError
from crust.files import write_private_file

__all__ = ["Identity", "InsecureKeyFileWarning"]

PathLike = Union[str, "os.PathLike[str]"]

_HEADER = "crust-identity v1"
_FORMAT = re.compile(r"crust-identity v1\n([0-9a-fA-F]{%d})\n" % (2 * KEY_SIZE))
# A valid file is 83 bytes; refuse to read much more than that (a wrong path
# pointing at a large file must not be read into memory).
_MAX_FILE_SIZE = 1024  # bytes


class InsecureKeyFileWarning(UserWarning):
    """An identity file can be read or written by users other than its owner."""


class Identity(KeyPair):
    """A Service's long-term key pair; its public key is its PeerId.

    Create one with :meth:`generate` (inherited: returns an ``Identity``) or
    :meth:`load`, or from 32 private-key bytes.  ``repr()`` shows the PeerId,
    never the private key.

    Args:
        private: the 32-byte X25519 private key.

    Raises:
        TypeError: ``private`` is not bytes-like.
        ValueError: ``private`` is not 32 bytes.
    """

    __slots__ = ()

    @classmethod
    def load(cls, path: PathLike) -> Identity:
        """Read an identity saved by :meth:`save`.

        Args:
            path: the identity file.

        Returns:
            The identity stored there.

        Raises:
            ConfigError: the file is missing, unreadable, or not a crust
                identity file; the message names the path.

        Warns:
            InsecureKeyFileWarning: the file's mode lets group or others in
                (``mode & 0o077``); the message names the path and the mode.
        """
        name = os.fspath(path)
        try:
            with open(name, "rb") as file:
                mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
                data = file.read(_MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            raise ConfigError(f"identity file {name!r} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read identity file {name!r}: {exc.strerror or exc}") from exc
        if len(data) > _MAX_FILE_SIZE:
            raise ConfigError(f"identity file {name!r} is too large to be a crust identity")
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        match = _FORMAT.fullmatch(text)
        if match is None:
            first_line = text.split("\n", 1)[0] if text else ""
            why = "unknown header" if first_line != _HEADER else "the key line is not 64 hex digits"
            raise ConfigError(
                f"identity file {name!r} is corrupt ({why}); expected {_HEADER!r} then the private key in hex"
            )
        identity = cls(bytes.fromhex(match.group(1)))
        # Warn only about a file that really holds a key: the key is exposed
        # whether or not we go on using it.
        if mode & 0o077:
            warnings.warn(
                InsecureKeyFileWarning(
                    f"identity file {name!r} has mode {mode:04o}: group or others can access the "
                    f"private key; run 'chmod 600' on it"
                ),
                stacklevel=2,
            )
        return identity

    def save(self, path: PathLike) -> None:
        """Write this identity to ``path`` with mode 0600, replacing any file there atomically.

        The key goes to a new temporary file in the same directory, which is
        flushed to disk and then renamed over ``path``: readers see either the
        old file or the complete new one.

        Args:
            path: where to store the identity.

        Raises:
            ConfigError: the file could not be written; the message names the
                path and the OS error is the ``__cause__``.
        """
        content = f"{_HEADER}\n{self.private_bytes.hex()}\n".encode("ascii")
        write_private_file(path, content, what="identity file")
