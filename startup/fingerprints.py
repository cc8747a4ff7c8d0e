"""Fingerprints of the key files in the database, so that a wrong or lost key is noticed.

`schema_meta` rows (key, value):

- `identity_secret_fingerprint`, `token_secret_fingerprint`: an HMAC keyed with the secret
  (`lsrpc.keys.fingerprint`); it tells secrets apart and reveals nothing of them.
- `server_public_key`: the server's public key (public already: clients pin it).

Written on the first start, compared on every start. While the database holds registrations
(devices or group memberships), a secret that differs from its fingerprint, or one this start
had to make because its file was missing, stops the start: registrations made with the old
one could never be used again. A different server key is allowed (changing it is a
deliberate, rare act) but logged as a warning; a missing one with registrations stops the
start. Without registrations nothing is lost, and the new fingerprints are recorded.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from lsrpc.keys import ServerKeypair, fingerprint
from startup.keyfiles import KeyFile, Keys
from storage.schema import devices, group_members, schema_meta

ROW_KEYS = {
    "KEY_FILE": "server_public_key",
    "IDENTITY_KEY_FILE": "identity_secret_fingerprint",
    "TOKEN_KEY_FILE": "token_secret_fingerprint",
}


class KeyMismatchError(Exception):
    """A key file does not belong to this database; the message says which and what to do."""


def fingerprint_of(keys: Keys, key_file: KeyFile) -> str:
    secret = keys.secret_of(key_file)
    if key_file.setting == "KEY_FILE":
        return ServerKeypair.from_private_bytes(secret).public_hex
    return fingerprint(secret, ROW_KEYS[key_file.setting])


def _has_registrations(conn: Connection) -> bool:
    for column in (devices.c.id, group_members.c.group_hash):
        if conn.execute(select(column).limit(1)).first() is not None:
            return True
    return False


def _refusal(key_file: KeyFile, *, was_missing: bool, stored: str | None) -> KeyMismatchError:
    where = f"{key_file.setting}: {key_file.path}"
    restore = f"restore the file from your backup, or set {key_file.setting} to where it is"
    if key_file.setting == "KEY_FILE":
        through = f"server key {stored}" if stored else "the old server key"
        return KeyMismatchError(
            f"{where} was missing, and this database's registrations came through {through}"
            f" (clients pin it): {restore}"
        )
    what = (
        "was missing"
        if was_missing
        else f"is not the {key_file.what} this database was written with"
    )
    return KeyMismatchError(
        f"{where} {what}, and the database holds registrations made with the old one:"
        f" {restore} (if it is lost for good, so are the registrations: start with an empty"
        " database)"
    )


def _reconcile_once(conn: Connection, keys: Keys, before_commit: Callable[[], None]) -> list[str]:
    stored = dict(
        conn.execute(
            select(schema_meta.c.key, schema_meta.c.value).where(
                schema_meta.c.key.in_(ROW_KEYS.values())
            )
        ).all()
    )
    registrations: bool | None = None
    warnings: list[str] = []
    for key_file in keys.files:
        row_key = ROW_KEYS[key_file.setting]
        current = fingerprint_of(keys, key_file)
        old = stored.get(row_key)
        if old == current:
            continue
        was_missing = key_file in keys.new
        if (old is not None or was_missing) and registrations is None:
            registrations = _has_registrations(conn)
        if registrations:
            if key_file.setting == "KEY_FILE" and not was_missing:
                warnings.append(
                    f"{key_file.setting}: {key_file.path} holds server key {current}, not"
                    f" {old} that this database was served with: clients that pinned the old"
                    " key cannot reach this relay"
                )
            else:
                raise _refusal(key_file, was_missing=was_missing, stored=old)
        if old is None:
            conn.execute(insert(schema_meta).values(key=row_key, value=current))
        else:
            conn.execute(
                update(schema_meta).where(schema_meta.c.key == row_key).values(value=current)
            )
    before_commit()
    return warnings


def reconcile(engine: Engine, keys: Keys, before_commit: Callable[[], None]) -> list[str]:
    """Compare the keys with their recorded fingerprints and record new ones.

    Raises KeyMismatchError when a key would strand the stored registrations; returns
    warnings to log. `before_commit` runs inside the transaction, after the check: it writes
    new key files, so that they exist only if the database agreed (and the fingerprints are
    committed only if they were written).
    """
    for attempt in range(2):
        try:
            with engine.begin() as conn:
                return _reconcile_once(conn, keys, before_commit)
        except IntegrityError:  # another process recorded its fingerprints first: compare
            if attempt:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
