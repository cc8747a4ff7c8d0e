"""Bring the 2021 Session push server's registrations and closed groups into pn-relay.

    python -m tools.import_legacy [--config FILE] [--dry-run] [--quiet] PATH

PATH is the 2021 server's `session_pn_server_db.json` (TinyDB) or its 2022
`session_pn_server.db` (SQLite); the content decides which. The relay's settings are read as
the server reads them (defaults, `config.py` or `--config FILE`, then `PN_*` variables), so
the rows land in the database, under the secrets, that `python server.py` will use.

Run it with the 2021 server stopped and before the relay takes traffic (on SQLite it holds
the write lock for the whole import). It writes everything in one transaction: on any error,
or Ctrl-C, nothing is written. Running it again changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import TextIO

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from lsrpc.keys import KeyFileError, ServerKeypair, parse_key_text
from settings import Settings, SettingsError, load_settings
from startup import StartupError, open_storage
from storage.protect import IdentifierProtector
from storage.store import RelayStore
from storage.writer import BatchWriter
from tools.legacy_import import (
    DatabaseRefused,
    DryRunFinished,
    ImportCancelled,
    ImportSummary,
    LegacyImporter,
    Progress,
    Tally,
)
from tools.legacy_sources import LegacySource, LegacySourceError, open_legacy_source
from tools.progress import choose_display

PROG = "import_legacy"
EXIT_FAILED = 1  # the import ran and was rolled back
EXIT_USAGE = 2  # settings, source file or database unusable: nothing started
EXIT_INTERRUPTED = 130


class ToolError(Exception):
    """A reason the import cannot start, in one line."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.import_legacy",
        description=(
            "Import registrations and closed groups from the 2021 Session push server's"
            " database (session_pn_server_db.json or session_pn_server.db) into pn-relay's,"
            " in one transaction. Settings as for server.py: ./config.py or --config FILE,"
            " then PN_* environment variables."
        ),
    )
    parser.add_argument("path", type=Path, help="the 2021 server's database file")
    parser.add_argument("--config", type=Path, help="a Python settings file (default: ./config.py)")
    parser.add_argument(
        "--dry-run", action="store_true", help="check and count everything, then write nothing"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress, only the summary")
    return parser.parse_args(argv)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def public_url(url: str) -> str:
    """The database URL without its password, for printing."""
    return make_url(url).render_as_string(hide_password=True)


def key_file_note(settings: Settings) -> str:
    """What the relay will answer as: the operator compares it with the pinned key."""
    path = settings.key_file
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return (
            f"server key: {path} does not exist. To keep the clients pinned to the 2021\n"
            "  server's key, copy its key file (x25519-priv.pem, 64 hex characters) there, or\n"
            "  set KEY_FILE to it; python server.py --init makes a NEW key instead, which those\n"
            "  clients will not reach."
        )
    except (OSError, UnicodeDecodeError) as exc:
        return f"server key: {path} cannot be read ({exc}); the relay will not start"
    try:
        keypair = ServerKeypair.from_private_bytes(parse_key_text(text, where=str(path)))
    except KeyFileError as exc:
        return f"server key: {exc}; the relay will not start"
    return (
        f"server key: {path}\n  public key {keypair.public_hex}: the one clients must have pinned"
    )


def open_database(settings: Settings) -> tuple[Engine, IdentifierProtector]:
    """The database and the secrets identifiers are protected with, as the relay opens them
    (startup/): secrets made only where the relay's first start would make them, and checked
    against the fingerprints the database keeps. The server key is never made here."""
    try:
        engine, keys = open_storage(settings, server_key=False)
    except StartupError as exc:
        raise ToolError(str(exc)) from None
    return engine, IdentifierProtector(keys.identity, keys.token)


def wait_for(future: Future[ImportSummary], progress: Progress, *, quiet: bool) -> ImportSummary:
    display = choose_display(sys.stderr, quiet=quiet)
    try:
        while True:
            try:
                summary = future.result(timeout=0.2)
            except TimeoutError:
                display.draw(progress)
            else:
                display.close(progress)
                return summary
    except BaseException:
        if not quiet and sys.stderr.isatty():
            sys.stderr.write("\n")  # end the bar's line
        raise


def print_tally(out: TextIO, what: str, tally: Tally) -> None:
    out.write(
        f"{what}: {tally.read:,} rows: {tally.imported:,} imported,"
        f" {tally.present:,} already present, {tally.skipped_total:,} skipped\n"
    )
    for reason, count in sorted(tally.skipped.items(), key=lambda item: (-item[1], item[0])):
        out.write(f"  {count:>7,}  {reason}\n")


def print_summary(out: TextIO, summary: ImportSummary, *, seconds: float, dry_run: bool) -> None:
    print_tally(out, "registrations", summary.registrations)
    print_tally(out, "closed-group memberships", summary.memberships)
    if summary.ignored_tables:
        out.write(f"not imported (not registrations): {', '.join(summary.ignored_tables)}\n")
    rows = summary.registrations.read + summary.memberships.read
    rate = f"{rows / seconds:,.0f} rows/s" if seconds > 0 else "-"
    if dry_run:
        out.write(f"dry run: nothing written ({seconds:.1f} s, {rate})\n")
    else:
        out.write(f"committed in one transaction ({seconds:.1f} s, {rate})\n")


def run_import(
    settings: Settings, source: LegacySource, *, dry_run: bool, quiet: bool, out: TextIO
) -> int:
    engine, protector = open_database(settings)
    try:
        writer = BatchWriter(engine, max_batch=1, name="import-writer")
        try:
            store = RelayStore(engine, writer, protector, now_ms)
            progress = Progress()
            cancel = threading.Event()
            importer = LegacyImporter(store, protector, progress, cancel=cancel, dry_run=dry_run)
            started = time.perf_counter()
            future = writer.submit_async(importer.operation(source))
            try:
                summary = wait_for(future, progress, quiet=quiet)
            except KeyboardInterrupt:
                cancel.set()
                with contextlib.suppress(ImportCancelled):
                    future.result()
                out.write("interrupted: nothing was written\n")
                return EXIT_INTERRUPTED
            except DryRunFinished as finished:
                summary = finished.summary
            except LegacySourceError as exc:
                out.write(f"{PROG}: {exc}; nothing was written\n")
                return EXIT_FAILED
            except DatabaseRefused as exc:
                out.write(f"{PROG}: the database refused the import ({exc}); nothing was written\n")
                return EXIT_FAILED
            except Exception as exc:  # noqa: BLE001 - one line, never a traceback
                out.write(
                    f"{PROG}: the import failed ({type(exc).__name__}: {exc});"
                    " nothing was written\n"
                )
                return EXIT_FAILED
            print_summary(out, summary, seconds=time.perf_counter() - started, dry_run=dry_run)
            return 0
        finally:
            writer.close()
    finally:
        engine.dispose()


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = parse_args(argv)
    try:
        settings = load_settings(args.config)
        source = open_legacy_source(args.path)
    except (SettingsError, LegacySourceError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        out.write(f"source: {source.description}\n")
        out.write(f"into: {public_url(settings.database_url)}\n")
        out.flush()
        status = run_import(settings, source, dry_run=args.dry_run, quiet=args.quiet, out=out)
    except ToolError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        source.close()
    out.write(key_file_note(settings) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
