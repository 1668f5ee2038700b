"""Small files crust keeps for the user: written atomically, readable only by them.

Used for the identity key and the bootstrap cache.  Shell code (file I/O);
the formats themselves live in sans-IO modules.
"""

from __future__ import annotations

import os
import secrets

from .errors import ConfigError

__all__ = ["write_private_file", "PRIVATE_MODE"]

PRIVATE_MODE = 0o600


def write_private_file(path: str | os.PathLike[str], content: bytes, *, what: str, make_dirs: bool = False) -> None:
    """Replace ``path`` atomically with ``content``, mode 0600.

    The bytes go to a new temporary file in the same directory, which is
    flushed to disk and then renamed over ``path``: readers see either the
    old file or the complete new one.  With ``make_dirs``, missing parent
    directories are created (mode 0700).

    Raises:
        ConfigError: the file could not be written; the message names ``what``
            and the path, and the OS error is the ``__cause__``.
    """
    name = os.fspath(path)
    directory = os.path.dirname(name) or "."
    # A fresh random name with O_EXCL: never follows a planted symlink and
    # never truncates someone else's file.
    tmp = os.path.join(directory, f".{os.path.basename(name)}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        if make_dirs:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(tmp, flags, PRIVATE_MODE)
        try:
            if hasattr(os, "fchmod"):
                # os.open's mode is filtered by the umask; set it exactly.
                os.fchmod(fd, PRIVATE_MODE)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # it was never created, or was already renamed
        raise ConfigError(f"cannot write {what} {name!r}: {exc.strerror or exc}") from exc
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable; best effort, since not every OS can open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the data itself is synced
    finally:
        os.close(fd)
