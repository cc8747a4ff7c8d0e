"""The array literals storage/pgpipe.py builds for a run of notifies, read back by PostgreSQL:
every value arrives as it was sent (quotes, backslashes, braces, commas, NULLs, non-ASCII)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

from storage.pgpipe import bigint_array, bool_array, bytea_array, text_array
from tests.support import POSTGRES_URL_VARIABLE, postgres_base_url, postgres_schema_url

# PostgreSQL text cannot hold NUL; every other character may appear in a notify's data.
_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))


@pytest.fixture(scope="module")
def pg() -> Iterator[Connection]:
    base = postgres_base_url()
    if base is None:
        pytest.skip(f"PostgreSQL tests need {POSTGRES_URL_VARIABLE} (set by .ci/run)")
    for url in postgres_schema_url(base):
        engine = create_engine(url)
        with engine.connect() as connection:
            yield connection
        engine.dispose()


def _read_back(pg: Connection, literal: str, type_name: str) -> list[object]:
    return list(pg.execute(text(f"SELECT CAST(:v AS {type_name}[])"), {"v": literal}).scalar_one())


@settings(max_examples=60, deadline=None)
@given(values=st.lists(_TEXT, max_size=6))
def test_text_arrays_read_back_unchanged(pg: Connection, values: list[str]) -> None:
    assert _read_back(pg, text_array(values), "text") == values


@pytest.mark.parametrize(
    "values",
    [['a"b', "c\\d", "{x}", "a,b", "NULL", "", " lead", '\\\\"', "né ✓"]],
)
def test_text_arrays_with_the_literal_syntax_in_them(pg: Connection, values: list[str]) -> None:
    assert _read_back(pg, text_array(values), "text") == values


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.binary(max_size=40)), max_size=6))
def test_bytea_arrays_read_back_unchanged(pg: Connection, values: list[bytes | None]) -> None:
    assert _read_back(pg, bytea_array(values), "bytea") == values


@settings(max_examples=40, deadline=None)
@given(
    numbers=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=6),
    flags=st.lists(st.booleans(), max_size=6),
)
def test_bigint_and_bool_arrays_read_back_unchanged(
    pg: Connection, numbers: list[int], flags: list[bool]
) -> None:
    assert _read_back(pg, bigint_array(numbers), "bigint") == numbers
    assert _read_back(pg, bool_array(flags), "boolean") == flags
