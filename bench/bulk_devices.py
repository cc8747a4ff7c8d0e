"""Insert N registered devices into a relay's database, as the relay itself would have written them.

    python bench/bulk_devices.py --data-dir DIR [-n 1000000] [--database-url URL]

For the scale benchmark (issue 10): a relay with a million registrations. Settings come as the
relay reads them (PN_* variables, then the options here), so the rows land in the database the
relay will open, protected with the DATA_DIR's own secrets (created if absent, as at a first
start): each device token sealed (AES-GCM) and hashed, each Session ID hashed, by the relay's
storage/protect.py IdentifierProtector, in the columns storage/store.py writes for a register.
The schema is created (or upgraded) by the relay's own create_schema first.

Each device belongs to a Session ID of its own; --fcm-share of them (default 0.6) are Android
(FCM) tokens, the rest iOS (APNs) tokens of 64 hex characters. Rows go in with executemany in
transactions of --batch rows; a progress line is printed to stderr. The relay must not run
meanwhile (nothing else writes). A sample of the rows written is read back and checked: the
token opens under the token secret and its hash matches.
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Engine, func, insert, select

from settings import Settings, load_settings
from startup import open_storage
from storage.protect import IdentifierProtector
from storage.records import Provider
from storage.schema import devices
from storage.store import DEVICE_COLUMNS

SAMPLE = 50


def device_token(provider: Provider) -> str:
    if provider is Provider.APNS:
        return secrets.token_hex(32)
    return secrets.token_urlsafe(105) + ":APA91b"  # the length of a real FCM token, ~150


def device_rows(
    protector: IdentifierProtector, count: int, fcm_share: float, now_ms: int
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """`count` device rows (keys: storage.store.DEVICE_COLUMNS), and their tokens and Session
    IDs in clear."""
    rows, tokens, owners = [], [], []
    for _ in range(count):
        provider = Provider.FCM if random.random() < fcm_share else Provider.APNS
        token = device_token(provider)
        owner = "05" + secrets.token_hex(32)
        tokens.append(token)
        owners.append(owner)
        rows.append(
            {
                "token_hash": protector.token_hash(token),
                "token_sealed": protector.seal_token(token),
                "session_hash": protector.identity(owner),
                "provider": int(provider),
                "registered_at": now_ms,
                "generation": 1,
            }
        )
    return rows, tokens, owners


def check_sample(
    engine: Engine, protector: IdentifierProtector, rows: list[dict[str, Any]], tokens: list[str]
) -> None:
    """Read back some rows just written: their tokens open and hash as the relay expects."""
    picks = random.sample(range(len(rows)), min(SAMPLE, len(rows)))
    with engine.connect() as conn:
        for index in picks:
            sealed = conn.execute(
                select(devices.c.token_sealed).where(
                    devices.c.token_hash == rows[index]["token_hash"]
                )
            ).scalar_one()
            if protector.open_token(sealed) != tokens[index]:
                raise SystemExit("a token read back does not open to what was written")
            if protector.token_hash(tokens[index]) != rows[index]["token_hash"]:
                raise SystemExit("a token's hash does not match")


def load(settings: Settings, count: int, *, batch: int, fcm_share: float) -> float:
    """Insert `count` devices; the seconds it took."""
    # The database and secrets exactly as the relay opens them (startup/): the schema
    # migrated, the secrets made on a first start and checked against their fingerprints.
    engine, keys = open_storage(settings)
    try:
        protector = IdentifierProtector(keys.identity, keys.token)
        with engine.connect() as conn:
            before = conn.execute(select(func.count()).select_from(devices)).scalar_one()
        statement = insert(devices)
        started = time.monotonic()
        now_ms = time.time_ns() // 1_000_000
        done = 0
        rows: list[dict[str, Any]] = []
        tokens: list[str] = []
        while done < count:
            size = min(batch, count - done)
            rows, tokens, _ = device_rows(protector, size, fcm_share, now_ms)
            assert set(rows[0]) == set(DEVICE_COLUMNS)  # what a register writes, no more
            with engine.begin() as conn:
                conn.execute(statement, rows)
            done += size
            elapsed = time.monotonic() - started
            print(
                f"\r{done:>12,} / {count:,} devices ({done / count:.0%}), {done / elapsed:,.0f}/s",
                end="",
                file=sys.stderr,
                flush=True,
            )
        print(file=sys.stderr)
        elapsed = time.monotonic() - started
        with engine.connect() as conn:
            after = conn.execute(select(func.count()).select_from(devices)).scalar_one()
        if after - before != count:
            raise SystemExit(f"wrote {count} devices but the table grew by {after - before}")
        if rows:
            check_sample(engine, protector, rows, tokens)
        return elapsed
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, help="the relay's DATA_DIR (or PN_DATA_DIR)")
    parser.add_argument("--database-url", help="the relay's DATABASE_URL (or PN_DATABASE_URL)")
    parser.add_argument("-n", "--devices", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=50_000, help="rows per transaction")
    parser.add_argument("--fcm-share", type=float, default=0.6, help="Android share, 0 to 1")
    args = parser.parse_args()
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["DATA_DIR"] = args.data_dir
    if args.database_url:
        overrides["DATABASE_URL"] = args.database_url
    settings = load_settings(overrides=overrides)
    if settings.DATABASE_URL == "" and not settings.DATA_DIR.exists():
        settings.DATA_DIR.mkdir(mode=0o700, parents=True)
    elapsed = load(settings, args.devices, batch=args.batch, fcm_share=args.fcm_share)
    print(
        f"{args.devices:,} devices written in {elapsed:.1f} s"
        f" ({args.devices / elapsed:,.0f}/s); {SAMPLE} read back and checked"
    )


if __name__ == "__main__":
    main()
