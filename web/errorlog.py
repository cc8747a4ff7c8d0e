"""One log line per kind of error and interval, instead of one (or a traceback) per request.

A client can make the relay fail the same way thousands of times a second; the operator needs
to know that it happens, where, and how often, not thousands of identical lines. The first
occurrence of a kind is logged at once; later ones within `interval_s` are only counted, and
the next line logged for that kind says how many were left out.

Lines name the exception type and where it was raised (file, line, function: code locations,
never data), not its message: a message can quote request data (PROTOCOL.md: no Session ID,
token or message content in any log).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Callable

DEFAULT_INTERVAL_S = 60.0


def raised_at(exc: BaseException) -> str:
    """`file.py:123 in function` of the innermost frame of `exc`'s traceback, or ''."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f"{os.path.basename(last.filename)}:{last.lineno} in {last.name}"


class RateLimitedLog:
    """Thread-safe: the web threads and the IOLoop share one."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def _admit(self, key: str) -> int | None:
        """None to stay silent; else how many lines of this kind were left out before it."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._suppressed.pop(key, 0)

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """Log `message % args` unless a line of this `key` was logged within the interval.

        Returns whether it was logged. `key` should be a fixed word, never request data.
        """
        left_out = self._admit(key)
        if left_out is None:
            return False
        if left_out:
            message += " (%d more like it since the last report)"
            args = (*args, left_out)
        self._logger.log(level, message, *args)
        return True

    def unexpected(self, exc: BaseException, during: str) -> bool:
        """One ERROR line for an exception nobody expected; `during` is fixed text."""
        kind = type(exc).__name__
        where = raised_at(exc)
        return self.log(
            logging.ERROR,
            f"unexpected {kind} {during} {where}",
            "unexpected %s while %s%s",
            kind,
            during,
            f" ({where})" if where else "",
        )
