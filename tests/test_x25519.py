"""The server's X25519 (lsrpc/keys.py `ServerKeypair.exchange`, libsodium through pynacl) gives
the shared secret OpenSSL gives through `cryptography`, which the relay used before, for every
peer key: random ones, non-canonical encodings (u ≥ p, the top bit set) and the low-order
points, which both refuse (an all-zero secret) with the ValueError that open_request turns
into a client's 400."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from lsrpc.framing import FramingError, build_outer, open_request
from lsrpc.keys import ServerKeypair
from lsrpc.x25519 import sodium_scalarmult

P = 2**255 - 19


def keypair() -> tuple[ServerKeypair, X25519PrivateKey]:
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return ServerKeypair.from_private_bytes(raw), private


def openssl(private: X25519PrivateKey, peer: bytes) -> bytes | str:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError:
        return "refused"


def ours(server: ServerKeypair, peer: bytes) -> bytes | str:
    try:
        return server.exchange(peer)
    except ValueError:
        return "refused"


def le(value: int) -> bytes:
    return value.to_bytes(32, "little")


# The points of small order (and their non-canonical twins), from RFC 7748's curve: every one
# makes the shared secret all zeros.
LOW_ORDER = [
    le(0),
    le(1),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    le(P - 1),
    le(P),
    le(P + 1),
]
NON_CANONICAL = [le(P + 2), le(2**255 - 1), le(2**256 - 1), le(9 + 2**255)]


@pytest.mark.parametrize("peer", LOW_ORDER + NON_CANONICAL, ids=lambda p: p.hex()[:12])
def test_special_points_give_what_openssl_gives(peer: bytes) -> None:
    server, private = keypair()
    assert ours(server, peer) == openssl(private, peer)


def test_every_low_order_point_is_refused() -> None:
    server, _ = keypair()
    for peer in LOW_ORDER:
        assert ours(server, peer) == "refused"


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_random_peers_give_what_openssl_gives(peer: bytes) -> None:
    server, private = keypair()
    assert ours(server, peer) == openssl(private, peer)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_a_peer_key_of_the_wrong_length_is_a_value_error(length: int) -> None:
    server, _ = keypair()
    with pytest.raises(ValueError):
        server.exchange(os.urandom(length))


def test_a_low_order_ephemeral_key_is_a_framing_error() -> None:
    server, _ = keypair()
    body = build_outer(b"\x00" * 40, LOW_ORDER[2], "aes-gcm")
    with pytest.raises(FramingError, match="invalid ephemeral_key"):
        open_request(body, server)


def test_the_private_scalar_is_not_in_the_repr() -> None:
    server, _ = keypair()
    assert "exchange" not in repr(server)


def test_the_relay_uses_libsodium_here() -> None:
    """pynacl 1.6.2 (pinned) ships libsodium's symbols in its `_sodium` module: if a new pynacl
    stops exporting them, the slower fallback must not go unnoticed."""
    assert sodium_scalarmult() is not None


def test_without_libsodium_the_fallback_gives_the_same_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where pynacl's library does not export libsodium's X25519, `cryptography`'s is used,
    with the same answers and the same refusals."""
    from lsrpc import x25519

    server, private = keypair()
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    monkeypatch.setattr(x25519, "sodium_scalarmult", lambda: None)
    fallback = x25519.exchange_with(raw)
    for peer in [os.urandom(32) for _ in range(50)] + LOW_ORDER + NON_CANONICAL:
        try:
            answer: bytes | str = fallback(peer)
        except ValueError:
            answer = "refused"
        assert answer == ours(server, peer)
