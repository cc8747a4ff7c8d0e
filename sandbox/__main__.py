"""``python -m sandbox``: run the fake APNs and FCM locally for a demo of the relay.

Generates a fresh test CA, APNs key and service account in ``--dir``, starts both fakes on
127.0.0.1, prints the ``PN_*`` settings that point the relay at them, then logs one line per push
received (token truncated, never the payload) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from sandbox.apns import DEFAULT_TOPIC, ApnsPush, FakeApns
from sandbox.certs import generate_apns_key, generate_tls
from sandbox.fcm import DEFAULT_PROJECT, FakeFcm, FcmPush

log = logging.getLogger("sandbox")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description="Fake APNs (HTTP/2+TLS) and FCM HTTP v1 servers on 127.0.0.1 for local demos.",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("data/sandbox"),
        help="where to write the test CA, APNs key and service account (default ./data/sandbox)",
    )
    parser.add_argument("--apns-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--fcm-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--fcm-plain",
        action="store_true",
        help="serve FCM on plain http:// (HTTP/1.1 only); default: https with the test CA,"
        " HTTP/2 or HTTP/1.1 as the client chooses (ALPN), like Google's",
    )
    parser.add_argument("--topic", default=DEFAULT_TOPIC, help="the apns-topic APNs accepts")
    parser.add_argument("--project", default=DEFAULT_PROJECT, help="the FCM project id")
    return parser


def _short(token: str) -> str:
    return token[:6] + "…" if len(token) > 6 else token


def _log_apns(push: ApnsPush) -> None:
    outcome = "closed" if push.status == 0 else str(push.status)
    log.info("apns %s %s %s", _short(push.token), outcome, push.reason)


def _log_fcm(push: FcmPush) -> None:
    outcome = "closed" if push.status == 0 else str(push.status)
    log.info("fcm  %s %s %s", _short(push.token), outcome, push.error_code)


def settings_lines(apns: FakeApns, fcm: FakeFcm, service_account: Path) -> list[str]:
    """The environment lines (``PN_*`` settings) that point the relay at the two fakes."""
    lines = [
        f"PN_APNS_ENDPOINT={apns.endpoint}",
        f"PN_APNS_CA_FILE={apns.tls.ca_file.resolve()}",
        f"PN_APNS_KEY_FILE={apns.apns_key.key_file.resolve()}",
        f"PN_APNS_KEY_ID={apns.key_id}",
        f"PN_APNS_TEAM_ID={apns.team_id}",
        "PN_APNS_SANDBOX=true",
        f"PN_APNS_TOPIC={apns.topic}",
        f"PN_FCM_SERVICE_ACCOUNT_FILE={service_account.resolve()}",
        f"PN_FCM_PROJECT_ID={fcm.project_id}",
        f"PN_FCM_ENDPOINT={fcm.base_url}",
    ]
    if fcm.tls is not None:
        lines.append(f"PN_FCM_CA_FILE={fcm.tls.ca_file.resolve()}")
    return lines


async def run(args: argparse.Namespace) -> None:
    directory: Path = args.dir
    directory.mkdir(parents=True, exist_ok=True)
    tls = generate_tls(directory)
    apns = FakeApns(tls, generate_apns_key(directory), topic=args.topic, port=args.apns_port)
    fcm = FakeFcm(project_id=args.project, tls=None if args.fcm_plain else tls, port=args.fcm_port)
    apns.pushes.listeners.append(_log_apns)
    fcm.pushes.listeners.append(_log_fcm)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    async with apns, fcm:
        account = fcm.write_service_account(directory / "service-account.json")
        print(f"# pn-relay sandbox: fake APNs and FCM, files in {directory.resolve()}")
        for line in settings_lines(apns, fcm, account.file):
            print(line)
        print("# Ctrl-C to stop", flush=True)
        await stop.wait()
    log.info(
        "stopped: apns %d pushes on %d connections, fcm %d pushes",
        len(apns.pushes),
        apns.connections_total,
        len(fcm.pushes),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
