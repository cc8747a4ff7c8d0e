"""web/h1headers.py `parse_headers` against Tornado's `HTTPHeaders.parse` on header blocks of
every shape: the same names, values and order, or the same error."""

from __future__ import annotations

import time

import pytest
from tornado.httputil import HTTPHeaders, HTTPInputError

from web.h1headers import parse_headers

USUAL = [
    b"\r\n",
    b"Host: relay\r\n\r\n",
    b"Host: relay\r\nContent-Length: 12\r\nUser-Agent: x/1 (y; z)\r\n\r\n",
    b"X-Empty:\r\nX-Spaces:   \r\nX-Tab:\t\r\n\r\n",
    b"X-B:\tb \t\r\nX-C:  c  d  \r\nX-D:e\r\nX-T: a\tb\r\n\r\n",
    b"X-High: caf\xe9 \xff\x80\r\n\r\n",
    b"X-Url: http://a:b/c?d=e:f\r\n\r\n",
    b"x-lower: 1\r\nX-UPPER: 2\r\ncontent-TYPE: text/plain\r\n\r\n",
    b"".join(b"X-N%d: %d\r\n" % (i, i) for i in range(500)) + b"\r\n",
    b"!#$%&'*+-.^_`|~09azAZ: !~\r\n\r\n",
]
UNUSUAL = [
    b"X-Dup: 1\r\nx-dup: 2\r\nX-DUP:\r\n\r\n",
    b"".join(b"X-Same: %d\r\n" % i for i in range(200)) + b"\r\n",
    b"Host: relay\nX-A: b\r\n\r\n",
    b"Host: relay\r\nX-A: b\n\r\n",
    b"Host: relay\r\nX-A: b\r\n\n",
    b"Host: relay\n\n",
    b"X-A: one\r\n two\r\n\r\n",
    b"X-A: one\r\n\ttwo\r\n\r\n",
    b" Host: relay\r\n\r\n",
    b"X-A : b\r\n\r\n",
    b"X-A: b\r\nNoColon\r\nX-C: d\r\n\r\n",
    b": x\r\n\r\n",
    b"X-\xe9: 1\r\n\r\n",
    b"X-A: a\x01b\r\n\r\n",
    b"X-A: \x00\r\n\r\n",
    b"X-A: a\x7f\r\n\r\n",
    b"X-A: b\rc\r\n\r\n",
    b"X-A: b\r\r\n\r\n",
    b"X-A: b\r\n\r\n\r\n",
]


# `text`: the end of the request line, then the header block, as H1Server hands them over.


def tornado_reads(text: str) -> tuple[list[tuple[str, str]], dict[str, str]] | str:
    try:
        headers = HTTPHeaders.parse(text[text.index("\n") :])
    except HTTPInputError as exc:
        return f"HTTPInputError: {exc}"
    return list(headers.get_all()), dict(headers.items())


def we_read(text: str) -> tuple[list[tuple[str, str]], dict[str, str]] | str:
    try:
        headers = parse_headers(text, text.index("\n"))
    except HTTPInputError as exc:
        return f"HTTPInputError: {exc}"
    return list(headers.get_all()), dict(headers.items())


@pytest.mark.parametrize("block", USUAL + UNUSUAL)
@pytest.mark.parametrize("request_line_end", [b"\r\n", b"\n"])
def test_read_as_tornado_reads_it(block: bytes, request_line_end: bytes) -> None:
    text = (request_line_end + block).decode("latin1")
    assert we_read(text) == tornado_reads(text)


@pytest.mark.parametrize("block", USUAL)
def test_a_usual_block_is_read_without_tornados_parser(
    block: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (b"\r\n" + block).decode("latin1")
    expected = tornado_reads(text)

    def refused(cls: type[HTTPHeaders], headers: str) -> HTTPHeaders:
        raise AssertionError("HTTPHeaders.parse called")

    monkeypatch.setattr(HTTPHeaders, "parse", classmethod(refused))
    assert we_read(text) == expected


def test_the_headers_after_a_usual_block_behave_as_tornados() -> None:
    text = "\r\nHost: relay\r\ncontent-length: 3\r\n\r\n"
    headers = parse_headers(text, 1)
    headers.add("X-Added", "1")
    headers.add("host", "other")
    assert headers["Content-Length"] == "3"
    assert headers["Host"] == "relay,other"
    assert headers.get_list("HOST") == ["relay", "other"]
    assert list(headers) == ["Host", "Content-Length", "X-Added"]


LONG = 60_000  # under H1Server's 64 KiB header limit
BACKTRACKING = [
    b"X:" + b" " * LONG + b"\x01\r\n\r\n",
    b"X:" + b"\t " * (LONG // 2) + b"a\r\r\n\r\n",
    b"X: a" + b" " * LONG + b"\x01\r\n\r\n",
    b"X: a" + b" a" * (LONG // 2) + b"\x01\r\n\r\n",
    b"X: y\r\n" * (LONG // 6) + b"Z\r\n\r\n",
]


@pytest.mark.parametrize("block", BACKTRACKING, ids=range(len(BACKTRACKING)))
def test_a_long_line_that_is_not_usual_is_given_up_at_once(block: bytes) -> None:
    """The block's expressions cannot backtrack: a value of 60,000 spaces then a control byte
    took 3.7 s to refuse with plain greedy quantifiers (quadratic); now a few ms, as Tornado."""
    text = (b"\r\n" + block).decode("latin1")
    started = time.perf_counter()
    ours = we_read(text)
    seconds = time.perf_counter() - started
    assert ours == tornado_reads(text)
    assert seconds < 1.0
