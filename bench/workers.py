"""Notifies per second at 1 and N workers (`server.py --workers N`), paired runs, /proc CPU.

    python bench/workers.py --rounds 3 -n 6000 -c 64                   # intake, providers off
    python bench/workers.py --rounds 3 -n 6000 -c 64 --apns            # every notify pushed
    python bench/workers.py --configs 1,2,4                            # more worker counts
    python bench/workers.py --database postgresql+psycopg://postgres@127.0.0.1:5432/test

Each run starts a relay (fresh DATA_DIR; with --database, a fresh schema), registers one APNs
device for each of --recipients Session IDs, then sends -n notifies over -c keep-alive
connections (bench/load.py's client) and measures:

- notifies/s: answered notifies over the time to answer them all;
- with --apns, the real workload: the fake APNs (`python -m bench.fakes`, a process of its
  own) receives one push per notify; notify+push/s is notifies over the time until the last
  push arrived;
- relay CPU per notify: user + system time of every relay process (the supervisor and its
  workers, from /proc) over that window, which is steadier than a rate on a shared machine;
- spread: each worker's share of that CPU (how evenly the kernel handed out connections).

Configurations run in turn within each round, their order alternating between rounds, so a
machine whose load changes meanwhile penalises all alike. (The two alternatives measured
against alike workers on SO_REUSEPORT, a socket inherited by every worker and an intake /
delivery split, were scripts of their own until their figures were recorded: bench/README.md.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fakes import RemoteFake
from bench.load import blast, build_requests
from bench.procs import FakesProcess, RelayProcess, cpu_seconds, descendants, machine_ticks
from lsrpc.client import OnionClient
from storage.scratch_schema import scratch_schema


@dataclass
class RunResult:
    rate: float  # notifies answered per second
    pushed_rate: float  # notifies pushed per second (0 without --apns)
    cpu_ms: float  # relay CPU per notify (all relay processes)
    spread: list[float]  # each worker's share of the workers' CPU
    connections: list[int]  # client connections each worker held, sampled during the run
    p50_ms: float  # notify answer latency
    p99_ms: float
    client_cpu_ms: float  # this process's CPU per notify (the load generator)
    idle: float  # the machine's idle share over the window (all cores; others use it too)


def connections_by_process(port: int) -> list[int]:
    """How many established connections to `port` each process holds, most first (ss)."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    counts: dict[str, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


async def one_run(config: str, args: argparse.Namespace, fakes: FakesProcess | None) -> RunResult:
    settings = {}
    if fakes is not None:
        settings = {k: v for k, v in fakes.settings.items() if k.startswith("APNS_")}
    with contextlib.ExitStack() as stack:
        if args.database:
            settings["DATABASE_URL"] = stack.enter_context(
                scratch_schema(args.database, prefix="bench_")
            )
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pn-bench-")))
        relay = stack.enter_context(RelayProcess(data / "data", settings, workers=int(config)))
        apns = RemoteFake(fakes.control_port, "apns") if fakes is not None else None
        if apns is not None:
            apns.pushes.clear()
        client = OnionClient(bytes.fromhex(relay.pubkey))
        recipients = ["05" + os.urandom(32).hex() for _ in range(args.recipients)]
        load = argparse.Namespace(url=relay.url, concurrency=args.c)
        errors: list[str] = []
        setup = build_requests(client, "register", len(recipients), recipients)
        await blast(load, setup, [], errors)
        requests = build_requests(client, "notify", args.n, recipients)
        pids = [relay.process.pid, *descendants(relay.process.pid)]
        workers = pids[1:] or pids
        before = {pid: cpu_seconds(pid) for pid in pids}
        latencies: list[float] = []
        client_before = time.process_time()
        ticks_before = machine_ticks()
        started = time.monotonic()
        sampled: list[list[int]] = []
        sampler = threading.Timer(1.0, lambda: sampled.append(connections_by_process(relay.port)))
        sampler.start()
        elapsed = await blast(load, requests, latencies, errors)
        sampler.cancel()
        pushed_rate = 0.0
        if apns is not None:
            received = apns.pushes.wait_for(args.n, timeout=300)
            pushed_rate = args.n / (max(p.received_at for p in received) - started)
        used = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
        client_cpu = time.process_time() - client_before
        ticks_after = machine_ticks()
        idle = (ticks_after[0] - ticks_before[0]) / max(1, ticks_after[1] - ticks_before[1])
        if errors:
            raise SystemExit(f"{config}: errors {errors[:3]}")
        worker_cpu = sum(used[pid] for pid in workers) or 1.0
        return RunResult(
            rate=len(latencies) / elapsed,
            pushed_rate=pushed_rate,
            cpu_ms=sum(used.values()) / len(latencies) * 1000,
            spread=sorted((used[pid] / worker_cpu for pid in workers), reverse=True),
            connections=sampled[0] if sampled else [],
            p50_ms=sorted(latencies)[len(latencies) // 2] * 1000,
            p99_ms=sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000,
            client_cpu_ms=client_cpu / len(latencies) * 1000,
            idle=idle,
        )


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


async def main_async(args: argparse.Namespace) -> None:
    configs = args.configs.split(",")
    results: dict[str, list[RunResult]] = {config: [] for config in configs}
    with contextlib.ExitStack() as stack:
        fake = None
        if args.apns:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pn-fakes-")))
            fake = stack.enter_context(FakesProcess(directory))
        for round_number in range(args.rounds):
            order = configs if round_number % 2 == 0 else list(reversed(configs))
            for config in order:
                result = await one_run(config, args, fake)
                results[config].append(result)
                pushed = f", {result.pushed_rate:6.0f} notify+push/s" if fake else ""
                print(
                    f"round {round_number + 1} workers {config:10}: {result.rate:6.0f}"
                    f" notifies/s{pushed}, p50/p99 {result.p50_ms:.0f}/{result.p99_ms:.0f} ms,"
                    f" {result.cpu_ms:.3f} ms relay CPU per notify,"
                    f" CPU shares {'/'.join(f'{s:.2f}' for s in result.spread)},"
                    f" connections {'/'.join(map(str, result.connections))},"
                    f" load generator {result.client_cpu_ms:.3f} ms CPU per notify,"
                    f" machine idle {result.idle:.0%}",
                    file=sys.stderr,
                    flush=True,
                )
    database = "PostgreSQL" if args.database else "SQLite"
    pushed_head = " notify+push/s (each round) | median |" if args.apns else ""
    print(f"\n{database}, -n {args.n} -c {args.c}, {args.rounds} rounds\n")
    print(
        f"| workers | notifies/s (each round) | median |{pushed_head}"
        " p50 / p99 (median) | relay CPU per notify (median) |"
        " busiest worker's CPU share (median) | machine idle (median) |"
    )
    print("|---|---|---|" + ("---|---|" if args.apns else "") + "---|---|---|---|")
    for config, runs in results.items():
        rates = [r.rate for r in runs]
        pushed = ""
        if args.apns:
            pushed_rates = [r.pushed_rate for r in runs]
            pushed = (
                f" {', '.join(f'{r:.0f}' for r in pushed_rates)} | {median(pushed_rates):.0f} |"
            )
        print(
            f"| {config} | {', '.join(f'{r:.0f}' for r in rates)} | {median(rates):.0f} |"
            f"{pushed} {median([r.p50_ms for r in runs]):.0f} /"
            f" {median([r.p99_ms for r in runs]):.0f} ms |"
            f" {median([r.cpu_ms for r in runs]):.3f} ms |"
            f" {median([r.spread[0] for r in runs]):.2f} |"
            f" {median([r.idle for r in runs]):.0%} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-n", type=int, default=6000, help="timed notifies per run")
    parser.add_argument("-c", type=int, default=64, help="concurrent connections")
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--configs", default="1,2", help="worker counts to compare, e.g. 1,2,4")
    parser.add_argument("--apns", action="store_true", help="push every notify to a fake APNs")
    parser.add_argument("--database", default="", help="a PostgreSQL URL (default: SQLite)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
