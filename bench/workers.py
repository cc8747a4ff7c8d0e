"""Notifies per second at 1 and N workers (`server.py --workers N`), paired runs, /proc CPU.

    python bench/workers.py --rounds 3 -n 6000 -c 64                   # intake, providers off
    python bench/workers.py --rounds 3 -n 6000 -c 64 --apns            # every notify pushed
    python bench/workers.py --configs 1,2,2-inherit                    # port sharing compared
    python bench/workers.py --database postgresql+psycopg://postgres@127.0.0.1:5432/test

Each run starts a relay (fresh DATA_DIR; with --database, a fresh schema) in its own process
group, registers one APNs device for each of --recipients Session IDs, then sends -n
notifies over -c keep-alive connections (bench/load.py's client) and measures:

- notifies/s: answered notifies over the time to answer them all;
- with --apns, the real workload: the fake APNs (sandbox/, in a process of its own) receives
  one push per notify; notify+push/s is notifies over the time until the last push arrived;
- relay CPU per notify: user + system time of every relay process (the supervisor and its
  workers, from /proc) over that window, which is steadier than a rate on a shared machine;
- spread: each worker's share of that CPU (how evenly the kernel handed out connections).

Configurations run in turn within each round, their order alternating between rounds, so a
machine whose load changes meanwhile penalises all alike. `2-inherit` is the alternative to
SO_REUSEPORT that the supervisor does not use: one listening socket bound in the parent and
inherited by both workers (bench/inherit_socket.py starts the relay that way).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.load import blast, build_requests  # noqa: E402
from lsrpc.client import OnionClient  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def machine_ticks() -> tuple[int, int]:
    """(idle, total) CPU ticks of the whole machine, all cores (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return values[3] + values[4], sum(values)  # idle + iowait


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


# -- the fake APNs, in a process of its own -------------------------------------------------


def _fake_apns_main(directory: str, conn: multiprocessing.connection.Connection) -> None:
    from sandbox.apns import FakeApns

    apns = FakeApns.create(Path(directory))
    apns.start()
    conn.send(
        {
            "PN_APNS_KEY_FILE": str(apns.apns_key.key_file),
            "PN_APNS_KEY_ID": apns.key_id,
            "PN_APNS_TEAM_ID": apns.team_id,
            "PN_APNS_ENDPOINT": apns.endpoint,
            "PN_APNS_CA_FILE": str(apns.tls.ca_file),
        }
    )
    while True:
        command = conn.recv()
        if command == "count":
            conn.send(
                (
                    len(apns.pushes),
                    max((p.received_at for p in apns.pushes.snapshot()), default=0.0),
                )
            )
        elif command == "clear":
            apns.pushes.clear()
            conn.send(None)
        else:
            apns.stop()
            conn.send(None)
            return


class FakeApnsProcess:
    def __init__(self, directory: Path) -> None:
        self._conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(
            target=_fake_apns_main, args=(str(directory), child), daemon=True
        )
        self.process.start()
        self.settings: dict[str, str] = self._conn.recv()

    def ask(self, command: str) -> Any:
        self._conn.send(command)
        return self._conn.recv()

    def wait_for(self, count: int, timeout: float) -> float:
        """Wait until `count` pushes arrived; the monotonic time the last one arrived."""
        deadline = time.monotonic() + timeout
        while True:
            received, last = self.ask("count")
            if received >= count:
                return float(last)
            if time.monotonic() > deadline:
                raise SystemExit(f"the fake APNs got {received} of {count} pushes")
            time.sleep(0.02)


# -- one relay ----------------------------------------------------------------------------


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


def start_relay(
    config: str, env: dict[str, str], cwd: str
) -> tuple[subprocess.Popen[str], int, str]:
    workers = config.split("-", maxsplit=1)[0]
    scripts = {"inherit": "bench/inherit_socket.py", "split": "bench/split_workers.py"}
    script = scripts.get(config.partition("-")[2], "server.py")
    process = subprocess.Popen(
        [sys.executable, str(REPO / script), "--port", "0", "--workers", workers],
        env=env,
        cwd=cwd,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stderr is not None
    port, key = 0, ""
    lines = []
    for line in process.stderr:
        lines.append(line)
        found = re.search(r"listening on http://127.0.0.1:(\d+) \(server public key (\w+)\)", line)
        if found:
            port, key = int(found.group(1)), found.group(2)
        shared = "workers: " in line
        url = re.search(r"http://127.0.0.1:(\d+)", line) if shared else None
        if url:
            port = int(url.group(1))  # (the split's delivery worker listens elsewhere)
        if port and (workers == "1" or shared):
            break
    else:
        raise SystemExit(f"the relay did not start: {''.join(lines[-5:])}")
    threading.Thread(target=lambda: [None for _ in process.stderr or []], daemon=True).start()
    return process, port, key


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


def postgres_schema(base: str) -> tuple[str, str]:
    import psycopg

    schema = "bench_" + secrets.token_hex(4)
    with psycopg.connect(
        base.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in base else "?"
    return schema, f"{base}{separator}options={quote(f'-csearch_path={schema}')}"


def drop_schema(base: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(
        base.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


async def one_run(config: str, args: argparse.Namespace, fake: FakeApnsProcess | None) -> RunResult:
    with tempfile.TemporaryDirectory(prefix="pn-bench-") as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PN_")}
        env.update({"PN_DATA_DIR": data, "PN_LOG_LEVEL": "INFO"})
        schema = ""
        if args.database:
            schema, env["PN_DATABASE_URL"] = postgres_schema(args.database)
        if fake is not None:
            env.update(fake.settings)
            fake.ask("clear")
        relay, port, key = start_relay(config, env, data)
        try:
            client = OnionClient(bytes.fromhex(key))
            recipients = ["05" + os.urandom(32).hex() for _ in range(args.recipients)]
            load = argparse.Namespace(url=f"http://127.0.0.1:{port}", concurrency=args.c)
            errors: list[str] = []
            setup = build_requests(client, "register", len(recipients), recipients)
            await blast(load, setup, [], errors)
            requests = build_requests(client, "notify", args.n, recipients)
            pids = [relay.pid, *children_of(relay.pid)]
            workers = pids[1:] or pids
            before = {pid: cpu_seconds(pid) for pid in pids}
            latencies: list[float] = []
            client_before = time.process_time()
            ticks_before = machine_ticks()
            started = time.monotonic()
            sampled: list[list[int]] = []
            sampler = threading.Timer(1.0, lambda: sampled.append(connections_by_process(port)))
            sampler.start()
            elapsed = await blast(load, requests, latencies, errors)
            sampler.cancel()
            pushed_rate = 0.0
            if fake is not None:
                last = fake.wait_for(args.n, timeout=300)
                pushed_rate = args.n / (last - started)
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
        finally:
            os.killpg(relay.pid, signal.SIGTERM)
            relay.wait(60)
            if schema:
                drop_schema(args.database, schema)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


async def main_async(args: argparse.Namespace) -> None:
    configs = args.configs.split(",")
    results: dict[str, list[RunResult]] = {config: [] for config in configs}
    with tempfile.TemporaryDirectory(prefix="pn-bench-apns-") as directory:
        fake = FakeApnsProcess(Path(directory)) if args.apns else None
        try:
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
        finally:
            if fake is not None:
                fake.ask("stop")
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
    parser.add_argument(
        "--configs", default="1,2", help="worker counts to compare, e.g. 1,2,2-inherit"
    )
    parser.add_argument("--apns", action="store_true", help="push every notify to a fake APNs")
    parser.add_argument("--database", default="", help="a PostgreSQL URL (default: SQLite)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
