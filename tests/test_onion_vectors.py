"""The public libsession-util vectors (tests/vectors/onionreq.json), over real HTTP.

Marked `interop`: tests/conftest.py turns a skip of any of these into a failure, so they can
never again be left out of a run without anyone noticing.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from lsrpc.crypto import DecryptionError, EncType, decrypt, derive_key, encrypt
from lsrpc.framing import build_outer
from lsrpc.keys import ServerKeypair
from tests.support import RunningRelay

pytestmark = pytest.mark.interop

VECTORS_FILE = Path(__file__).resolve().parent / "vectors" / "onionreq.json"
# The SHA-256 of the file as committed: an edit (say, to make a failing test pass) shows here.
VECTORS_SHA256 = "ef342c60e0a9bd8a06723770a2e3b28525441e0ca5b0ebeedd70be8f6570f38c"
KEY_FIELDS = ("client_private", "client_public", "server_private", "server_public")
CIPHERTEXT_FIELDS = ("plaintext", "aes_gcm", "xchacha20")
HOP_FIELDS = (*KEY_FIELDS, *CIPHERTEXT_FIELDS, "aes_gcm_key", "xchacha20_key")
BODY_FIELDS = (*KEY_FIELDS, *CIPHERTEXT_FIELDS)


@cache
def load_vectors() -> dict[str, Any]:
    vectors: dict[str, Any] = json.loads(VECTORS_FILE.read_bytes())
    return vectors


def test_vectors_are_in_the_repository() -> None:
    assert VECTORS_FILE.is_file(), f"{VECTORS_FILE} is missing: it belongs in the repository"
    raw = VECTORS_FILE.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == VECTORS_SHA256, (
        f"{VECTORS_FILE.name} differs from the upstream copy (see tests/vectors/README.md)"
    )
    vectors = load_vectors()
    hop, bodies = vectors["hop_encryption"], vectors["last_hop_bodies"]
    for group, names in ((hop, HOP_FIELDS), (bodies, BODY_FIELDS)):
        for name in names:
            assert isinstance(group[name], str) and group[name], name
    assert len(hop["must_fail"]) == 4
    assert all(isinstance(value, str) and value for value in hop["must_fail"])


def test_hop_keys_match_the_vectors() -> None:
    hop = load_vectors()["hop_encryption"]
    server = ServerKeypair.from_private_bytes(bytes.fromhex(hop["server_private"]))
    assert server.public_hex == hop["server_public"]
    client_public = bytes.fromhex(hop["client_public"])
    shared = server.exchange(client_public)
    aes_key = derive_key(EncType.AES_GCM, shared, client_public, server.public_bytes)
    xchacha_key = derive_key(EncType.XCHACHA20, shared, client_public, server.public_bytes)
    assert aes_key.hex() == hop["aes_gcm_key"]
    assert xchacha_key.hex() == hop["xchacha20_key"]
    plaintext = hop["plaintext"].encode()
    assert decrypt(EncType.AES_GCM, aes_key, bytes.fromhex(hop["aes_gcm"])) == plaintext
    assert decrypt(EncType.XCHACHA20, xchacha_key, bytes.fromhex(hop["xchacha20"])) == plaintext
    # And our own encryption opens with the same keys.
    for kind, key in ((EncType.AES_GCM, aes_key), (EncType.XCHACHA20, xchacha_key)):
        assert decrypt(kind, key, encrypt(kind, key, plaintext)) == plaintext


def relay_keyed_as(
    vectors: str, start_relay: Callable[..., RunningRelay], sqlite_url: str, key_file: Path
) -> RunningRelay:
    """A relay whose server key is the one the `vectors` section was made with."""
    key_file.write_text(load_vectors()[vectors]["server_private"] + "\n")
    return start_relay(sqlite_url, KEY_FILE=key_file)


@pytest.fixture
def vector_relay(
    start_relay: Callable[..., RunningRelay], sqlite_url: str, tmp_path: Path
) -> RunningRelay:
    return relay_keyed_as("last_hop_bodies", start_relay, sqlite_url, tmp_path / "vector_key.hex")


@pytest.mark.parametrize(
    ("name", "kind"), [("aes_gcm", EncType.AES_GCM), ("xchacha20", EncType.XCHACHA20)]
)
def test_last_hop_bodies_get_an_encrypted_error(
    vector_relay: RunningRelay, name: str, kind: EncType
) -> None:
    bodies = load_vectors()["last_hop_bodies"]
    assert vector_relay.relay.keypair.public_hex == bodies["server_public"]
    answer = vector_relay.post("/loki/v2/lsrpc", bytes.fromhex(bodies[name]))
    assert answer.status == 200
    # The vector's *client* key opens the reply: derive it from the client side.
    client = ServerKeypair.from_private_bytes(bytes.fromhex(bodies["client_private"]))
    assert client.public_hex == bodies["client_public"]
    shared = client.exchange(bytes.fromhex(bodies["server_public"]))
    key = derive_key(kind, shared, client.public_bytes, bytes.fromhex(bodies["server_public"]))
    sealed = base64.b64decode(json.loads(answer.body)["result"])
    reply = json.loads(decrypt(kind, key, sealed))
    # "Hello world" is not a JSON request: an encrypted application error.
    assert reply["status"] == 400
    assert reply["body"]["code"] == 0
    assert isinstance(reply["body"]["message"], str)


@pytest.fixture
def hop_relay(
    start_relay: Callable[..., RunningRelay], sqlite_url: str, tmp_path: Path
) -> RunningRelay:
    return relay_keyed_as("hop_encryption", start_relay, sqlite_url, tmp_path / "hop_key.hex")


def _framed(ciphertext_hex: str, kind: EncType) -> bytes:
    hop = load_vectors()["hop_encryption"]
    enc_name = "aes-gcm" if kind is EncType.AES_GCM else "xchacha20"
    return build_outer(bytes.fromhex(ciphertext_hex), bytes.fromhex(hop["client_public"]), enc_name)


@pytest.mark.parametrize(
    ("name", "kind"), [("aes_gcm", EncType.AES_GCM), ("xchacha20", EncType.XCHACHA20)]
)
def test_untampered_hop_ciphertexts_open(hop_relay: RunningRelay, name: str, kind: EncType) -> None:
    # The control for the test below: the same frames, untampered, get an encrypted answer.
    answer = hop_relay.post("/loki/v2/lsrpc", _framed(load_vectors()["hop_encryption"][name], kind))
    assert answer.status == 200
    assert "result" in json.loads(answer.body)


@pytest.mark.parametrize("index", range(4))
def test_must_fail_ciphertexts_are_refused(hop_relay: RunningRelay, index: int) -> None:
    hop = load_vectors()["hop_encryption"]
    kind = EncType.AES_GCM if index < 2 else EncType.XCHACHA20
    key = bytes.fromhex(hop["aes_gcm_key"] if kind is EncType.AES_GCM else hop["xchacha20_key"])
    tampered = hop["must_fail"][index]
    with pytest.raises(DecryptionError):
        decrypt(kind, key, bytes.fromhex(tampered))
    answer = hop_relay.post("/loki/v2/lsrpc", _framed(tampered, kind))
    assert answer.status == 400
    assert answer.body == b"Invalid onion request: cannot decrypt: authentication failed\n"
