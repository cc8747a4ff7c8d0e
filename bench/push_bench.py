"""Pushes per second to the sandbox providers, and notify→push latency.

    python bench/push_bench.py [--provider apns|fcm|both] [--pushes 10000] [--rate 100]
                               [--fcm-plain]

Starts the fake APNs and FCM in this process and a relay (`server.py`, its own process, on
SQLite in a temporary directory) pointed at them. The fake FCM speaks HTTP/2 over TLS, as
Google's does (`--fcm-plain`: HTTP/1.1 on plain http://, the relay's fallback).

- Throughput: a closed group of 100 members with one device each; notifies to the group are
  fanned out by the relay, so the figure is the dispatcher's, not the intake's. Measured from
  the first notify sent to the last push received.
- Latency: one-to-one notifies at a steady --rate for --seconds; for each, the time from
  sending the onion request to the fake receiving the push (same machine, same clock).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procs import RelayClient, fake_settings, setting_pairs, start_relay_on_pipe
from sandbox.apns import FakeApns
from sandbox.fcm import FakeFcm


class Relay(RelayClient):
    """`server.py` in its own process, its port and key read from its "listening" line."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.process, port, key = start_relay_on_pipe(workdir, env)
        super().__init__(port, key)
        threading.Thread(
            target=lambda: [None for _ in self.process.stderr or []], daemon=True
        ).start()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def run_parallel(jobs: list[Callable[[], None]], threads: int = 8) -> None:
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not jobs:
                    return
                job = jobs.pop()
            job()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def token_for(provider: str) -> str:
    if provider == "apns":
        return secrets.token_hex(32)
    return secrets.token_urlsafe(120) + ":APA91b"


def setup_group(relay: RelayClient, provider: str, members: int = 100, threads: int = 8) -> str:
    """A closed group of `members` Session IDs with one `provider` device each; its key."""
    group = "05" + secrets.token_hex(32)
    jobs: list[Callable[[], None]] = []
    for _ in range(members):
        member = "05" + secrets.token_hex(32)
        jobs.append(
            partial(relay.call, "register", {"token": token_for(provider), "pubKey": member})
        )
        membership = {"closedGroupPublicKey": group, "pubKey": member}
        jobs.append(partial(relay.call, "subscribe_closed_group", membership))
    run_parallel(jobs, threads)
    return group


def timed_throughput(
    relay: RelayClient, fake: Any, provider: str, group: str, pushes: int, *, members: int = 100
) -> dict[str, float]:
    """Notifies to `group` (set up by setup_group) until `pushes` pushes reached the fake."""
    fake.pushes.clear()
    notifies = pushes // members
    started = time.monotonic()
    run_parallel(
        [
            (
                lambda: relay.call(
                    "notify", {"data": base64.b64encode(os.urandom(200)).decode(), "send_to": group}
                )
            )
            for _ in range(notifies)
        ]
    )
    received = fake.pushes.wait_for(notifies * members, timeout=300)
    elapsed = max(p.received_at for p in received) - started
    ok = sum(1 for p in received if p.status == 200)
    rate = len(received) / elapsed
    print(
        f"{provider}: {len(received)} pushes ({ok} accepted)"
        f" in {elapsed:.2f} s = {rate:.0f} pushes/s"
    )
    return {"pushes": len(received), "accepted": ok, "seconds": elapsed, "rate": rate}


def throughput(relay: RelayClient, fake: Any, provider: str, pushes: int) -> dict[str, float]:
    group = setup_group(relay, provider)
    return timed_throughput(relay, fake, provider, group, pushes)


def setup_recipients(relay: RelayClient, provider: str, count: int = 50) -> list[str]:
    """`count` Session IDs with one `provider` device each."""
    recipients = []
    for _ in range(count):
        member = "05" + secrets.token_hex(32)
        relay.call("register", {"token": token_for(provider), "pubKey": member})
        recipients.append(member)
    return recipients


def timed_latency(
    relay: RelayClient,
    fake: Any,
    provider: str,
    recipients: list[str],
    *,
    rate: float,
    seconds: float,
) -> dict[str, float]:
    """One-to-one notifies at a steady `rate`; each timed from its request to its push."""
    fake.pushes.clear()
    sent: dict[str, float] = {}
    interval = 1 / rate
    count = int(rate * seconds)
    start = time.monotonic()
    for n in range(count):
        data = base64.b64encode(os.urandom(60)).decode()
        target = start + n * interval
        pause = target - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        sent[data] = time.monotonic()
        relay.call("notify", {"data": data, "send_to": recipients[n % len(recipients)]})
    received = fake.pushes.wait_for(count, timeout=60)
    delays = []
    for push in received:
        data = push.json()["ENCRYPTED_DATA"] if provider == "apns" else push.data["ENCRYPTED_DATA"]
        delays.append((push.received_at - sent[data]) * 1000)
    delays.sort()
    p50 = statistics.median(delays)
    p99 = delays[max(0, int(len(delays) * 0.99) - 1)]
    print(
        f"{provider}: notify→push latency over {count} notifies at {rate:.0f}/s:"
        f" p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {delays[-1]:.1f} ms"
    )
    return {"count": count, "rate": rate, "p50_ms": p50, "p99_ms": p99, "max_ms": delays[-1]}


def latency(
    relay: RelayClient, fake: Any, provider: str, rate: float, seconds: float
) -> dict[str, float]:
    recipients = setup_recipients(relay, provider)
    return timed_latency(relay, fake, provider, recipients, rate=rate, seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--provider", choices=["apns", "fcm", "both"], default="both")
    parser.add_argument("--pushes", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--fcm-plain",
        action="store_true",
        help="the fake FCM on plain http:// (HTTP/1.1) instead of TLS with HTTP/2",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="extra relay setting"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        apns = FakeApns.create(workdir / "apns")
        apns.start()
        fcm = FakeFcm.create(workdir / "fcm", use_tls=not args.fcm_plain)
        fcm.start()
        account = fcm.write_service_account(workdir / "sa.json")
        env = fake_settings(apns, fcm, account.file)
        env.update(("PN_" + name, value) for name, value in setting_pairs(args.set))
        relay = Relay(workdir, env)
        try:
            for provider in ("apns", "fcm") if args.provider == "both" else (args.provider,):
                fake = apns if provider == "apns" else fcm
                throughput(relay, fake, provider, args.pushes)
                latency(relay, fake, provider, args.rate, args.seconds)
        finally:
            relay.stop()
            apns.stop()
            fcm.stop()


if __name__ == "__main__":
    main()
