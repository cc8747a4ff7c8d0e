"""The server's X25519, computed by libsodium while holding the GIL.

libsodium's X25519 gives the same secret as OpenSSL's (which `cryptography` calls) for every
peer key, in about two thirds of the time here (~36 against ~55 µs; tests/test_x25519.py
compares them). pynacl's own binding (cffi) lets go of the GIL for the call, which costs more
than it saves: the relay's writer thread takes the GIL meanwhile and the event loop waits to
get it back (a steady 600 notifies/s cost ~0.13 ms more per notify that way, bench/README.md).
So the function is called through ctypes.PyDLL, which keeps the GIL, from the libsodium that
pynacl ships (its `_sodium` module exports libsodium's symbols). Where that library cannot be
found, `cryptography`'s X25519 is used.
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Callable

import nacl.bindings  # noqa: F401 - sodium_init(): libsodium picks its implementations
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

Exchange = Callable[[bytes], bytes]

KEY_BYTES = 32


def sodium_scalarmult() -> Callable[..., int] | None:
    """libsodium's `crypto_scalarmult(out, scalar, point)` from pynacl's library, or None."""
    try:
        library = importlib.import_module("nacl._sodium").__file__
        function = ctypes.PyDLL(library).crypto_scalarmult
    except (ImportError, OSError, AttributeError):
        return None
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
    return function


def exchange_with(private_bytes: bytes) -> Exchange:
    """`exchange(peer_public) -> shared secret` for this private key: ValueError for a key
    that is not 32 bytes, or a low-order point (an all-zero secret), as `cryptography` says."""
    scalarmult = sodium_scalarmult()
    if scalarmult is None:
        private = X25519PrivateKey.from_private_bytes(private_bytes)

        def by_openssl(peer_public: bytes) -> bytes:
            return private.exchange(X25519PublicKey.from_public_bytes(peer_public))

        return by_openssl
    scalar = bytes(private_bytes)

    def by_sodium(peer_public: bytes) -> bytes:
        if len(peer_public) != KEY_BYTES:
            raise ValueError("An X25519 public key is 32 bytes long.")
        out = ctypes.create_string_buffer(KEY_BYTES)
        if scalarmult(out, scalar, peer_public) != 0:  # libsodium refuses an all-zero result
            raise ValueError("Error computing shared key.")
        return out.raw

    return by_sodium
