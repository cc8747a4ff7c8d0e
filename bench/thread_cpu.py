"""Where a relay's CPU goes, thread by thread, under one notify load.

    python bench/thread_cpu.py             # 6,000 notifies at 600/s, each pushed to the fake APNs
    python bench/thread_cpu.py --rate 0    # the same, saturated (32 connections)
    python bench/thread_cpu.py --nopush    # providers off: the write path alone
    python bench/thread_cpu.py --set WRITE_GATHER=0.002  # a relay setting (PN_ prefix added)
    python bench/thread_cpu.py --attach "py-spy record -p {pid} -d 4 --threads -o spy.svg"

It starts the fakes (`python -m bench.fakes`) and one relay (`python server.py`) as
`python -m bench` does, runs bench/load.py against it, and prints each thread's CPU per
notify (user and system, from /proc/<pid>/task/*/stat, before the load starts and after
the last push arrived) and their total. `--attach` runs a command (its `{pid}` replaced by
the relay's) a second into the load: a profiler, `perf stat`, `strace -c`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fakes import RemoteFake  # noqa: E402
from bench.procs import FakesProcess, Loader, RelayProcess, load_argv  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")

#: thread id -> (name, user seconds, system seconds)
Threads = dict[str, tuple[str, float, float]]


def threads(pid: int) -> Threads:
    found: Threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if tid == str(pid):
            name = "main (the loop)"  # Python 3.11 does not name its threads for the OS
        found[tid] = (name, int(fields[11]) / TICK, int(fields[12]) / TICK)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=600, help="notifies/s; 0 saturates")
    parser.add_argument("-n", type=int, default=6000, help="notifies (default 6,000)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--nopush", action="store_true", help="no provider configured")
    parser.add_argument("--attach", help="a command to run during the load; {pid} is the relay")
    parser.add_argument(
        "--warm",
        type=int,
        default=0,
        metavar="N",
        help="first N saturating notifies, not measured (as python -m bench runs its paced"
        " load after a saturated one on the same relay)",
    )
    args = parser.parse_args()
    settings = dict(pair.split("=", 1) for pair in args.set)
    work = Path(tempfile.mkdtemp(prefix="thread-cpu-"))
    (work / "fakes").mkdir()
    with FakesProcess(work / "fakes") as fakes:
        apns = RemoteFake(fakes.control_port, "apns")
        relay_settings = {} if args.nopush else dict(fakes.settings)
        with RelayProcess(work / "relay", {**relay_settings, **settings}) as relay:
            pid = relay.process.pid
            if args.warm:
                warm = Loader(load_argv(relay, "notify", args.warm, 32), "notify")
                warm.wait_ready()
                apns.pushes.clear()
                warm.go()
                warm.result()
                if not args.nopush:
                    apns.pushes.wait_for(args.warm, timeout=600)
                warm.stop()
            pace = ["--rate", str(args.rate)] if args.rate else []
            loader = Loader([*load_argv(relay, "notify", args.n, 32), *pace], "notify")
            loader.wait_ready()
            apns.pushes.clear()
            before, started = threads(pid), time.monotonic()
            loader.go()
            attached = None
            if args.attach:
                time.sleep(1)
                attached = subprocess.Popen(args.attach.format(pid=pid), shell=True)
            result = loader.result()
            if not args.nopush:
                apns.pushes.wait_for(args.n, timeout=600)
            seconds = time.monotonic() - started
            after = threads(pid)
            if attached is not None:
                attached.wait()
            loader.stop()
    total = 0.0
    per = 1000 / args.n
    for tid, (name, user, system) in sorted(after.items(), key=lambda kv: -sum(kv[1][1:])):
        _, user_before, system_before = before.get(tid, (name, 0.0, 0.0))
        used_user, used_system = user - user_before, system - system_before
        total += used_user + used_system
        if used_user + used_system > 0.005:
            print(
                f"  {name:16s} {tid:>8s}  {(used_user + used_system) * per:.3f} ms per notify"
                f"  (user {used_user * per:.3f}, system {used_system * per:.3f})"
            )
    print(
        f"total {total * per:.3f} ms per notify; {args.n / seconds:,.0f} notifies/s over"
        f" {seconds:.1f} s; answered p50 {result['p50_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
