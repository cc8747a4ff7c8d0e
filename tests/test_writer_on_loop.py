"""The writer's loop path (BatchWriter(on_loop=True), SQLite with one worker): a small batch of
the loop's writes runs on the loop's own thread; a large one, or any while the writer thread
is in a transaction or still holds earlier loop writes, goes to the thread. Every write still
commits before its future resolves, in the order the loop made them, failures stay isolated,
and none is lost at close."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from storage.engine import create_schema, make_engine
from storage.schema import schema_meta
from storage.sql import Prepared, Tx
from storage.writer import GATHER_ENOUGH, BatchWriter, StorageError
from tests import loops


@pytest.fixture
def sqlite_engine(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'relay.sqlite3'}", pool_size=4)
    create_schema(engine)
    yield engine
    engine.dispose()


MakeWriter = Callable[..., tuple[BatchWriter, "Recorder"]]


@pytest.fixture
def make_writer(sqlite_engine: Any) -> Iterator[MakeWriter]:
    """BatchWriter(sqlite_engine, gather_s, on_loop) and a Recorder; every writer made is
    closed at the test's end (close() again is nothing)."""
    made: list[BatchWriter] = []

    def make(gather_s: float, *, on_loop: bool = True) -> tuple[BatchWriter, Recorder]:
        writer = BatchWriter(sqlite_engine, gather_s=gather_s, on_loop=on_loop)
        made.append(writer)
        return writer, Recorder(sqlite_engine)

    yield make
    for writer in made:
        writer.close()


def keys(engine: Any) -> list[str]:
    with engine.connect() as conn:
        found = conn.execute(select(schema_meta.c.key).order_by(schema_meta.c.value))
        return [row[0] for row in found if row[0] != "schema_version"]  # create_schema's


class Recorder:
    """Operations inserting a key (value: a sequence number, the commit order) and noting the
    thread each ran on."""

    def __init__(self, engine: Any) -> None:
        self.statement = Prepared.compile(insert(schema_meta), engine.dialect, ["key", "value"])
        self.threads: dict[str, str] = {}
        self.sequence = 0

    def op(self, key: str) -> Callable[[Tx], str]:
        def operation(tx: Tx) -> str:
            self.threads[key] = threading.current_thread().name
            self.sequence += 1
            tx.execute(self.statement, {"key": key, "value": f"{self.sequence:06d}"})
            return key

        return operation


def test_a_small_batch_commits_on_the_loop_thread(
    sqlite_engine: Any, make_writer: MakeWriter
) -> None:
    writer, recorder = make_writer(0.004)

    async def main() -> list[str]:
        futures = [
            writer.submit_on_loop(recorder.op(f"k{n}"), asyncio.get_running_loop())
            for n in range(3)
        ]
        return list(await asyncio.gather(*futures))

    loop_thread = threading.current_thread().name
    assert loops.run(main()) == ["k0", "k1", "k2"]
    assert set(recorder.threads.values()) == {loop_thread}
    assert keys(sqlite_engine) == ["k0", "k1", "k2"]  # committed: another connection sees them
    assert writer.commits == 1


def test_a_batch_of_gather_enough_goes_to_the_writer_thread(
    sqlite_engine: Any, make_writer: MakeWriter
) -> None:
    writer, recorder = make_writer(0.004)
    count = GATHER_ENOUGH + 2

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(writer.submit_on_loop(recorder.op(f"k{n}"), loop) for n in range(count))
        )

    loops.run(main())
    assert set(recorder.threads.values()) == {"db-writer"}
    assert keys(sqlite_engine) == [f"k{n}" for n in range(count)]


def test_while_the_thread_writes_the_loop_hands_over_and_order_is_kept(sqlite_engine: Any) -> None:
    """A thread's operation holds the writer thread inside its transaction: the loop's writes
    meanwhile go to the thread (the loop never waits for SQLite's lock), and later small
    batches follow them there until they are answered, so they commit in the order made."""
    writer = BatchWriter(sqlite_engine, gather_s=0.0, on_loop=True)
    recorder = Recorder(sqlite_engine)
    inside, release = threading.Event(), threading.Event()

    def slow(tx: Tx) -> str:
        inside.set()
        release.wait(10)
        return recorder.op("thread")(tx)

    held = writer.submit_async(slow)
    assert inside.wait(10)

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        first = writer.submit_on_loop(recorder.op("a"), loop)
        await asyncio.sleep(0.02)  # its batch was handed to the busy thread
        second = writer.submit_on_loop(recorder.op("b"), loop)
        await asyncio.sleep(0.02)
        assert not first.done() and not second.done()
        release.set()
        return list(await asyncio.gather(first, second))

    try:
        assert loops.run(main()) == ["a", "b"]
        assert held.result(10) == "thread"
        assert keys(sqlite_engine) == ["thread", "a", "b"]
        assert recorder.threads["a"] == recorder.threads["b"] == "db-writer"
    finally:
        release.set()
        writer.close()


def test_a_failing_operation_fails_alone_on_the_loop(
    sqlite_engine: Any, make_writer: MakeWriter
) -> None:
    writer, recorder = make_writer(0.004)

    def duplicate(tx: Tx) -> str:
        recorder.op("same")(tx)
        return recorder.op("same")(tx)  # the primary key refuses it

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        futures = [
            writer.submit_on_loop(recorder.op("before"), loop),
            writer.submit_on_loop(duplicate, loop),
            writer.submit_on_loop(recorder.op("after"), loop),
        ]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    before, failed, after = loops.run(main())
    assert (before, after) == ("before", "after")
    assert isinstance(failed, StorageError)
    assert sorted(keys(sqlite_engine)) == ["after", "before"]
    assert writer.failures == 1


def test_writes_still_gathering_at_close_are_committed(sqlite_engine: Any) -> None:
    writer = BatchWriter(sqlite_engine, gather_s=0.05, on_loop=True)
    recorder = Recorder(sqlite_engine)
    loop = loops.new_loop()
    try:

        async def submit() -> None:
            # busy (a commit just now): the next writes wait out the gather window
            await writer.submit_on_loop(recorder.op("first"), asyncio.get_running_loop())
            writer.submit_on_loop(recorder.op("late"), asyncio.get_running_loop())

        loop.run_until_complete(submit())
    finally:
        loop.close()
    writer.close()  # the loop is gone, its gather timer never fired
    assert sorted(keys(sqlite_engine)) == ["first", "late"]


def test_without_on_loop_every_write_runs_on_the_thread(
    sqlite_engine: Any, make_writer: MakeWriter
) -> None:
    writer, recorder = make_writer(0.004, on_loop=False)

    async def main() -> None:
        await writer.submit_on_loop(recorder.op("k"), asyncio.get_running_loop())

    loops.run(main())
    assert recorder.threads == {"k": "db-writer"}


@pytest.mark.parametrize("rounds", [40])
def test_loop_and_threads_writing_together_lose_nothing(
    sqlite_engine: Any, make_writer: MakeWriter, rounds: int
) -> None:
    """Threads submitting beside the loop: the two take turns, every write commits once."""
    writer, recorder = make_writer(0.002)
    stop = threading.Event()

    def from_thread(worker: int) -> None:
        for n in range(rounds):
            writer.submit(recorder.op(f"t{worker}-{n}"))
        stop.set()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        futures = []
        for n in range(rounds * 3):
            futures.append(writer.submit_on_loop(recorder.op(f"l{n}"), loop))
            if n % 7 == 0:
                await asyncio.sleep(0.001)
        await asyncio.gather(*futures)

    threads = [threading.Thread(target=from_thread, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    loops.run(main())
    for thread in threads:
        thread.join(30)
    expected = {f"t{w}-{n}" for w in range(3) for n in range(rounds)}
    expected |= {f"l{n}" for n in range(rounds * 3)}
    assert sorted(keys(sqlite_engine)) == sorted(expected)
    loop_made = [key for key in keys(sqlite_engine) if key.startswith("l")]
    assert loop_made == [f"l{n}" for n in range(rounds * 3)]  # in the order made


def test_a_lock_held_elsewhere_never_stalls_the_loop(sqlite_engine: Any, tmp_path: Path) -> None:
    """Another connection (as the health probe or the statistics roll-up) holds SQLite's write
    lock: the loop's batch is not waited for on the loop, but handed to the thread, which
    commits it once the lock is free; the loop keeps turning meanwhile."""
    import sqlite3

    writer = BatchWriter(sqlite_engine, gather_s=0.0, on_loop=True)
    recorder = Recorder(sqlite_engine)
    other = sqlite3.connect(tmp_path / "relay.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")

    async def main() -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        written = writer.submit_on_loop(recorder.op("k"), loop)
        ticks = 0
        for _ in range(20):  # 0.2 s of a turning loop while the lock is held
            await asyncio.sleep(0.01)
            ticks += 1
        assert not written.done()
        other.execute("COMMIT")
        return await asyncio.wait_for(written, 10), ticks

    try:
        assert loops.run(main()) == ("k", 20)
        assert recorder.threads["k"] == "db-writer"
        assert keys(sqlite_engine) == ["k"]
    finally:
        other.close()
        writer.close()


def test_an_operation_on_thread_takes_the_writes_made_before_it_along(
    sqlite_engine: Any, make_writer: MakeWriter
) -> None:
    """`on_thread` (a claim, a large settlement, a fan-out's next chunk): the operation runs on
    the writer thread, never holding the loop, and the loop's writes gathered before it go
    with it, so they still commit in the order made."""
    writer, recorder = make_writer(0.05)

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        await writer.submit_on_loop(recorder.op("first"), loop)  # now busy: the next ones gather
        before = writer.submit_on_loop(recorder.op("before"), loop)
        heavy = writer.submit_on_loop(recorder.op("heavy"), loop, on_thread=True)
        return list(await asyncio.gather(before, heavy))

    assert loops.run(main()) == ["before", "heavy"]
    assert recorder.threads["before"] == recorder.threads["heavy"] == "db-writer"
    assert keys(sqlite_engine) == ["first", "before", "heavy"]
