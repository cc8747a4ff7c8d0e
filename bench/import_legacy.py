"""How long moving a big 2021 server takes: 1,000,000 legacy rows through tools/import_legacy.

    python bench/import_legacy.py                       # SQLite (2022) source, SQLite target
    python bench/import_legacy.py --format json         # the TinyDB JSON source
    python bench/import_legacy.py --database-url postgresql+psycopg://…   # PostgreSQL target

Writes a legacy database of `--rows` rows (by default 700,000 registrations, i.e. tokens, of
400,000 Session IDs, and 300,000 closed-group memberships) in a temporary directory, runs the
real command on it (`python -m tools.import_legacy --quiet`, in this process) into a fresh
relay database, then runs it again (everything "already present"). Prints each run's wall time
and rows/s. The machine may be shared: note it beside any figure.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.legacy_files import tinydb_document, write_legacy_sqlite, write_tinydb
from tools import import_legacy


def legacy_rows(
    rows: int, seed: int = 1
) -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]]]:
    """(registration documents, group documents): 70% tokens, 30% memberships."""
    rng = random.Random(seed)
    token_rows = rows * 7 // 10
    sessions = ["05" + rng.randbytes(32).hex() for _ in range(max(1, token_rows * 4 // 7))]
    registrations: list[tuple[str, list[str]]] = [(s, []) for s in sessions]
    for i in range(token_rows):
        doc = registrations[i % len(registrations)]
        if i % 3:
            doc[1].append(rng.randbytes(32).hex())  # APNs
        else:
            doc[1].append(rng.randbytes(24).hex() + ":APA91b" + rng.randbytes(60).hex())  # FCM
    groups: list[tuple[str, list[str]]] = []
    remaining = rows - token_rows
    while remaining > 0:
        size = min(remaining, rng.randrange(3, 60))
        groups.append(("05" + rng.randbytes(32).hex(), rng.sample(sessions, size)))
        remaining -= size
    return registrations, groups


def run(argv: list[str]) -> tuple[int, float, str]:
    out = io.StringIO()
    started = time.perf_counter()
    status = import_legacy.main(argv, out=out)
    return status, time.perf_counter() - started, out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--format", choices=("sqlite", "json"), default="sqlite")
    parser.add_argument("--database-url", default="", help="default: SQLite in the temp dir")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        registrations, groups = legacy_rows(args.rows)
        if args.format == "json":
            source = write_tinydb(
                directory / "session_pn_server_db.json", tinydb_document(registrations, groups)
            )
        else:
            source = write_legacy_sqlite(
                directory / "session_pn_server.db",
                ((owner, token) for owner, tokens in registrations for token in tokens),
                ((group, member) for group, members in groups for member in members),
            )
        size = source.stat().st_size / 1e6
        print(
            f"wrote {args.rows:,} legacy rows ({args.format}, {size:.0f} MB)"
            f" in {time.perf_counter() - started:.1f} s"
        )

        os.environ["PN_DATA_DIR"] = str(directory / "data")
        if args.database_url:
            os.environ["PN_DATABASE_URL"] = args.database_url
        for label in ("first import", "second import (all present)"):
            status, seconds, output = run(["--quiet", str(source)])
            if status != 0:
                print(output)
                return status
            print(f"{label}: {seconds:.1f} s, {args.rows / seconds:,.0f} rows/s")
            summary = [line for line in output.splitlines() if " rows: " in line]
            print("  " + "\n  ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
