"""The group-commit writer: batching, isolation of a failing operation, shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import bindparam, func, select

from storage.engine import create_schema, make_engine
from storage.schema import schema_meta
from storage.sql import Prepared, Tx
from storage.writer import GATHER_ENOUGH, BatchWriter, StorageError, WriterClosedError
from tests import loops


@pytest.fixture
def engine_and_insert(database_url: str):
    engine = make_engine(database_url, pool_size=4)
    create_schema(engine)
    from sqlalchemy import insert

    insert_meta = Prepared.compile(insert(schema_meta), engine.dialect, ["key", "value"])
    yield engine, insert_meta
    engine.dispose()


def inserter(insert_meta: Prepared, key: str) -> Callable[[Tx], int]:
    return lambda tx: tx.execute(insert_meta, {"key": key, "value": "v"})


def rows(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(schema_meta)).scalar_one())


def test_concurrent_writes_are_batched_and_all_committed(engine_and_insert) -> None:
    engine, insert_meta = engine_and_insert
    writer = BatchWriter(engine, max_batch=64)
    batch_sizes: list[int] = []
    original = writer._transaction

    def spy(operations):
        batch_sizes.append(len(operations))
        return original(operations)

    writer._transaction = spy  # type: ignore[method-assign]
    barrier = threading.Barrier(16)

    def work(worker: int) -> None:
        barrier.wait()
        for index in range(25):
            writer.submit(inserter(insert_meta, f"w{worker}-{index}"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    assert rows(engine) == 1 + 16 * 25  # plus the schema_version row
    assert sum(batch_sizes) == 16 * 25
    assert max(batch_sizes) > 1  # commits were shared


def test_a_failing_operation_does_not_fail_its_batch(engine_and_insert) -> None:
    engine, insert_meta = engine_and_insert
    writer = BatchWriter(engine)
    release = threading.Event()
    blocker = writer.submit_async(lambda tx: release.wait(5))  # holds the writer busy
    good = [writer.submit_async(inserter(insert_meta, f"k{n}")) for n in range(5)]
    duplicate = writer.submit_async(
        lambda tx: tx.execute(insert_meta, {"key": "schema_version", "value": ""})
    )

    def boom(tx: Tx) -> None:
        raise ValueError("not a database error")

    broken = writer.submit_async(boom)
    release.set()
    assert blocker.result(10) is True
    assert [f.result(10) for f in good] == [1] * 5
    with pytest.raises(StorageError, match=r"IntegrityError|UniqueViolation"):
        duplicate.result(10)
    with pytest.raises(ValueError, match="not a database error"):
        broken.result(10)
    writer.close()
    assert rows(engine) == 6


def test_loop_submissions_resolve_on_the_loop(engine_and_insert) -> None:
    engine, insert_meta = engine_and_insert
    writer = BatchWriter(engine)

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        futures = [writer.submit_on_loop(inserter(insert_meta, f"a{n}"), loop) for n in range(50)]
        return list(await asyncio.gather(*futures))

    assert loops.run(main()) == [1] * 50
    writer.close()


def test_close_finishes_queued_work_then_refuses(engine_and_insert, tmp_path: Path) -> None:
    engine, insert_meta = engine_and_insert
    writer = BatchWriter(engine)
    futures = [writer.submit_async(inserter(insert_meta, f"c{n}")) for n in range(20)]
    writer.close()
    assert all(f.result(0) == 1 for f in futures)
    with pytest.raises(WriterClosedError):
        writer.submit(lambda tx: None)


def test_expired_dedup_fingerprints_are_purged(tmp_path: Path) -> None:
    from storage.protect import IdentifierProtector
    from storage.schema import notify_dedup
    from storage.store import RelayStore

    engine = make_engine(f"sqlite:///{tmp_path / 'd.sqlite3'}", pool_size=2)
    create_schema(engine)
    writer = BatchWriter(engine)
    clock = [1_000_000]
    store = RelayStore(engine, writer, IdentifierProtector(b"i" * 32, b"t" * 32), lambda: clock[0])
    from storage.records import Provider

    session = "05" + "ab" * 32
    writer.submit(store.register_op("cd" * 32, session, Provider.APNS))
    for n in range(3):
        writer.submit(store.enqueue_notification_op(session, f"QUJ{n}", dedup_window_ms=1000))
    clock[0] += 500
    assert writer.submit(store.purge_expired_dedup_op()) == 0  # still inside the window
    clock[0] += 600
    assert writer.submit(store.purge_expired_dedup_op()) == 3
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(notify_dedup)).scalar_one() == 0
    writer.close()
    engine.dispose()


def test_a_busy_writer_gathers_writes_arriving_within_its_window(engine_and_insert) -> None:
    """WRITE_GATHER: right after a commit, a write waits for others to join its transaction."""
    engine, insert_meta = engine_and_insert
    writer = BatchWriter(engine, gather_s=2.0)  # wide: the second write is due after 0.05 s
    before = rows(engine)
    writer.submit(inserter(insert_meta, "warm"))  # a commit just now: the writer is busy
    commits = writer.commits
    first = writer.submit_async(inserter(insert_meta, "first"))
    threading.Event().wait(0.05)
    second = writer.submit_async(inserter(insert_meta, "second"))
    first.result(timeout=30)
    second.result(timeout=30)
    assert writer.commits == commits + 1  # both in one transaction
    assert rows(engine) == before + 3
    writer.close()


def test_a_busy_writer_stops_gathering_once_its_batch_is_large_enough(
    engine_and_insert,
) -> None:
    """GATHER_ENOUGH: a batch that already has that many writes commits without waiting out
    the gather (an hour here, so waiting it out would miss the 30 s bound)."""
    engine, insert_meta = engine_and_insert
    writer = BatchWriter(engine, gather_s=3600.0)
    writer.submit(inserter(insert_meta, "warm"))  # a commit just now: the writer is busy
    commits = writer.commits
    futures = [writer.submit_async(inserter(insert_meta, f"w{n}")) for n in range(GATHER_ENOUGH)]
    for future in futures:
        future.result(timeout=30)
    assert writer.commits == commits + 1  # all in one transaction, at once
    writer.close()


def test_an_idle_writer_commits_at_once(engine_and_insert) -> None:
    """A write to a writer that has not committed lately does not wait for company: with a
    gather of an hour, it would otherwise not be answered within the 30 s bound here."""
    engine, insert_meta = engine_and_insert
    writer = BatchWriter(engine, gather_s=3600.0 / 5)  # busy means "committed within an hour"
    assert writer.submit_async(inserter(insert_meta, "alone")).result(timeout=30) == 1
    writer.close()


def test_insert_returns_the_id_of_the_row_it_wrote(database_url: str) -> None:
    """Tx.insert: the new row's id, by RETURNING (PostgreSQL) or lastrowid (SQLite)."""
    from storage.protect import IdentifierProtector
    from storage.schema import notifications
    from storage.store import RelayStore

    engine = make_engine(database_url, pool_size=2)
    create_schema(engine)
    writer = BatchWriter(engine)
    store = RelayStore(engine, writer, IdentifierProtector(b"i" * 32, b"t" * 32), lambda: 0)
    statement = store._sql.insert_notification

    def insert_three(tx: Tx) -> list[int]:
        return [
            tx.insert(statement, {"data": f"d{n}", "created_at": n, "ready": True})
            for n in range(3)
        ]

    first, second = writer.submit(insert_three), writer.submit(insert_three)
    with engine.connect() as conn:
        written = dict(conn.execute(select(notifications.c.id, notifications.c.data)).all())
    assert len(set(first + second)) == 6
    assert {i: written[i] for i in first + second} == {
        i: f"d{n % 3}" for n, i in enumerate(first + second)
    }
    writer.close()
    engine.dispose()


def test_a_bound_statement_takes_its_own_literals_and_the_values_given(
    database_url: str,
) -> None:
    """Prepared.bind: a literal the statement carries is sent with the caller's values, in
    the order the SQL names them, whatever the order of the mapping."""
    from sqlalchemy import insert, literal, update

    engine = make_engine(database_url, pool_size=2)
    create_schema(engine)
    put = Prepared.compile(insert(schema_meta), engine.dialect, ["key", "value"])
    # `value` comes from a literal of the statement; `key` from the caller.
    stamp = Prepared.compile(
        update(schema_meta)
        .where(schema_meta.c.key == bindparam("which"))
        .values(value=literal("stamped")),
        engine.dialect,
    )
    assert put.defaults == {}  # a required parameter's placeholder is no default
    assert list(stamp.defaults.values()) == ["stamped"]
    writer = BatchWriter(engine)
    writer.submit(lambda tx: tx.execute(put, {"key": "one", "value": "a"}))
    writer.submit(lambda tx: tx.execute(put, {"value": "b", "key": "two"}))
    assert writer.submit(lambda tx: tx.execute(stamp, {"which": "two"})) == 1
    with engine.connect() as conn:
        found = dict(
            conn.execute(
                select(schema_meta.c.key, schema_meta.c.value).where(
                    schema_meta.c.key.in_(["one", "two"])
                )
            ).all()
        )
    assert found == {"one": "a", "two": "stamped"}
    writer.close()
    engine.dispose()
