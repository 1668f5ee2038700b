"""crust's cryptography, in quarantine: the only package that imports pycryptodome.

It offers misuse-resistant objects to the layers above and nothing lower-level:

* :mod:`crust.crypto.keys`: :class:`KeyPair`, an X25519 identity or ephemeral key;
* :mod:`crust.crypto.kex`: :class:`NoiseXX`, the Noise_XX_25519_ChaChaPoly_BLAKE2b handshake;
* :mod:`crust.crypto.aead`: :class:`Sealer` / :class:`Opener`, the transport ciphers, and
  :class:`Cipher`, the AEADs a channel may run (ChaCha20-Poly1305, AES-256-GCM, AES-256-OCB);
* :mod:`crust.crypto.aes`: the AES-GCM and AES-OCB primitives, offered only with hardware AES;
* :mod:`crust.crypto.ocb`: AES-OCB per key through pycryptodome's C core (the fast path of ``aes``);
* :mod:`crust.crypto.ranking`: this process's cipher preference, measured at run time;
* :mod:`crust.crypto.mac`: the punch key and keyed BLAKE2s tags of NAT-traversal probes.

Everything here is sans-IO: no sockets, threads, clocks or files.
"""

from __future__ import annotations

import secrets

from crust.crypto.aead import REKEY_INTERVAL, Cipher, Opener, Sealer
from crust.crypto.kex import MAX_HANDSHAKE_MESSAGE, PROTOCOL_NAME, NoiseXX
from crust.crypto.keys import KeyPair

__all__ = [
    "Cipher",
    "KeyPair",
    "NoiseXX",
    "Opener",
    "Sealer",
    "MAX_HANDSHAKE_MESSAGE",
    "PROTOCOL_NAME",
    "REKEY_INTERVAL",
    "random_token",
]


def random_token(size: int = 16) -> bytes:
    """``size`` bytes from the OS CSPRNG: connect tokens, beacon nonces (never key material)."""
    return secrets.token_bytes(size)
