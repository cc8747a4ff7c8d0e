"""`python -m bench`: the relay's figures (issue 10), measured in one run, as one markdown table.

    python -m bench                       # everything (several minutes)
    python -m bench --quick               # small counts: proves the command works, no figures
    python -m bench --only crypto,intake  # a subset: crypto intake push real postgres scale group
    python -m bench --write               # and put the table into BENCHMARKS.md

Everything it measures runs in processes of its own, started here: relays (`python server.py`,
configured by PN_* variables, each on a fresh DATA_DIR in a temporary directory), the fake
APNs and FCM (`python -m bench.fakes`), and load generators (bench/load.py,
bench/push_load.py, bench/crypto_ceiling.py, bench/bulk_devices.py). Relay CPU is read from
/proc (utime + stime of every relay process, summed) just before a load generator starts its
clock and again after its last answer (or the last push it caused reached the fake).

Targets of issue 10 are checked here, in the table's "target" and "met?" columns: never by a
timed assertion in the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fakes import RemoteFake  # noqa: E402
from bench.procs import (  # noqa: E402
    BenchError,
    FakesProcess,
    Loader,
    RelayProcess,
    load_argv,
    server_output,
    wait_until_quiet,
)
from bench.push_bench import setup_group  # noqa: E402
from storage.scratch_schema import scratch_schema  # noqa: E402

SECTIONS = ("crypto", "intake", "push", "real", "postgres", "scale", "group")
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BEGIN = "<!-- python -m bench --write: from here -->"
END = "<!-- python -m bench --write: to here -->"
X = "\N{MULTIPLICATION SIGN}"  # for ratios


@dataclass(frozen=True)
class Sizes:
    intake: int  # timed requests per intake run
    concurrency: int  # connections of a saturating load generator
    steady_rate: float  # the moderate load, notifies per second
    steady: int  # timed requests at steady_rate
    pushes: int  # pushes per provider, throughput
    latency_rate: float  # notify→push latency: one-to-one notifies per second ...
    latency_seconds: float  # ... for this long
    real: int  # notifies of the real workload at saturation
    real_rounds: int  # each real-workload row measured this many times on the same relay
    devices: int  # registered devices of the scale case
    scale_requests: int  # timed registers / notifies against each scale relay
    scale_rounds: int  # small and large relay measured alternately, this many times
    postgres_rounds: int  # the SQLite and the PostgreSQL relay measured alternately
    push_rounds: int  # throughput runs of each provider, in turn
    group_members: int  # the large group
    group_seconds: float  # how long group notifies (one a second) and registers run
    register_rate: float  # the other client's registers per second meanwhile
    crypto_seconds: float


# (a full run, --quick): --quick only proves that every section runs
SIZE_COLUMNS: dict[str, tuple[Any, Any]] = {
    "intake": (8000, 200),
    "concurrency": (32, 8),
    "steady_rate": (600, 600),
    "steady": (6000, 300),
    "pushes": (20_000, 500),
    "latency_rate": (100, 50),
    "latency_seconds": (10, 1),
    "real": (6000, 200),
    "real_rounds": (3, 1),
    "devices": (1_000_000, 20_000),
    "scale_requests": (4000, 200),
    "scale_rounds": (5, 1),
    "postgres_rounds": (3, 1),
    "push_rounds": (3, 1),
    "group_members": (1000, 100),
    "group_seconds": (10, 2),
    "register_rate": (100, 50),
    "crypto_seconds": (3, 0.5),
}
FULL = Sizes(**{name: full for name, (full, _) in SIZE_COLUMNS.items()})
QUICK = Sizes(**{name: quick for name, (_, quick) in SIZE_COLUMNS.items()})
SMALL_DEVICES = 1000  # the scale case's baseline


@dataclass(frozen=True)
class Row:
    measure: str
    conditions: str
    result: str
    latency: str = "—"
    cpu: str = "—"
    target: str = "—"
    met: str = "—"


@dataclass
class Bench:
    args: argparse.Namespace
    sizes: Sizes
    workdir: Path
    workers: int | None  # N for the N-worker rows, None when server.py has no --workers
    found: dict[str, float] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    failed: bool = False

    def settings(self, given: dict[str, str] | None = None) -> dict[str, str]:
        """A relay's settings (PN_* names without the prefix): a section's own, then those of
        --relay-setting, which win."""
        return {**(given or {}), **self.args.relay_settings}

    def data_dir(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
        return path / "data"


# -- formatting --------------------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def p50_p99(result: dict[str, Any]) -> str:
    return f"{ms(result['p50_ms'])} / {ms(result['p99_ms'])}"


@dataclass(frozen=True)
class Cpu:
    """The relay's CPU seconds over a timed window, the window's length, and how long the
    relay's threads waited for a core meanwhile (summed over threads, like the CPU)."""

    seconds: float
    wall: float
    waited: float = 0.0

    def per(self, count: float) -> float:
        """Milliseconds of relay CPU per unit of work."""
        return self.seconds / count * 1000 if count else 0.0

    def cell(self, count: float, unit: str) -> str:
        """E.g. "0.532 ms per notify (87 % of a core)": the share says whether the relay was
        busy or waiting (on the database, the disk, or for a core the machine gave others)."""
        return f"{self.per(count):.3f} ms per {unit} ({self.busy()})"

    def busy(self) -> str:
        """E.g. "87 % of a core, 40 % waiting for one": a relay short of CPU on a shared
        machine waits for a core; one waiting on its database or the disk does not."""
        if not self.wall:
            return "—"
        share, waiting = self.seconds / self.wall * 100, self.waited / self.wall * 100
        return f"{share:.0f} % of a core, {waiting:.0f} % waiting for one"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def runs_note(figures: list[str], unit: str) -> str:
    """ "; median of N runs: a, b, c<unit>" for a cell that shows the median of several runs
    (each run's figure, in order), or "" for a single run."""
    if len(figures) < 2:
        return ""
    return f"; median of {len(figures)} runs: {', '.join(figures)}{unit}"


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def table(rows: list[Row]) -> str:
    lines = [
        "| measure | conditions | result | p50 / p99 | relay CPU | target | met? |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = (row.measure, row.conditions, row.result, row.latency, row.cpu, row.target)
        lines.append("| " + " | ".join((*cells, row.met)) + " |")
    return "\n".join(lines)


# -- running load generators -------------------------------------------------------------------


def timed(
    relay: RelayProcess,
    loaders: list[Loader],
    *,
    before: Callable[[], None] | None = None,
    after: Callable[[list[dict[str, Any]]], Any] | None = None,
) -> tuple[list[dict[str, Any]], Cpu, Any]:
    """Run `loaders` together (all ready, then all go); their results, the relay's CPU over
    the window (until `after` returns, if given: e.g. the last push arrived), and what
    `after` returned."""
    try:
        for loader in loaders:
            loader.wait_ready()
        wait_until_quiet()  # what an earlier run left to do stays out of this window
        if before is not None:
            before()
        cpu_before, wall_before = relay.cpu_seconds(), time.monotonic()
        waited_before = relay.waited_seconds()
        for loader in loaders:
            loader.go()
        results = [loader.result() for loader in loaders]
        extra = after(results) if after is not None else None
        cpu = Cpu(
            relay.cpu_seconds() - cpu_before,
            time.monotonic() - wall_before,
            relay.waited_seconds() - waited_before,
        )
        return results, cpu, extra
    finally:
        for loader in loaders:
            loader.stop()


def run_load(
    relay: RelayProcess, endpoint: str, requests: int, concurrency: int, *extra: str
) -> tuple[dict[str, Any], Cpu]:
    """One bench/load.py run against `relay`: its result and the relay's CPU."""
    loader = Loader([*load_argv(relay, endpoint, requests, concurrency), *extra], endpoint)
    (result,), cpu, _ = timed(relay, [loader])
    return result, cpu


def server_workers_option() -> bool:
    """Whether this server.py takes --workers (issue 10, point 2: maybe not yet)."""
    try:
        return "--workers" in server_output("--help")
    except subprocess.CalledProcessError:
        return False


def worker_counts(bench: Bench) -> list[int]:
    return [1] if bench.workers is None else [1, bench.workers]


def not_available_row(bench: Bench, measure: str) -> None:
    if bench.workers is None:
        bench.rows.append(
            Row(
                measure,
                f"{bench.args.workers} workers",
                "not available: server.py has no --workers option",
            )
        )


# -- sections ------------------------------------------------------------------------------------


def crypto(bench: Bench) -> None:
    output = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "crypto_ceiling.py"),
            "--seconds",
            str(bench.sizes.crypto_seconds),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    ceiling = float(result["per_cpu_second"])
    bench.found["crypto"] = ceiling
    bench.rows.append(
        Row(
            "crypto ceiling",
            "lsrpc/ alone, one core: open (X25519, AES-GCM), parse and seal a v2 notify;"
            " no HTTP, no database",
            f"{ceiling:,.0f} requests/s per core",
            cpu=f"{result['us_per_request'] / 1000:.3f} ms per request (no relay: lsrpc only)",
        )
    )


def intake(bench: Bench) -> None:
    sizes = bench.sizes
    rates: dict[str, float] = {}
    cpu_ms: dict[str, float] = {}
    for workers in worker_counts(bench):
        label = "1 worker" if workers == 1 else f"{workers} workers"
        with RelayProcess(bench.data_dir("intake"), bench.settings(), workers=workers) as relay:
            for endpoint in ("register", "notify"):
                result, cpu = run_load(relay, endpoint, sizes.intake, sizes.concurrency)
                if workers == 1:
                    rates[endpoint] = result["rate"]
                    cpu_ms[endpoint] = cpu.per(result["requests"])
                what = (
                    "each to one of 1,000 Session IDs with a device: one delivery row"
                    if endpoint == "notify"
                    else "a new device each"
                )
                bench.rows.append(
                    Row(
                        f"intake {endpoint}",
                        f"{label}, SQLite, providers off, {sizes.intake:,} requests over"
                        f" {sizes.concurrency} connections; {what}",
                        f"{result['rate']:,.0f}/s",
                        p50_p99(result),
                        cpu.cell(result["requests"], endpoint),
                    )
                )
            result, cpu = run_load(
                relay,
                "notify",
                sizes.steady,
                sizes.concurrency,
                "--rate",
                str(sizes.steady_rate),
            )
            bench.rows.append(
                Row(
                    "intake notify, steady",
                    f"{label}, as above, paced at {sizes.steady_rate:,.0f}/s (open loop),"
                    f" {sizes.steady:,} requests",
                    f"{result['rate']:,.0f}/s",
                    p50_p99(result),
                    cpu.cell(result["requests"], "notify"),
                )
            )
    not_available_row(bench, "intake register / notify")
    ceiling = bench.found.get("crypto")
    if ceiling:
        crypto_ms = 1000 / ceiling
        bench.rows.append(
            Row(
                "intake ÷ crypto ceiling",
                "1 worker, the saturated rates above over the one-core ceiling; CPU: the"
                " crypto's share of the relay's CPU per request (steadier on a shared machine)",
                f"register {rates['register'] / ceiling:.2f}{X},"
                f" notify {rates['notify'] / ceiling:.2f}{X}",
                cpu=f"crypto {crypto_ms / cpu_ms['register']:.0%} of a register's,"
                f" {crypto_ms / cpu_ms['notify']:.0%} of a notify's",
            )
        )


def push(bench: Bench) -> None:
    """Pushes per second to each fake provider: `push_rounds` throughput runs of each, in
    turn (APNs, FCM, FCM, APNs, ...), each row the median run by rate (single runs wander by
    ±10 % here, as much as the FCM/APNs target's margin); then notify→push latency."""
    sizes = bench.sizes
    with (
        FakesProcess(Path(tempfile.mkdtemp(prefix="fakes-", dir=bench.workdir))) as fakes,
        RelayProcess(bench.data_dir("push"), bench.settings(fakes.settings)) as relay,
    ):

        def load(provider: str, *mode: str) -> Loader:
            return Loader(
                [
                    str(ROOT / "bench" / "push_load.py"),
                    "--port",
                    str(relay.port),
                    "--pubkey",
                    relay.pubkey,
                    "--control",
                    str(fakes.control_port),
                    "--provider",
                    provider,
                    *mode,
                ],
                provider,
            )

        providers = ("apns", "fcm")
        runs: dict[str, list[tuple[dict[str, Any], Cpu]]] = {p: [] for p in providers}
        for round_ in range(sizes.push_rounds):
            for provider in providers if round_ % 2 == 0 else providers[::-1]:
                throughput = load(provider, "--mode", "throughput", "--pushes", str(sizes.pushes))
                (through,), cpu, _ = timed(relay, [throughput])
                runs[provider].append((through, cpu))
        figures: dict[str, float] = {}
        for provider in providers:
            latency_run = load(
                provider,
                "--mode",
                "latency",
                "--rate",
                str(sizes.latency_rate),
                "--seconds",
                str(sizes.latency_seconds),
            )
            (latency,), _, _ = timed(relay, [latency_run])
            provider_runs = sorted(runs[provider], key=lambda run: run[0]["rate"])
            through, cpu = provider_runs[len(provider_runs) // 2]
            figures[provider] = through["rate"]
            target, met = "—", "—"
            if provider == "fcm":
                apns = figures["apns"]
                target = f"≥ 2,000/s and ≥ 0.85{X} APNs ({0.85 * apns:,.0f}/s)"
                met = verdict(through["rate"] >= 2000 and through["rate"] >= 0.85 * apns)
            each = runs_note([f"{run[0]['rate']:,.0f}" for run in provider_runs], "/s")
            name = "APNs (HTTP/2, TLS)" if provider == "apns" else "FCM (HTTP v1 over HTTP/2, TLS)"
            bench.rows.append(
                Row(
                    f"pushes to the fake {name}",
                    f"1 worker; a closed group of 100 with a device each, {sizes.pushes:,}"
                    f" pushes, APNs and FCM runs in turn; latency: notify→push of one-to-one"
                    f" notifies at {sizes.latency_rate:.0f}/s for {sizes.latency_seconds:.0f} s",
                    f"{through['rate']:,.0f} pushes/s ({through['accepted']:,.0f} accepted)" + each,
                    p50_p99(latency),
                    cpu.cell(through["pushes"], "push"),
                    target,
                    met,
                )
            )


def real(bench: Bench) -> None:
    """Every notify pushed to the fake APNs: intake and delivery in the same relay."""
    sizes = bench.sizes
    fakes_dir = Path(tempfile.mkdtemp(prefix="fakes-", dir=bench.workdir))
    with FakesProcess(fakes_dir) as fakes:
        apns = RemoteFake(fakes.control_port, "apns")
        for workers in worker_counts(bench):
            label = "1 worker" if workers == 1 else f"{workers} workers"
            with RelayProcess(
                bench.data_dir("real"), bench.settings(fakes.settings), workers=workers
            ) as relay:
                for steady in (False, True):
                    count = sizes.steady if steady else sizes.real
                    pace = ["--rate", str(sizes.steady_rate)] if steady else []
                    runs = [
                        real_run(
                            relay,
                            apns,
                            [*load_argv(relay, "notify", count, sizes.concurrency), *pace],
                            count,
                        )
                        for _ in range(sizes.real_rounds)
                    ]
                    # The median run by CPU per notify+push (a shared machine's neighbours
                    # make single runs wander; every run's figure is in the cell).
                    runs.sort(key=lambda run: run[1].per(count))
                    result, cpu, seconds = runs[len(runs) // 2]
                    limit = 0.8 if steady else 0.7
                    cpu_ms = cpu.per(count)
                    conditions = (
                        f"paced at {sizes.steady_rate:,.0f} notifies/s (open loop), {count:,}"
                        if steady
                        else f"saturated, {count:,} notifies over {sizes.concurrency} connections"
                    )
                    each = runs_note([f"{run[1].per(count):.3f}" for run in runs], " ms")
                    bench.rows.append(
                        Row(
                            "real workload: every notify pushed to the fake APNs",
                            f"{label}, SQLite; {conditions}; rate = notifies whose push"
                            " arrived, per second, until the last one",
                            f"{count / seconds:,.0f} notifies+pushes/s",
                            p50_p99(result) + " (notify answered)",
                            cpu.cell(count, "notify+push") + each,
                            f"≤ {limit} ms CPU per notify+push",
                            verdict(cpu_ms <= limit),
                        )
                    )
    not_available_row(bench, "real workload")


def real_run(
    relay: RelayProcess, apns: RemoteFake, argv: list[str], count: int
) -> tuple[dict[str, Any], Cpu, float]:
    """One timed notify load whose every notify is pushed: the load's result, the relay's
    CPU until the last push arrived, and the seconds from the load's start until then."""
    loader = Loader(argv, "notify")

    def pushed(results: list[dict[str, Any]]) -> float:
        received = apns.pushes.wait_for(count, timeout=600)
        if any(p.status != 200 for p in received):
            raise BenchError("the fake APNs refused a push")
        return max(p.received_at for p in received) - float(results[0]["started"])

    (result,), cpu, seconds = timed(relay, [loader], before=apns.pushes.clear, after=pushed)
    return result, cpu, seconds


def postgres(bench: Bench) -> None:
    """SQLite and PostgreSQL with the same notify load: a relay on each, run alternately
    `postgres_rounds` times (each backend first in turn), each row the median run by rate
    and the ratio that of the medians (single runs of either wander by ±15 % here)."""
    sizes = bench.sizes
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(scratch_schema(bench.args.postgres_url, prefix="bench_"))
        except Exception as exc:  # noqa: BLE001 - why PostgreSQL is unreachable, in the table
            bench.rows.append(Row("notify, PostgreSQL", "", f"not available: {exc}"))
            return
        backends = {"SQLite": {}, "PostgreSQL": {"DATABASE_URL": url}}
        relays = {
            backend: stack.enter_context(
                RelayProcess(bench.data_dir(backend.lower()), bench.settings(settings))
            )
            for backend, settings in backends.items()
        }
        runs: dict[str, list[tuple[dict[str, Any], Cpu]]] = {backend: [] for backend in relays}
        for round_ in range(sizes.postgres_rounds):
            order = list(relays) if round_ % 2 == 0 else list(reversed(relays))
            for backend in order:
                runs[backend].append(
                    run_load(relays[backend], "notify", sizes.intake, sizes.concurrency)
                )
    rates: dict[str, float] = {}
    for backend, backend_runs in runs.items():
        backend_runs.sort(key=lambda run: run[0]["rate"])
        result, cpu = backend_runs[len(backend_runs) // 2]
        rates[backend] = result["rate"]
        target, met = "—", "—"
        if backend == "PostgreSQL":
            ratio = result["rate"] / rates["SQLite"]
            target = f"≥ 0.8{X} SQLite ({0.8 * rates['SQLite']:,.0f}/s)"
            met = f"{verdict(ratio >= 0.8)} ({ratio:.2f}{X})"
        each = runs_note([f"{run[0]['rate']:,.0f}" for run in backend_runs], "/s")
        bench.rows.append(
            Row(
                f"notify, {backend}",
                f"1 worker, providers off, {sizes.intake:,} notifies over"
                f" {sizes.concurrency} connections, a relay on each backend run alternately"
                + (" (PostgreSQL 15 on the same host)" if backend == "PostgreSQL" else ""),
                f"{result['rate']:,.0f}/s{each}",
                p50_p99(result),
                cpu.cell(result["requests"], "notify"),
                target,
                met,
            )
        )


def bulk_load(data_dir: Path, devices: int) -> float:
    started = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bulk_devices.py"),
            "--data-dir",
            str(data_dir),
            "-n",
            str(devices),
        ],
        check=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("PN_")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.monotonic() - started


def scale(bench: Bench) -> None:
    sizes = bench.sizes
    counts = (SMALL_DEVICES, sizes.devices)
    dirs = {count: bench.data_dir(f"scale-{count}") for count in counts}
    took = {count: bulk_load(dirs[count], count) for count in counts}
    p50: dict[tuple[int, str], list[float]] = {}
    cpu_ms: dict[tuple[int, str], list[float]] = {}
    memory: dict[int, tuple[int, int, int]] = {}
    with (
        RelayProcess(dirs[counts[0]], bench.settings()) as small,
        RelayProcess(dirs[counts[1]], bench.settings()) as large,
    ):
        relays = {counts[0]: small, counts[1]: large}
        at_start = {count: relay.memory_kb("VmRSS") for count, relay in relays.items()}
        for _ in range(sizes.scale_rounds):
            for endpoint in ("register", "notify"):
                for count, relay in relays.items():
                    result, cpu = run_load(relay, endpoint, sizes.scale_requests, sizes.concurrency)
                    p50.setdefault((count, endpoint), []).append(result["p50_ms"])
                    cpu_ms.setdefault((count, endpoint), []).append(cpu.per(result["requests"]))
        for count, relay in relays.items():
            memory[count] = (at_start[count], relay.memory_kb("VmRSS"), relay.memory_kb("VmHWM"))
    big = counts[1]
    _, rss, hwm = memory[big]
    small_start, small_rss, small_hwm = memory[counts[0]]
    bench.rows.append(
        Row(
            f"{big:,} registered devices: relay memory",
            f"bulk-loaded in {took[big]:.0f} s (bench/bulk_devices.py), SQLite; after"
            f" {plural(sizes.scale_rounds, 'round')} of {sizes.scale_requests:,} registers and"
            " notifies."
            f" At start {memory[big][0] / 1024:.0f} MB; with {counts[0]:,} devices:"
            f" {small_start / 1024:.0f} MB at start, {small_rss / 1024:.0f} MB after,"
            f" peak {small_hwm / 1024:.0f} MB",
            f"RSS {rss / 1024:.0f} MB, peak (VmHWM) {hwm / 1024:.0f} MB",
            target="≤ 150 MB",
            met=verdict(hwm / 1024 <= 150),
        )
    )
    for endpoint in ("register", "notify"):
        small_p50 = statistics.median(p50[(counts[0], endpoint)])
        big_p50 = statistics.median(p50[(big, endpoint)])
        ratio = big_p50 / small_p50
        small_cpu = statistics.median(cpu_ms[(counts[0], endpoint)])
        big_cpu = statistics.median(cpu_ms[(big, endpoint)])
        bench.rows.append(
            Row(
                f"{endpoint} p50, {big:,} devices ÷ {counts[0]:,}",
                f"1 worker, SQLite, providers off; {sizes.scale_requests:,} requests over"
                f" {sizes.concurrency} connections, the two relays alternately, median of"
                f" {plural(sizes.scale_rounds, 'round')}",
                f"{ratio:.2f}{X}",
                f"p50 {ms(small_p50)} → {ms(big_p50)}",
                f"{small_cpu:.3f} → {big_cpu:.3f} ms per {endpoint} ({big_cpu / small_cpu:.2f}{X})",
                target=f"≤ 1.2{X}",
                met=verdict(ratio <= 1.2),
            )
        )


def group(bench: Bench) -> None:
    """Notifies to a 1,000-device group beside another client's registers: the registers'
    latency with and without them. Twice: pushed to the fake APNs (the real case), and with
    no provider (the deliveries are written, then dropped), which leaves the write path alone.
    """
    fakes_dir = Path(tempfile.mkdtemp(prefix="fakes-", dir=bench.workdir))
    with FakesProcess(fakes_dir) as fakes:
        group_case(bench, fakes)
        group_case(bench, None)


def group_case(bench: Bench, fakes: FakesProcess | None) -> None:
    sizes = bench.sizes
    group_notifies = max(1, round(sizes.group_seconds))  # one a second
    registers = round(sizes.register_rate * sizes.group_seconds)
    settings = fakes.settings if fakes is not None else {}
    with RelayProcess(bench.data_dir("group"), bench.settings(settings)) as relay:
        key = setup_group(relay.client(), "apns", members=sizes.group_members)
        register_argv = [
            *load_argv(relay, "register", registers, 8),
            "--rate",
            str(sizes.register_rate),
        ]
        (alone,), alone_cpu, _ = timed(relay, [Loader(register_argv, "registers alone")])
        notifier = Loader(
            [*load_argv(relay, "notify", group_notifies, 1), "--send-to", key, "--rate", "1"],
            "group notifies",
        )
        before: Callable[[], None] | None = None
        after: Callable[[list[dict[str, Any]]], Any] | None = None
        if fakes is not None:
            apns = RemoteFake(fakes.control_port, "apns")
            wanted = group_notifies * sizes.group_members
            before = apns.pushes.clear

            def after(_: list[dict[str, Any]]) -> int:
                return len(apns.pushes.wait_for(wanted, timeout=600))

        (notified, during), cpu, delivered = timed(
            relay, [notifier, Loader(register_argv, "registers")], before=before, after=after
        )
    pushes = (
        f"fake APNs (all {delivered:,} pushes delivered)"
        if fakes is not None
        else "no provider (deliveries written, then dropped: the write path alone)"
    )
    bench.rows.append(
        Row(
            f"register p99 beside notifies to a {sizes.group_members:,}-device group",
            f"1 worker, SQLite, {pushes}; a group notify a second for {group_notifies} s"
            f" (each answered in p50 {ms(notified['p50_ms'])}, at most"
            f" {ms(notified['max_ms'])}), another client's registers at"
            f" {sizes.register_rate:.0f}/s; the same registers alone before:"
            f" {p50_p99(alone)} (relay at {alone_cpu.busy()})",
            f"{during['rate']:,.0f} registers/s",
            p50_p99(during),
            cpu.busy(),
            target="p99 < 50 ms",
            met=verdict(during["p99_ms"] < 50),
        )
    )


SECTION_RUNNERS: dict[str, Callable[[Bench], None]] = {
    "crypto": crypto,
    "intake": intake,
    "push": push,
    "real": real,
    "postgres": postgres,
    "scale": scale,
    "group": group,
}


# -- the machine and BENCHMARKS.md ------------------------------------------------------------


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor() or "unknown",
    )
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "memory": f"{memory_kb / 1024 / 1024:.1f} GiB",
        "python": platform.python_version(),
    }


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=False, cwd=ROOT
        ).stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    return head + (" (with uncommitted changes)" if git("status", "--porcelain") else "")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def report(bench: Bench, started: datetime, load_before: str, command: str) -> str:
    facts = machine()
    return "\n".join(
        [
            f"Run on {started:%Y-%m-%d %H:%M} UTC, commit `{commit()}`:",
            "",
            "```sh",
            command,
            "```",
            "",
            f"- machine: {facts['cores']} cores ({facts['cpu']}), {facts['memory']} of memory,"
            f" Python {facts['python']}",
            f"- load average (1, 5, 15 min) before the run: {load_before}; after: {load_average()}",
            "- the relay, the fake APNs and FCM, the load generators"
            + (" and PostgreSQL" if "postgres" in bench.args.only else "")
            + f" all share these {facts['cores']} cores",
            "",
            table(bench.rows),
        ]
    )


BENCHMARKS_TEMPLATE = f"""# Benchmarks

The latest table from `python -m bench --write` (see bench/README.md).

{BEGIN}
{END}
"""


def write_benchmarks(path: Path, text: str) -> None:
    current = path.read_text() if path.exists() else BENCHMARKS_TEMPLATE
    if BEGIN not in current or END not in current:
        current = current.rstrip("\n") + "\n\n" + BEGIN + "\n" + END + "\n"
    head, rest = current.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


# -- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections, of: {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="N for the N-worker rows, if server.py has --workers (default: the core count)",
    )
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument(
        "--relay-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every relay started (PN_NAME=VALUE), e.g. EVENT_LOOP=asyncio;"
        " repeat for several",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help="also put the table, the machine, the commit and the command into --output",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown or not only:
        parser.error(f"--only: unknown section(s) {', '.join(unknown) or '(none given)'}")
    args.only = [name for name in SECTIONS if name in only]
    args.relay_settings = {}
    for pair in args.relay_setting:
        name, equals, value = pair.partition("=")
        name = name.strip().removeprefix("PN_")
        if not equals or not name:
            parser.error(f"--relay-setting: expected NAME=VALUE, got {pair!r}")
        args.relay_settings[name] = value
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    started = datetime.now(UTC)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="pn-bench-") as directory:
        bench = Bench(
            args=args,
            sizes=QUICK if args.quick else FULL,
            workdir=Path(directory),
            workers=args.workers if server_workers_option() else None,
        )
        for name in args.only:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            began = time.monotonic()
            try:
                SECTION_RUNNERS[name](bench)
            except (BenchError, subprocess.CalledProcessError, TimeoutError) as exc:
                bench.failed = True
                bench.rows.append(Row(name, "", f"failed: {exc}".replace("\n", " ")[:300]))
            print(
                f"bench: {name} done in {time.monotonic() - began:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    text = report(bench, started, load_before, command)
    print(text)
    if args.write:
        write_benchmarks(args.output, text)
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())
