"""Importing the 2021 server's registrations and closed groups into the relay's database.

Every row is checked by the same validators as the relay's `register` and
`subscribe_closed_group` endpoints (handlers/validation.py) and written by the same
storage operations (RelayStore.register_op and subscribe_op), so an imported row is exactly
what a client's own request would have stored. The whole import is ONE writer operation,
hence one transaction: it commits entirely or not at all.

Idempotent: a registration whose token is already stored for the same Session ID, and a
membership already stored, are counted "already present" and not written again. A token
the relay already holds for another Session ID was registered since, by the client: the
relay's registration is kept. A token listed several times in the file goes to its last
row, as the 2022 server's own loading did.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import Dialect, bindparam, select

from handlers import validation
from handlers.validation import InvalidParameter
from storage.protect import IdentifierProtector
from storage.records import Membership, Provider
from storage.schema import devices
from storage.sql import Prepared, Tx
from storage.store import RelayStore
from tools.legacy_sources import Entry, LegacySource, Malformed

CHUNK = 500  # rows looked up in one query

DUPLICATE_ROW = "duplicate of an earlier row"
RELISTED_LATER = "the token is listed again later in the file (the last row is kept)"
GROUP_FULL = "the group already has MAX_GROUP_MEMBERS members"
OWNED_HERE_BY_ANOTHER = (
    "the relay already has this token for another Session ID (its newer registration is kept)"
)


class ImportCancelled(Exception):
    """The operator interrupted the import; the transaction is rolled back."""


class DatabaseRefused(Exception):
    """The target database refused a statement; the transaction is rolled back."""


class DryRunFinished(Exception):
    """Raised at the end of a dry run so the transaction rolls back; carries the summary."""

    def __init__(self, summary: ImportSummary) -> None:
        super().__init__("dry run")
        self.summary = summary


@dataclass
class Tally:
    """What happened to the rows of one kind."""

    read: int = 0
    imported: int = 0
    present: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


@dataclass
class ImportSummary:
    source: str
    ignored_tables: tuple[str, ...]
    registrations: Tally = field(default_factory=Tally)
    memberships: Tally = field(default_factory=Tally)


class Progress:
    """Shared with the display: the writer thread advances it, the main thread draws it.

    `phases` lists every phase started so far with its row count (a display that looked
    only now and then still sees each one); `done` counts rows of the last one.
    """

    def __init__(self) -> None:
        self.phases: list[tuple[str, int]] = []
        self.done = 0

    def start(self, phase: str, total: int) -> None:
        self.done = 0
        self.phases.append((phase, total))

    def update(self, done: int) -> None:
        self.done = done


@dataclass(frozen=True)
class Registration:
    token: str
    session_id: str
    provider: Provider


def check_registration(entry: Entry) -> Registration | str:
    """A valid registration, or the reason it is not one (the endpoint's own words)."""
    if isinstance(entry, Malformed):
        return entry.reason
    try:
        token, provider = validation.device_token({"token": entry.second})
        session_id = validation.session_id({"pubKey": entry.first}, "pubKey")
    except InvalidParameter as exc:
        return exc.message
    return Registration(token, session_id, provider)


def check_membership(entry: Entry) -> tuple[str, str] | str:
    """A valid (group key, member) pair, or the reason it is not one."""
    if isinstance(entry, Malformed):
        return entry.reason
    try:
        group_key = validation.session_id(
            {"closedGroupPublicKey": entry.first}, "closedGroupPublicKey"
        )
        member = validation.session_id({"pubKey": entry.second}, "pubKey")
    except InvalidParameter as exc:
        return exc.message
    return group_key, member


def _fingerprint(*parts: str) -> bytes:
    """A compact in-memory key for duplicate detection within one run (never stored)."""
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=16).digest()


def _owners_statement(dialect: Dialect) -> Prepared:
    """(token_hash, session_hash) of up to CHUNK stored devices, by token hash."""
    names = [f"h{i}" for i in range(CHUNK)]
    statement = select(devices.c.token_hash, devices.c.session_hash).where(
        devices.c.token_hash.in_([bindparam(name) for name in names])
    )
    return Prepared.compile(statement, dialect)


def _chunks(items: Iterable[Registration], size: int) -> Iterator[list[Registration]]:
    chunk: list[Registration] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class LegacyImporter:
    def __init__(
        self,
        store: RelayStore,
        protector: IdentifierProtector,
        progress: Progress,
        *,
        cancel: threading.Event | None = None,
        dry_run: bool = False,
    ) -> None:
        self._store = store
        self._protect = protector
        self._progress = progress
        self._cancel = cancel or threading.Event()
        self._dry_run = dry_run
        self._owners = _owners_statement(store.engine.dialect)
        self._database_error: type[Exception] = store.engine.dialect.loaded_dbapi.Error

    def operation(self, source: LegacySource) -> Callable[[Tx], ImportSummary]:
        """The whole import as one writer operation (one transaction)."""

        def run(tx: Tx) -> ImportSummary:
            summary = ImportSummary(source.description, source.ignored_tables)
            try:
                self._import_registrations(tx, source, summary.registrations)
                self._import_memberships(tx, source, summary.memberships)
            except self._database_error as exc:
                # Its first line names the problem (the relay's tables hold only hashes).
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise DatabaseRefused(f"{type(exc).__name__}: {first_line}") from None
            if self._dry_run:
                raise DryRunFinished(summary)
            return summary

        return run

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise ImportCancelled("interrupted")

    # -- registrations -------------------------------------------------------------------

    def _last_rows(self, source: LegacySource, total: int) -> dict[bytes, int]:
        """For each valid token, the position of its last row in the file."""
        self._progress.start("reading registrations", total)
        last: dict[bytes, int] = {}
        for position, entry in enumerate(source.registrations()):
            checked = check_registration(entry)
            if isinstance(checked, Registration):
                last[_fingerprint(checked.token)] = position
            if position % CHUNK == 0:
                self._progress.update(position)
                self._check_cancel()
        self._progress.update(total)
        return last

    def _import_registrations(self, tx: Tx, source: LegacySource, tally: Tally) -> None:
        total = source.count_registrations()
        last = self._last_rows(source, total)

        def kept() -> Iterator[Registration]:
            for position, entry in enumerate(source.registrations()):
                tally.read += 1
                checked = check_registration(entry)
                if isinstance(checked, str):
                    tally.skipped[checked] += 1
                elif last[_fingerprint(checked.token)] != position:
                    tally.skipped[RELISTED_LATER] += 1
                else:
                    yield checked

        self._progress.start("registrations", total)
        for chunk in _chunks(kept(), CHUNK):
            self._check_cancel()
            rows = [
                (r, self._protect.token_hash(r.token), self._protect.identity(r.session_id))
                for r in chunk
            ]
            hashes = [token_hash for _, token_hash, _ in rows]
            padded = hashes + [hashes[0]] * (CHUNK - len(hashes))
            stored = dict(tx.all(self._owners, {f"h{i}": h for i, h in enumerate(padded)}))
            for registration, token_hash, session_hash in rows:
                owner = stored.get(token_hash)
                if owner is None:
                    register = self._store.register_op(
                        registration.token, registration.session_id, registration.provider
                    )
                    register(tx)
                    tally.imported += 1
                elif bytes(owner) == session_hash:
                    tally.present += 1
                else:
                    tally.skipped[OWNED_HERE_BY_ANOTHER] += 1
            self._progress.update(tally.read)
        self._progress.update(total)

    # -- closed groups -------------------------------------------------------------------

    def _import_memberships(self, tx: Tx, source: LegacySource, tally: Tally) -> None:
        self._progress.start("closed groups", source.count_memberships())
        seen: set[bytes] = set()
        for entry in source.memberships():
            tally.read += 1
            if tally.read % CHUNK == 0:
                self._progress.update(tally.read)
                self._check_cancel()
            checked = check_membership(entry)
            if isinstance(checked, str):
                tally.skipped[checked] += 1
                continue
            group_key, member = checked
            fingerprint = _fingerprint(group_key, member)
            if fingerprint in seen:
                tally.skipped[DUPLICATE_ROW] += 1
                continue
            seen.add(fingerprint)
            membership = self._store.subscribe_op(group_key, member)(tx)
            if membership is Membership.JOINED:
                tally.imported += 1
            elif membership is Membership.ALREADY_MEMBER:
                tally.present += 1
            else:
                tally.skipped[GROUP_FULL] += 1
        self._progress.update(self._progress.phases[-1][1])
