"""The onion paths, and the spellings of them that must not reach any other route.

Service nodes POST to exactly `/loki/v2/lsrpc` or `/oxen/v4/lsrpc`. Any other spelling that
a web framework could route to the same place (percent-escapes, repeated or trailing
slashes, dot segments, another case) is an alias, refused before routing.
"""

from __future__ import annotations

from urllib.parse import unquote

V2_PATH = "/loki/v2/lsrpc"
V4_PATH = "/oxen/v4/lsrpc"
ONION_PATHS = (V2_PATH, V4_PATH)

#: Percent-decoding rounds: enough for double and triple encoding, bounded for speed.
_DECODE_ROUNDS = 4


def canonical_path(path: str) -> str:
    """`path` decoded (repeatedly), slashes merged, dot segments resolved, case folded."""
    text = path
    for _ in range(_DECODE_ROUNDS):
        decoded = unquote(text, errors="replace")
        if decoded == text:
            break
        text = decoded
    segments: list[str] = []
    for raw in text.replace("\\", "/").split("/"):
        segment = raw.strip()
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments).casefold()


_CANONICAL_ONION_PATHS = frozenset(canonical_path(p) for p in ONION_PATHS)


def is_onion_alias(path: str) -> bool:
    """True for another spelling of an onion path (never for the exact paths themselves)."""
    return path not in ONION_PATHS and canonical_path(path) in _CANONICAL_ONION_PATHS
