"""pn-relay: `python server.py [--config FILE] [--host H] [--port P] [--workers N|auto]
[--print-pubkey] [--init]` (several workers: supervisor.py).

The command line, the event loop, and a clean shutdown on SIGTERM or Ctrl-C (in-flight
requests finish, queued writes commit, the database closes). The parts are built by
relay.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import eventloop
from errors import StartupError as StartupError  # noqa: PLC0414 - re-exported
from logsetup import configure_logging as configure_logging  # noqa: PLC0414 - re-exported
from logsetup import held_until_started
from relay import Relay, bind_listening_sockets
from settings import LoadedSettings, SettingsError, read_settings
from startup import load_keys
from stats.worker_metrics import WorkerMetrics
from supervisor import WorkerContext, run_workers

log = logging.getLogger("pn_relay")


HELP_EPILOG = """\
settings: config.py in the working directory (or --config FILE), then environment
variables PN_<NAME> (e.g. PN_PORT=3005, PN_DATABASE_URL=...), which win over the file;
--host and --port win over both. config.example.py lists every setting with its default.

key files: made only on the first start (DATA_DIR new or holding only key files) or by
--init; a key file you name that does not exist stops the start.
"""


def workers_argument(text: str) -> int | str:
    """--workers N or --workers auto."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or auto, got {text!r}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="pn-relay: push notifications for Session clients",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", type=Path, help="a Python settings file (default: ./config.py if present)"
    )
    parser.add_argument("--host", help="address to listen on (setting HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (setting PORT)")
    parser.add_argument(
        "--workers",
        type=workers_argument,
        help="relay processes sharing the port and the database, or auto: one per CPU"
        " (setting WORKERS, default 1)",
    )
    parser.add_argument(
        "--print-pubkey",
        action="store_true",
        help="print the server's X25519 public key (64 hex characters) and exit; on the"
        " first start (a new DATA_DIR) this makes the key files",
    )
    parser.add_argument(
        "--init",
        action="store_true",
        help="make the missing key files (KEY_FILE, IDENTITY_KEY_FILE, TOKEN_KEY_FILE; never"
        " overwriting one), print the public key, and exit",
    )
    return parser.parse_args(argv)


async def serve(loaded: LoadedSettings, worker: WorkerContext | None = None) -> None:
    """Run one relay process until SIGTERM or SIGINT; `worker`: as one of several (WORKERS)."""
    settings = loaded.settings
    # Nothing is shown until the relay listens: a failed start says one line, from main().
    with held_until_started(discard_on=(StartupError,)):
        if worker is None:
            for warning in loaded.warnings:  # (the supervisor logs them once for all)
                log.warning("%s", warning)
        # Bound before any file is made.
        sockets = bind_listening_sockets(settings) if worker is None else worker.listen()
        try:
            board = worker.metrics_board if worker is not None else None
            relay = Relay(
                settings,
                worker_metrics=WorkerMetrics(board, worker.index) if board and worker else None,
            )
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        loop = asyncio.get_running_loop()
        if worker is None:
            log.info(
                "workers: 1 process (onion requests on its %s event loop, %d threads for the"
                " other routes)%s",
                eventloop.loop_name(loop),
                settings.WEB_THREADS,
                "; REUSE_PORT lets more processes share the port" if settings.REUSE_PORT else "",
            )
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await relay.start(sockets=sockets)
        except BaseException:
            await relay.stop()
            raise
    if worker is not None:
        worker.report_started()
    await stop.wait()
    log.info("shutting down")
    await relay.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["HOST"] = args.host
    if args.port is not None:
        overrides["PORT"] = args.port
    if args.workers is not None:
        overrides["WORKERS"] = args.workers
    loaded: LoadedSettings | None = None
    try:
        loaded = read_settings(
            args.config,
            overrides=overrides,
            override_labels={"HOST": "--host", "PORT": "--port", "WORKERS": "--workers"},
        )
        if args.init or args.print_pubkey:
            keys = load_keys(loaded.settings, init=args.init)
            for key_file in keys.new:
                print(
                    f"pn-relay: made {key_file.what} {key_file.path} (mode 0600)", file=sys.stderr
                )
            if args.init and not keys.new:
                print("pn-relay: every key file exists; nothing made", file=sys.stderr)
            print(keys.server.public_hex)
            return 0
        workers = loaded.settings.WORKERS
        configure_logging(
            loaded.settings.LOG_LEVEL, loaded.settings.LOG_FORMAT, with_pid=workers > 1
        )
        if workers > 1:
            return run_workers(loaded, serve, bind_listening_sockets)
        eventloop.run(serve(loaded), loaded.settings.EVENT_LOOP)
    except (SettingsError, StartupError) as exc:
        message = loaded.in_user_words(str(exc)) if loaded is not None else str(exc)
        print(f"pn-relay: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
