"""Durable notifies per second with SQLITE_SYNCHRONOUS=FULL against NORMAL, paired runs.

Starts `server.py` on its embedded defaults (SQLite in a fresh temporary DATA_DIR, providers
off) once per mode and round, alternating FULL and NORMAL so that a machine whose load changes
meanwhile penalises both alike; drives it with bench/load.py's notify load; reports requests/s
and the relay's own CPU per request, read from /proc (user + system time of the relay process
over the timed window), which is steadier than a rate on a shared machine.

    python bench/sync_modes.py --rounds 3 -n 6000 -c 32
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import blast, build_requests
from bench.procs import RelayProcess
from lsrpc.client import OnionClient


async def one_run(mode: str, args: argparse.Namespace) -> tuple[float, float]:
    with (
        tempfile.TemporaryDirectory(prefix="pn-bench-") as data,
        RelayProcess(Path(data), {"SQLITE_SYNCHRONOUS": mode}) as relay,
    ):
        client = OnionClient(bytes.fromhex(relay.pubkey))
        recipients = ["05" + os.urandom(32).hex() for _ in range(args.recipients)]
        load = argparse.Namespace(url=relay.url, concurrency=args.c)
        errors: list[str] = []
        await blast(
            load, build_requests(client, "register", len(recipients), recipients), [], errors
        )
        requests = build_requests(client, "notify", args.n, recipients)
        latencies: list[float] = []
        cpu_before = relay.cpu_seconds()
        elapsed = await blast(load, requests, latencies, errors)
        cpu = relay.cpu_seconds() - cpu_before
        if errors:
            raise SystemExit(f"{mode}: errors {errors[:3]}")
        return len(latencies) / elapsed, cpu / len(latencies) * 1000


async def main_async(args: argparse.Namespace) -> None:
    results: dict[str, list[tuple[float, float]]] = {"FULL": [], "NORMAL": []}
    for round_number in range(args.rounds):
        for mode in ("FULL", "NORMAL") if round_number % 2 == 0 else ("NORMAL", "FULL"):
            rate, cpu_ms = await one_run(mode, args)
            results[mode].append((rate, cpu_ms))
            print(
                f"round {round_number + 1} {mode:6}: {rate:7.0f} notifies/s,"
                f" {cpu_ms:.3f} ms relay CPU per notify",
                file=sys.stderr,
            )
    print("| SQLITE_SYNCHRONOUS | notifies/s (each round) | median | relay CPU per notify |")
    print("|---|---|---|---|")
    for mode, runs in results.items():
        rates = sorted(rate for rate, _ in runs)
        cpus = sorted(cpu for _, cpu in runs)
        print(
            f"| {mode} | {', '.join(f'{r:.0f}' for r, _ in runs)} | {rates[len(rates) // 2]:.0f}"
            f" | {cpus[len(cpus) // 2]:.3f} ms |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-n", type=int, default=6000, help="timed notifies per run")
    parser.add_argument("-c", type=int, default=32, help="concurrent connections")
    parser.add_argument("--recipients", type=int, default=1000)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
