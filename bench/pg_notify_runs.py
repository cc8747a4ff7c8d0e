"""PostgreSQL's CPU and the client's per notify: a batch's notifies as one statement, or one
statement each (the writer's `PgPipeline`, storage/pgpipe.py, without the relay around it).

    python bench/pg_notify_runs.py --postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/test

Registers one device for each of 1,000 Session IDs in a scratch schema, then sends `-n`
notifies in batches of `--batch` (each BEGIN .. COMMIT one round trip), alternately as runs
(NOTIFY_AT_ONCE over `--batch` rows) and one statement a notify (NOTIFY_ONE), for
`--rounds` rounds. Prints the PostgreSQL backend's CPU (from /proc: the server must be on
this machine) and this process's, per notify.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage.engine import create_schema, make_engine  # noqa: E402
from storage.pgpipe import PgPipeline  # noqa: E402
from storage.protect import IdentifierProtector  # noqa: E402
from storage.records import Provider  # noqa: E402
from storage.scratch_schema import scratch_schema  # noqa: E402
from storage.store import (  # noqa: E402
    RelayStore,
    Statements,
)
from storage.writer import BatchWriter  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    parser.add_argument("-n", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with scratch_schema(args.postgres_url, prefix="bench_runs_") as url:
        engine = make_engine(url, pool_size=2)
        create_schema(engine)
        writer = BatchWriter(engine)
        protector = IdentifierProtector(os.urandom(32), os.urandom(32))
        store = RelayStore(engine, writer, protector, lambda: int(time.time() * 1000))
        sessions = [os.urandom(33).hex() for _ in range(1000)]
        for session in sessions:
            writer.submit(store.register_op(os.urandom(32).hex(), session, Provider.APNS))
        writer.close()
        statement = Statements(engine).notify_at_once
        assert statement is not None
        raw = engine.raw_connection()
        raw.rollback()
        connection = raw.driver_connection
        connection.autocommit = True  # type: ignore[union-attr]
        pipeline = PgPipeline(connection)  # type: ignore[arg-type]
        backend = connection.info.backend_pid  # type: ignore[union-attr]
        targets = [protector.identity(s) for s in sessions]

        def batch(number: int, run: int) -> None:
            now = int(time.time() * 1000)
            rows = [
                (
                    targets[(number * args.batch + j) % 1000],
                    os.urandom(32),
                    now + 600_000,
                    True,
                    os.urandom(100).hex(),
                )
                for j in range(args.batch)
            ]
            scalars = {"now": now, "chunk": 500}
            if run == 1:  # NOTIFY_ONE, as the writer sends a run of one
                sent = [
                    (statement.one, statement.alone(scalars, row), pipeline.answer())
                    for row in rows
                ]
            else:
                sent = [
                    (
                        statement.statement,
                        statement.values(scalars, rows[i : i + run]),
                        pipeline.answer(),
                    )
                    for i in range(0, len(rows), run)
                ]
            pipeline.run(sent, transaction=True)
            for _, _, answer in sent:
                answer.rows()

        print("| notifies per statement | server CPU per notify | client CPU per notify |")
        print("|---|---|---|")
        for _ in range(args.rounds):
            for run in (args.batch, 1):
                server, client = cpu_seconds(backend), time.process_time()
                for number in range(args.n // args.batch):
                    batch(number, run)
                server, client = cpu_seconds(backend) - server, time.process_time() - client
                n = args.n // args.batch * args.batch
                print(f"| {run} | {1e6 * server / n:.0f} µs | {1e6 * client / n:.0f} µs |")
        raw.close()
        engine.dispose()


if __name__ == "__main__":
    main()
