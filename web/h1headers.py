"""A request's header block read into Tornado's HTTPHeaders, quicker than
`HTTPHeaders.parse` for the usual block and the same as it for every block.

The usual block: lines `Name: value` ending in CRLF, the name a token, the value (without
the spaces and tabs around it) visible characters (ASCII or the latin-1 bytes 0x80-0xFF)
with spaces or tabs between them, no name twice, then the empty line. One regular
expression checks the whole block and one collects its names and values, so no Python runs
per line but one `headers[name] = value`. Anything else (a bare LF, a folded line, a
missing colon, a control character, a name given twice) goes to `HTTPHeaders.parse`
itself, so what is accepted, how it reads and every error stay Tornado's.
"""

from __future__ import annotations

import re

from tornado.httputil import HTTPHeaders

# Possessive and atomic: a line has one way to match, so a line that does not is given up at
# once (a value of 60,000 spaces and then a control byte took seconds, backtracking).
_NAME = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]++"  # RFC 9110 token
_VISIBLE = r"[!-~\x80-\xff]"  # VCHAR or obs-text
_VALUE = rf"(?>{_VISIBLE}(?:[!-~\x80-\xff \t]*{_VISIBLE})?)?"
_LINE = re.compile(rf"({_NAME}):[ \t]*+({_VALUE})[ \t]*+\r\n")
_USUAL_BLOCK = re.compile(rf"(?:{_NAME}:[ \t]*+{_VALUE}[ \t]*+\r\n)*+\r\n")


def parse_headers(text: str, start: int) -> HTTPHeaders:
    """The headers of `text[start:]`, latin-1 decoded: the LF ending the request line (at
    `start`), then the header block up to and with the empty line ending it, as H1Server
    hands it to `HTTPHeaders.parse`. Raises Tornado's HTTPInputError as it does."""
    if _USUAL_BLOCK.fullmatch(text, start + 1):
        pairs = _LINE.findall(text, start + 1)
        headers = HTTPHeaders()
        for name, value in pairs:
            headers[name] = value
        if len(headers) == len(pairs):
            return headers
    return HTTPHeaders.parse(text[start:])
