"""A Tornado RequestHandler base whose errors are one plain line and never a traceback."""

from __future__ import annotations

from types import TracebackType

from tornado.web import HTTPError, RequestHandler

from web.answers import plain, send
from web.errorlog import RateLimitedLog


class PlainErrorsHandler(RequestHandler):
    """Tornado's own errors (405, a body it could not read) as a short plain line; an
    exception escaping a handler as a plain 500 and one rate-limited log line per kind."""

    errors: RateLimitedLog

    def initialize(self, errors: RateLimitedLog) -> None:
        self.errors = errors

    def set_default_headers(self) -> None:
        self.clear_header("Server")

    def write_error(self, status_code: int, **kwargs: object) -> None:
        send(self, plain(status_code, self._reason))

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if value is None or isinstance(value, HTTPError):
            return  # a client's mistake Tornado answered itself (405, 400): nothing to log
        self.errors.unexpected(value, f"answering {type(self).__name__}")
