"""The SQLite notify write alone: the writer thread's CPU per notify, in process, no HTTP.

A store, its BatchWriter and the relay's notify rate limit on a fresh SQLite file (the relay's
engine: WAL, SQLITE_SYNCHRONOUS=FULL), `--recipients` Session IDs with one device each; then
`-n` notifies (distinct data, the relay's 600 s dedup window), submitted `--batch` at a time
and each batch awaited, so that every transaction holds `--batch` notifies (at a steady 600/s
the relay commits one to three a transaction). The figure is the writer thread's own CPU
(user + system, its thread clock; system time from /proc) over the notifies, divided by `-n`.
Rounds alternate the trees given (`--tree`, default this one), so that two builds are compared
paired and interleaved on the same machine:

    python bench/write_path.py --rounds 4 --batch 1,4 --tree /tmp/base --tree .
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def _thread_stime(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def measure(n: int, batch: int, recipients: int) -> dict[str, float]:
    """One fresh database, one batch size: the writer thread's CPU per notify (ms)."""
    engine_mod = importlib.import_module("storage.engine")
    store_mod = importlib.import_module("storage.store")
    writer_mod = importlib.import_module("storage.writer")
    protect_mod = importlib.import_module("storage.protect")
    records = importlib.import_module("storage.records")
    limit_mod = importlib.import_module("handlers.notify_limit")
    with tempfile.TemporaryDirectory(prefix="pn-write-path-") as tmp:
        engine = engine_mod.make_engine(f"sqlite:///{tmp}/relay.sqlite3", pool_size=2)
        engine_mod.create_schema(engine)
        writer = writer_mod.BatchWriter(engine)
        protector = protect_mod.IdentifierProtector(os.urandom(32), os.urandom(32))
        store = store_mod.RelayStore(engine, writer, protector, lambda: time.time_ns() // 1_000_000)
        sessions = ["05" + os.urandom(32).hex() for _ in range(recipients)]
        for session in sessions:
            writer.submit(store.register_op(os.urandom(32).hex(), session, records.Provider.APNS))
        limit = limit_mod.NotifyRateLimit(120, 60)
        payloads = [base64.b64encode(os.urandom(300)).decode() for _ in range(n)]
        tid = writer._thread.native_id
        clock = time.pthread_getcpuclockid(writer._thread.ident)
        ops = [
            store.enqueue_notification_op(
                sessions[i % recipients], payloads[i], dedup_window_ms=600_000, admission=limit
            )
            for i in range(n)
        ]
        cpu0, sys0, wall0 = time.clock_gettime(clock), _thread_stime(tid), time.monotonic()
        queued = 0
        for start in range(0, n, batch):
            futures = [writer.submit_async(op) for op in ops[start : start + batch]]
            queued += sum(f.result().deliveries for f in futures)
        cpu, stime = time.clock_gettime(clock) - cpu0, _thread_stime(tid) - sys0
        wall = time.monotonic() - wall0
        writer.close()
        engine.dispose()
    if queued != n:
        raise SystemExit(f"expected {n} deliveries, got {queued}")
    return {"cpu_ms": cpu / n * 1000, "sys_ms": stime / n * 1000, "rate": n / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=4000, help="notifies per measurement")
    parser.add_argument("--batch", default="1,4", help="notifies per transaction, comma list")
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tree", action="append", help="a source tree to measure (repeatable)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    if args.one:  # a child: measure the tree first on sys.path, print JSON
        print(json.dumps([measure(args.n, b, args.recipients) for b in batches]))
        return
    trees = [str(Path(t).resolve()) for t in (args.tree or [str(HERE)])]
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for round_number in range(args.rounds):
        order = trees if round_number % 2 == 0 else list(reversed(trees))
        for tree in order:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    "-n",
                    str(args.n),
                    "--batch",
                    args.batch,
                    "--recipients",
                    str(args.recipients),
                ],
                check=True,
                capture_output=True,
                text=True,
                cwd=tree,
                env={**os.environ, "PYTHONPATH": tree},
            ).stdout
            for b, figures in zip(batches, json.loads(out), strict=True):
                results.setdefault((tree, b), []).append(figures)
                print(
                    f"round {round_number + 1} {tree} batch {b}: {figures['cpu_ms']:.3f} ms"
                    f" ({figures['sys_ms']:.3f} sys), {figures['rate']:.0f}/s",
                    file=sys.stderr,
                )
    print("| tree | notifies a transaction | writer CPU per notify, ms (rounds) | of it system |")
    print("|---|---|---|---|")
    for (tree, b), runs in results.items():
        cpus = ", ".join(f"{r['cpu_ms']:.3f}" for r in runs)
        syss = ", ".join(f"{r['sys_ms']:.3f}" for r in runs)
        print(f"| {tree} | {b} | {cpus} | {syss} |")


if __name__ == "__main__":
    main()
