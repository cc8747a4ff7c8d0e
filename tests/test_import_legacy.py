"""tools/import_legacy: the 2021 server's registrations and closed groups, into the relay.

Both of its formats (TinyDB JSON, 2022 SQLite), each with a few thousand rows and every kind
of bad row, imported into SQLite and PostgreSQL through the real command: counts, what is
stored (checked by opening it with the relay's secrets), the summary, idempotence, a failure
half-way (a database trigger refusing a row) leaving nothing, and the relay serving the
result.
"""

from __future__ import annotations

import base64
import io
import os
import pty
import random
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Engine, select, text

from storage.engine import create_schema, make_engine
from storage.protect import IdentifierProtector
from storage.records import Provider
from storage.schema import deliveries, devices, group_members
from storage.store import RelayStore
from storage.writer import BatchWriter
from tests.legacy_files import flat_pairs, tinydb_document, write_legacy_sqlite, write_tinydb
from tests.support import RunningRelay, relay_settings
from tools import import_legacy
from tools.legacy_import import ImportCancelled, LegacyImporter, Progress
from tools.legacy_sources import open_legacy_source

REPO = Path(__file__).resolve().parents[1]
FORMATS = ["tinydb-json", "sqlite-2022"]

BAD_SESSION = "Parameter pubKey must be 05 followed by 64 hex characters"
NO_SESSION = "Missing parameter: pubKey"
SESSION_NOT_STR = "Parameter pubKey must be a string"
BAD_TOKEN = "Parameter token must be 1 to 4096 printable ASCII characters"
NO_TOKEN = "Missing parameter: token"
TOKEN_NOT_STR = "Parameter token must be a string"
BAD_GROUP = "Parameter closedGroupPublicKey must be 05 followed by 64 hex characters"
RELISTED = "the token is listed again later in the file (the last row is kept)"
DUPLICATE = "duplicate of an earlier row"
OWNED_ELSEWHERE = (
    "the relay already has this token for another Session ID (its newer registration is kept)"
)


@dataclass
class Legacy:
    """A 2021 database's content and what importing it must give."""

    registrations: list[tuple[Any, list[Any]]] = field(default_factory=list)
    groups: list[tuple[Any, list[Any]]] = field(default_factory=list)
    raw_registration_docs: list[tuple[int, Any]] = field(default_factory=list)
    raw_group_docs: list[tuple[int, Any]] = field(default_factory=list)
    devices: dict[str, tuple[str, Provider]] = field(default_factory=dict)
    members: set[tuple[str, str]] = field(default_factory=set)
    registrations_skipped: Counter[str] = field(default_factory=Counter)
    groups_skipped: Counter[str] = field(default_factory=Counter)

    @property
    def registration_rows(self) -> int:
        return len(flat_pairs(self.registrations)) + len(self.raw_registration_docs)

    @property
    def membership_rows(self) -> int:
        return len(flat_pairs(self.groups)) + len(self.raw_group_docs)

    def write(self, kind: str, directory: Path) -> Path:
        if kind == "tinydb-json":
            document = tinydb_document(
                self.registrations,
                self.groups,
                raw_registration_docs=self.raw_registration_docs,
                raw_group_docs=self.raw_group_docs,
            )
            return write_tinydb(directory / "session_pn_server_db.json", document)
        assert not self.raw_registration_docs and not self.raw_group_docs
        return write_legacy_sqlite(
            directory / "session_pn_server.db",
            flat_pairs(self.registrations),
            flat_pairs(self.groups),
            not_null=False,
        )


def build_legacy(kind: str, *, sessions: int = 1500, seed: int = 2021) -> Legacy:
    """~2,400 registrations and ~1,600 memberships, with bad rows of every kind."""
    rng = random.Random(seed)
    legacy = Legacy()

    def session_id(upper: bool = False) -> str:
        digits = rng.randbytes(32).hex()
        return "05" + (digits.upper() if upper else digits)

    def apns() -> str:
        return rng.randbytes(32).hex()

    def fcm() -> str:
        head = base64.urlsafe_b64encode(rng.randbytes(16)).decode().rstrip("=")
        return head + ":APA91b" + base64.urlsafe_b64encode(rng.randbytes(105)).decode()

    def wrong_type() -> Any:  # JSON can hold a number; a TEXT column keeps a BLOB as one
        return rng.randrange(10**6) if kind == "tinydb-json" else rng.randbytes(8)

    # Good rows: 1 to 3 tokens per Session ID, some in upper case (stored in lower case).
    owners: list[str] = []
    for i in range(sessions):
        session = session_id(upper=i % 50 == 0)
        tokens = []
        for j in range(1 + i % 2 + (i % 7 == 0)):
            token = apns() if (i + j) % 3 else fcm()
            provider = Provider.APNS if len(token) == 64 else Provider.FCM
            if provider is Provider.APNS and i % 40 == 0:
                token = token.upper()
            tokens.append(token)
            legacy.devices[token.lower() if provider is Provider.APNS else token] = (
                session.lower(),
                provider,
            )
        legacy.registrations.append((session, tokens))
        owners.append(session)

    def bad(owner: Any, token: Any, reason: str) -> None:
        legacy.registrations.insert(rng.randrange(len(legacy.registrations)), (owner, [token]))
        legacy.registrations_skipped[reason] += 1

    for _ in range(7):
        bad("06" + apns(), apns(), BAD_SESSION)
    for _ in range(5):
        bad(session_id()[:62], fcm(), BAD_SESSION)
    for _ in range(3):
        bad("05" + "g" * 64, apns(), BAD_SESSION)
    for _ in range(2):
        bad(None, apns(), NO_SESSION)
        bad(wrong_type(), apns(), SESSION_NOT_STR)
        bad(session_id(), wrong_type(), TOKEN_NOT_STR)
    for token in ("", "has a space", "ünïcode", "x" * 4097):
        bad(session_id(), token, BAD_TOKEN)
    bad(session_id(), None, NO_TOKEN)

    # The same token again at the end of the file: the last row wins.
    known = list(legacy.devices.items())
    rng.shuffle(known)
    for token, (owner, _) in known[:10]:  # same owner again: nothing changes
        legacy.registrations.append((owner, [token]))
        legacy.registrations_skipped[RELISTED] += 1
    for token, (_, provider) in known[10:15]:  # another owner: the token moves there
        new_owner = session_id()
        legacy.registrations.append((new_owner, [token]))
        legacy.devices[token] = (new_owner, provider)
        legacy.registrations_skipped[RELISTED] += 1
    apns_token = next(t for t, (_, p) in known[15:] if p is Provider.APNS)
    new_owner = session_id()
    legacy.registrations.append((new_owner, [apns_token.upper()]))  # same token, other case
    legacy.devices[apns_token] = (new_owner, Provider.APNS)
    legacy.registrations_skipped[RELISTED] += 1

    # Closed groups of 5 to 25 members.
    for g in range(100):
        group = session_id(upper=g % 10 == 0)
        members = rng.sample(owners, rng.randrange(5, 26))
        legacy.groups.append((group, members))
        legacy.members.update((group.lower(), m.lower()) for m in members)
    legacy.groups.append(("05" + "z" * 64, [owners[0], owners[1]]))
    legacy.groups_skipped[BAD_GROUP] += 2
    group, members = legacy.groups[3]
    legacy.groups.append((group, ["05abc", "", None, wrong_type(), wrong_type()]))
    legacy.groups_skipped.update({BAD_SESSION: 2, NO_SESSION: 1, SESSION_NOT_STR: 2})
    legacy.groups.append((group.upper(), [*members[:4], members[0].upper(), members[1]]))
    legacy.groups_skipped[DUPLICATE] += 6

    if kind == "tinydb-json":  # documents of the wrong shape, only JSON can hold
        legacy.raw_registration_docs = [
            (10, ["not", "an", "object"]),
            (20, {"pubKey": session_id(), "token": apns()}),
            (30, {"pubKey": session_id()}),
        ]
        legacy.registrations_skipped.update(
            {
                "token_pubkey_table: a document is a JSON array, not an object": 1,
                "token_pubkey_table: token is a JSON string, not a list": 1,
                "token_pubkey_table: token is missing, not a list": 1,
            }
        )
        legacy.raw_group_docs = [
            (5, "just a string"),
            (15, {"closedGroupPublicKey": session_id(), "members": {"05": 1}}),
        ]
        legacy.groups_skipped.update(
            {
                "closed_group_table: a document is a JSON string, not an object": 1,
                "closed_group_table: members is a JSON object, not a list": 1,
            }
        )
    return legacy


def legacy_source(kind: str, directory: Path, *, sessions: int = 1500) -> tuple[Legacy, Path]:
    """A legacy data set and the file of `kind` holding it, written in `directory`."""
    legacy = build_legacy(kind, sessions=sessions)
    return legacy, legacy.write(kind, directory)


# -- running the command ------------------------------------------------------------------


@dataclass
class Run:
    status: int
    out: str
    err: str


@pytest.fixture
def relay_env(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, str]]:
    """The importer's settings, from PN_* variables as an operator would give them."""
    for name in list(os.environ):
        if name.startswith("PN_"):
            monkeypatch.delenv(name)
    data_dir = tmp_path / "data"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PN_DATA_DIR", str(data_dir))
    monkeypatch.setenv("PN_DATABASE_URL", database_url)
    yield data_dir, database_url


def run_import(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    out = io.StringIO()
    status = import_legacy.main(list(args), out=out)
    return Run(status, out.getvalue(), capsys.readouterr().err)


def secret_in(path: Path) -> bytes:
    """The secret in a test's own key file, made first if missing (as a first start would)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(os.urandom(32).hex() + "\n")
    return bytes.fromhex(path.read_text())


def protector_of(data_dir: Path) -> IdentifierProtector:
    identity = bytes.fromhex((data_dir / "identity_secret.hex").read_text())
    token = bytes.fromhex((data_dir / "token_secret.hex").read_text())
    return IdentifierProtector(identity, token)


def snapshot(database_url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every stored column of devices and memberships, in a stable order."""
    engine = make_engine(database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            device_rows = [
                tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                for row in conn.execute(select(devices).order_by(devices.c.id))
            ]
            member_rows = [
                (bytes(g), bytes(s))
                for g, s in conn.execute(
                    select(group_members.c.group_hash, group_members.c.session_hash)
                )
            ]
        return device_rows, sorted(member_rows)
    finally:
        engine.dispose()


TALLY = re.compile(
    r"^(?P<what>[a-z -]+): (?P<read>[\d,]+) rows: (?P<imported>[\d,]+) imported,"
    r" (?P<present>[\d,]+) already present, (?P<skipped>[\d,]+) skipped$"
)
REASON = re.compile(r"^ +(?P<count>[\d,]+)  (?P<reason>.+)$")


def parse_summary(out: str) -> dict[str, tuple[dict[str, int], Counter[str]]]:
    """{"registrations": (numbers, reasons), "closed-group memberships": (…)}."""
    tallies: dict[str, tuple[dict[str, int], Counter[str]]] = {}
    current: Counter[str] | None = None
    for line in out.splitlines():
        if match := TALLY.match(line):
            numbers = {
                key: int(match[key].replace(",", ""))
                for key in ("read", "imported", "present", "skipped")
            }
            current = Counter()
            tallies[match["what"]] = (numbers, current)
        elif (match := REASON.match(line)) and current is not None:
            current[match["reason"]] = int(match["count"].replace(",", ""))
        else:
            current = None
    return tallies


def assert_stored(legacy: Legacy, data_dir: Path, database_url: str) -> None:
    """Every expected registration and membership, exactly, as the relay stores them."""
    protect = protector_of(data_dir)
    device_rows, member_rows = snapshot(database_url)
    names = [c.name for c in devices.columns]
    by_hash = {
        row[names.index("token_hash")]: dict(zip(names, row, strict=True)) for row in device_rows
    }
    assert len(by_hash) == len(device_rows) == len(legacy.devices)
    for token, (owner, provider) in legacy.devices.items():
        row = by_hash[protect.token_hash(token)]
        assert protect.open_token(row["token_sealed"]) == token
        assert row["session_hash"] == protect.identity(owner)
        assert row["provider"] == int(provider)
    expected_members = sorted((protect.identity(g), protect.identity(m)) for g, m in legacy.members)
    assert member_rows == expected_members


# -- the import ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FORMATS)
def test_import_counts_stores_and_is_idempotent(
    kind: str,
    relay_env: tuple[Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir, database_url = relay_env
    legacy, source = legacy_source(kind, tmp_path)
    assert legacy.registration_rows > 2000 and legacy.membership_rows > 1000

    first = run_import(capsys, str(source))
    assert first.status == 0, first
    tallies = parse_summary(first.out)
    # per kind of row: (rows read, rows imported, reasons for those skipped)
    expected = {
        "registrations": (
            legacy.registration_rows,
            len(legacy.devices),
            legacy.registrations_skipped,
        ),
        "closed-group memberships": (
            legacy.membership_rows,
            len(legacy.members),
            legacy.groups_skipped,
        ),
    }
    for kind_of_row, (read, imported, skipped) in expected.items():
        numbers, reasons = tallies[kind_of_row]
        assert numbers == {
            "read": read,
            "imported": imported,
            "present": 0,
            "skipped": read - imported,
        }
        assert reasons == skipped
    ignored = "_default, statistics_table" if kind == "tinydb-json" else "statistics_table"
    assert f"not imported (not registrations): {ignored}\n" in first.out
    assert "committed in one transaction" in first.out
    assert_stored(legacy, data_dir, database_url)
    before = snapshot(database_url)

    second = run_import(capsys, str(source))
    assert second.status == 0, second
    tallies = parse_summary(second.out)
    for kind_of_row, (_, imported, skipped) in expected.items():
        numbers, reasons = tallies[kind_of_row]
        assert (numbers["imported"], numbers["present"]) == (0, imported)
        assert reasons == skipped
    assert snapshot(database_url) == before  # not a byte changed, not even a timestamp


def _seed_registration(data_dir: Path, database_url: str, token: str, owner: str) -> None:
    """A registration the relay made itself (as a client's register would)."""
    identity = secret_in(data_dir / "identity_secret.hex")
    secret = secret_in(data_dir / "token_secret.hex")
    engine = make_engine(database_url, pool_size=1)
    create_schema(engine)
    writer = BatchWriter(engine)
    try:
        store = RelayStore(engine, writer, IdentifierProtector(identity, secret), lambda: 1)
        writer.submit(store.register_op(token, owner, Provider.APNS))
    finally:
        writer.close()
        engine.dispose()


def _install_failure(database_url: str, after_rows: int) -> None:
    """A trigger that makes the database refuse a membership once `after_rows` are stored."""
    engine: Engine = make_engine(database_url, pool_size=1)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                conn.execute(
                    text(
                        "CREATE TRIGGER fail_midway BEFORE INSERT ON group_members"
                        f" WHEN (SELECT count(*) FROM group_members) >= {after_rows}"
                        " BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END"
                    )
                )
            else:
                conn.execute(
                    text(
                        "CREATE FUNCTION fail_midway() RETURNS trigger AS $$ BEGIN"
                        f" IF (SELECT count(*) FROM group_members) >= {after_rows} THEN"
                        " RAISE EXCEPTION 'disk full (test)'; END IF; RETURN NEW; END"
                        " $$ LANGUAGE plpgsql"
                    )
                )
                conn.execute(
                    text(
                        "CREATE TRIGGER fail_midway BEFORE INSERT ON group_members"
                        " FOR EACH ROW EXECUTE FUNCTION fail_midway()"
                    )
                )
    finally:
        engine.dispose()


def test_a_failure_half_way_leaves_nothing(
    relay_env: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir, database_url = relay_env
    _, source = legacy_source("sqlite-2022", tmp_path, sessions=400)
    existing_token, existing_owner = "ab" * 32, "05" + "cd" * 32
    _seed_registration(data_dir, database_url, existing_token, existing_owner)
    _install_failure(database_url, after_rows=100)  # the registrations are all written by then
    before = snapshot(database_url)
    assert len(before[0]) == 1

    result = run_import(capsys, str(source))

    assert result.status == 1
    assert "the database refused the import" in result.out
    assert "disk full (test)); nothing was written" in result.out
    assert "Traceback" not in result.out + result.err
    assert snapshot(database_url) == before  # the one registration made before, nothing else


class CancelOnPhase(Progress):
    """Sets the cancel flag (as Ctrl-C does) when a given phase starts."""

    def __init__(self, phase: str, cancel: threading.Event) -> None:
        super().__init__()
        self._phase, self._cancel = phase, cancel

    def start(self, phase: str, total: int) -> None:
        super().start(phase, total)
        if phase == self._phase:
            self._cancel.set()


def test_an_interrupted_import_writes_nothing(relay_env: tuple[Path, str], tmp_path: Path) -> None:
    """Ctrl-C sets the cancel flag; the operation stops at its next check and rolls back."""
    data_dir, database_url = relay_env
    _, source_path = legacy_source("sqlite-2022", tmp_path, sessions=300)
    identity = secret_in(data_dir / "identity_secret.hex")
    secret = secret_in(data_dir / "token_secret.hex")
    protect = IdentifierProtector(identity, secret)
    engine = make_engine(database_url, pool_size=1)
    create_schema(engine)
    writer = BatchWriter(engine)
    source = open_legacy_source(source_path)
    cancel = threading.Event()
    progress = CancelOnPhase("closed groups", cancel)  # every registration is written by then
    try:
        store = RelayStore(engine, writer, protect, lambda: 1)
        importer = LegacyImporter(store, protect, progress, cancel=cancel)
        with pytest.raises(ImportCancelled):
            writer.submit(importer.operation(source))
    finally:
        source.close()
        writer.close()
        engine.dispose()
    assert [name for name, _ in progress.phases] == [
        "reading registrations",
        "registrations",
        "closed groups",
    ]
    assert snapshot(database_url) == ([], [])


def test_dry_run_counts_and_writes_nothing(
    relay_env: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, database_url = relay_env
    legacy, source = legacy_source("tinydb-json", tmp_path, sessions=200)
    result = run_import(capsys, "--dry-run", str(source))
    assert result.status == 0, result
    numbers, reasons = parse_summary(result.out)["registrations"]
    assert numbers["imported"] == len(legacy.devices)
    assert reasons == legacy.registrations_skipped
    assert "dry run: nothing written" in result.out
    assert snapshot(database_url) == ([], [])


def test_the_relay_keeps_its_own_newer_registration(
    relay_env: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token registered with the relay since is not taken back by the old file."""
    data_dir, database_url = relay_env
    token, old_owner, new_owner = "ef" * 32, "05" + "01" * 32, "05" + "02" * 32
    _seed_registration(data_dir, database_url, token, new_owner)
    source = write_legacy_sqlite(tmp_path / "old.db", [(old_owner, token)], [])
    result = run_import(capsys, "--quiet", str(source))
    assert result.status == 0, result
    numbers, reasons = parse_summary(result.out)["registrations"]
    assert (numbers["imported"], numbers["present"]) == (0, 0)
    assert reasons == {OWNED_ELSEWHERE: 1}
    (row,) = snapshot(database_url)[0]
    assert protector_of(data_dir).identity(new_owner) in row


# -- the relay on the imported database, with the 2021 key file -----------------------------


@pytest.fixture
def default_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No settings at all but PN_DATA_DIR: the relay's embedded SQLite default."""
    for name in list(os.environ):
        if name.startswith("PN_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("PN_DATA_DIR", str(data_dir))
    return data_dir


@pytest.mark.parametrize("newline", ["", "\n"])
def test_the_relay_serves_the_import_under_the_2021_key(
    newline: str,
    default_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = default_env
    # The 2021 server's key file (x25519-priv.pem): the private key as 64 hex characters.
    old_key = X25519PrivateKey.generate()
    old_public = old_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    key_file = tmp_path / "x25519-priv.pem"
    key_file.write_text(old_key.private_bytes_raw().hex() + newline)
    monkeypatch.setenv("PN_KEY_FILE", str(key_file))
    legacy, source = legacy_source("tinydb-json", tmp_path, sessions=120)
    result = run_import(capsys, "--quiet", str(source))
    assert result.status == 0, result
    assert f"public key {old_public}: the one clients must have pinned" in result.out
    assert result.err == ""  # --quiet: no progress

    url = f"sqlite:///{data_dir / 'pn-relay.sqlite3'}"
    running = RunningRelay(relay_settings(data_dir, url, KEY_FILE=key_file))
    try:
        assert running.relay.keypair.public_hex == old_public
        owner_devices = Counter(owner for owner, _ in legacy.devices.values())
        group_key, members = legacy.groups[0]
        person = sorted(owner_devices)[0]
        for send_to in (person, group_key):
            status, body = running.call_v2("notify", {"data": "QUJD", "send_to": send_to})
            assert (status, body["code"]) == (200, 1)
    finally:
        running.stop()
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            queued = conn.execute(select(deliveries.c.id)).all()
    finally:
        engine.dispose()
    expected = owner_devices[person] + sum(owner_devices[m.lower()] for m in set(members))
    assert len(queued) == expected


def test_a_missing_key_file_is_pointed_out(
    default_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_legacy_sqlite(tmp_path / "old.db", [], [])
    result = run_import(capsys, "--quiet", str(source))
    assert result.status == 0, result
    assert "does not exist. To keep the clients pinned to the 2021" in result.out
    assert "python server.py --init makes a NEW key instead" in result.out
    assert not (default_env / "server_key.hex").exists()  # the importer never makes one


# -- progress ------------------------------------------------------------------------------


def test_progress_lines_when_not_on_a_terminal(
    default_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    legacy, source = legacy_source("sqlite-2022", tmp_path, sessions=100)
    result = run_import(capsys, str(source))
    assert result.status == 0, result
    lines = result.err.splitlines()
    rows, members = legacy.registration_rows, legacy.membership_rows
    for phase, total in (
        ("reading registrations", rows),
        ("registrations", rows),
        ("closed groups", members),
    ):
        assert f"{phase}: 0 of {total:,} rows (0%)" in lines
        assert f"{phase}: {total:,} of {total:,} rows (100%)" in lines
    assert "\r" not in result.err


def test_a_progress_bar_on_a_terminal(default_env: Path, tmp_path: Path) -> None:
    _, source = legacy_source("sqlite-2022", tmp_path, sessions=100)
    controller, terminal = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.import_legacy", str(source)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=env,
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, (out, shown)
    assert b"\rregistrations" in shown
    assert re.search(rb"closed groups +100% \[#{30}\] [\d,]+/[\d,]+", shown)
    assert b"committed in one transaction" in out


# -- mistakes get one line and change nothing ----------------------------------------------


def _bad_sources(directory: Path) -> Iterator[tuple[str, Path, str]]:
    yield "missing", directory / "nothere.json", "no such file"
    empty = directory / "empty.json"
    empty.write_bytes(b"")
    yield "empty", empty, "the file is empty"
    key = directory / "x25519-priv.pem"
    key.write_text("ab" * 32 + "\n")
    yield "the key file", key, "neither a SQLite database nor a JSON object"
    broken = directory / "broken.json"
    broken.write_text('{"token_pubkey_table": {"1": {"pubKey": ')
    yield "broken JSON", broken, "not valid JSON (line 1, column 41: Expecting value)"
    no_tables = directory / "other.json"
    no_tables.write_text('{"_default": {}}')
    yield "JSON without the tables", no_tables, "has neither token_pubkey_table nor"
    listed = directory / "listed.json"
    listed.write_text('{"token_pubkey_table": []}')
    yield "a table that is a list", listed, "token_pubkey_table is a JSON array, not an object"
    other_db = directory / "other.db"
    write_legacy_sqlite(other_db, [], [])
    import sqlite3

    with sqlite3.connect(other_db) as db:
        db.execute("DROP TABLE token_pubkey_table")
        db.execute("DROP TABLE closed_group_table")
    yield "SQLite without the tables", other_db, "has neither token_pubkey_table nor"
    renamed = directory / "renamed.db"
    with sqlite3.connect(renamed) as db:
        db.execute("CREATE TABLE token_pubkey_table (session TEXT, token TEXT)")
    yield "a missing column", renamed, "token_pubkey_table has no column pubKey"
    yield "a directory", directory, "is a directory"


def test_a_bad_source_is_one_line_and_creates_nothing(
    default_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    for what, path, message in _bad_sources(sources):
        result = run_import(capsys, str(path))
        assert result.status == 2, what
        assert result.out == "", what
        assert result.err.startswith("import_legacy: ") and message in result.err, (what, result)
        assert result.err.count("\n") == 1, what
        assert not default_env.exists(), what


def test_settings_come_from_config_py_and_the_environment(
    default_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = write_legacy_sqlite(tmp_path / "old.db", [("05" + "ab" * 32, "cd" * 32)], [])
    monkeypatch.delenv("PN_DATA_DIR")
    (tmp_path / "config.py").write_text('DATA_DIR = "from-config"\n')
    assert run_import(capsys, "--quiet", str(source)).status == 0
    assert (tmp_path / "from-config" / "pn-relay.sqlite3").is_file()

    other = tmp_path / "other.py"
    other.write_text('DATA_DIR = "from-option"\n')
    assert run_import(capsys, "--quiet", "--config", str(other), str(source)).status == 0
    assert (tmp_path / "from-option" / "pn-relay.sqlite3").is_file()

    monkeypatch.setenv("PN_DATA_DIR", str(tmp_path / "from-env"))
    assert run_import(capsys, "--quiet", str(source)).status == 0
    assert (tmp_path / "from-env" / "pn-relay.sqlite3").is_file()

    monkeypatch.setenv("PN_DATABASE_URL", "mysql://nobody@nowhere/db")
    result = run_import(capsys, str(source))
    assert result.status == 2
    assert result.err.startswith("import_legacy: DATABASE_URL") and result.err.count("\n") == 1
