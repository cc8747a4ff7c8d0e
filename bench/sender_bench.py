"""One provider sender alone against its fake, and the CPU each spends per push.

    python bench/sender_bench.py [--provider fcm|apns] [--fcm-plain] [--pushes 20000]
                                 [--in-flight 250] [--profile FILE]

The fake runs in a child process (its CPU is read from /proc), the sender in this one with
no relay around it: no database, no dispatcher, batches of the sender's `batch_size` kept
`--in-flight` pushes deep. It isolates what push_bench.py measures all together: the cost
of the HTTP client (h2, HPACK, TLS) and of the fake. `--profile` writes a cProfile of the
sending (wall clock) for `python -m pstats`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import cpu_seconds  # noqa: E402
from push.apns import APNsConfig, APNsSender  # noqa: E402
from push.fcm import FCMConfig, FCMSender  # noqa: E402
from push.outcome import ProviderSender, Push, Verdict  # noqa: E402
from storage.records import Provider  # noqa: E402


def serve(directory: Path, fcm_tls: bool) -> None:
    """The child: both fakes on one thread each, their settings on stdout, until stdin ends."""
    from sandbox.apns import FakeApns
    from sandbox.fcm import FakeFcm

    fcm = FakeFcm.create(directory / "fcm", use_tls=fcm_tls).start()
    apns = FakeApns.create(directory / "apns").start()
    account = fcm.write_service_account(directory / "sa.json")
    info = {
        "fcm": fcm.base_url,
        "fcm_ca": str(fcm.tls.ca_file) if fcm.tls else None,
        "account": str(account.file),
        "apns_port": apns.port,
        "apns_ca": str(apns.tls.ca_file),
        "apns_key": str(apns.apns_key.key_file),
        "key_id": apns.key_id,
        "team_id": apns.team_id,
    }
    print(json.dumps(info), flush=True)
    sys.stdin.read()


def sender_for(provider: str, info: dict[str, Any], in_flight: int) -> ProviderSender:
    if provider == "fcm":
        ca = info["fcm_ca"]
        config = FCMConfig(
            service_account_file=Path(info["account"]),
            endpoint=info["fcm"],
            ca_file=Path(ca) if ca else None,
        )
        return FCMSender(config, max_in_flight=in_flight)
    apns_config = APNsConfig(
        topic="com.loki-project.loki-messenger",
        host="127.0.0.1",
        port=info["apns_port"],
        key_file=Path(info["apns_key"]),
        key_id=info["key_id"],
        team_id=info["team_id"],
        ca_file=Path(info["apns_ca"]),
    )
    return APNsSender(apns_config, max_in_flight=in_flight)


async def run(
    sender: ProviderSender, provider: str, count: int, fake_pid: int, profile: str | None
) -> None:
    data = base64.b64encode(os.urandom(200)).decode()
    expiration = int(time.time()) + 3600

    def token() -> str:
        return secrets.token_hex(32) if provider == "apns" else secrets.token_urlsafe(120)

    pushes = [
        Push(n, Provider.FCM, token(), data, str(uuid.uuid4()), expiration) for n in range(count)
    ]
    size = max(1, sender.batch_size)
    await sender.send(pushes[:size])  # warm up: access token, connection
    slots = asyncio.Semaphore(max(1, sender.max_in_flight // size))
    verdicts: list[Verdict] = []

    async def one(batch: list[Push]) -> None:
        async with slots:
            verdicts.extend(outcome.verdict for outcome in await sender.send(batch))

    profiler = cProfile.Profile() if profile else None
    started, cpu, fake_cpu = time.monotonic(), time.process_time(), cpu_seconds(fake_pid)
    if profiler is not None:
        profiler.enable()
    await asyncio.gather(*(one(pushes[i : i + size]) for i in range(0, count, size)))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(profile))
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu
    fake_cpu = cpu_seconds(fake_pid) - fake_cpu
    await sender.close()
    accepted = verdicts.count(Verdict.ACCEPTED)
    print(
        f"{provider}: {count} pushes ({accepted} accepted) in {elapsed:.2f} s ="
        f" {count / elapsed:.0f} pushes/s; CPU per push: sender {cpu / count * 1e6:.0f} us,"
        f" fake {fake_cpu / count * 1e6:.0f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--provider", choices=["fcm", "apns"], default="fcm")
    parser.add_argument("--fcm-plain", action="store_true", help="fake FCM on plain http://")
    parser.add_argument("--pushes", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=250)
    parser.add_argument("--profile", metavar="FILE")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)  # the child
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve), not args.fcm_plain)
        return
    with tempfile.TemporaryDirectory() as directory:
        command = [sys.executable, __file__, "--serve", directory]
        if args.fcm_plain:
            command.append("--fcm-plain")
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            info = json.loads(child.stdout.readline())
            sender = sender_for(args.provider, info, args.in_flight)
            asyncio.run(run(sender, args.provider, args.pushes, child.pid, args.profile))
        finally:
            child.kill()
            child.wait()


if __name__ == "__main__":
    main()
