"""Logging: text or JSON lines on standard error, quiet libraries, the optional access log.

No line, at any level, carries a Session ID, group key, device token or message data
(tests/test_privacy_logs.py). The access log (ACCESS_LOG) keeps to method, path, status and
duration: never a body, a query string or an address, and "-" for the path of a request to
an unknown page (a path the relay does not serve could hold anything).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any

from tornado.httputil import HTTPServerRequest
from tornado.web import RequestHandler
from tornado.wsgi import WSGIContainer

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# With several processes (WORKERS), each line says which one wrote it: pn_relay[4242].
TEXT_FORMAT_WITH_PID = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"

# Libraries whose DEBUG lines carry identifiers: hpack prints every HTTP/2 header (the APNs
# path holds the device token, `authorization` the JWT). Whatever LOG_LEVEL says, they stay
# at WARNING; tests/test_privacy_logs.py runs the relay at DEBUG to prove nothing leaks.
QUIET_LIBRARIES = ("hpack", "h2")
# Libraries that log every request at INFO (httpx: one line per FCM push): warnings only.
CHATTY_LIBRARIES = ("httpx", "httpcore", "apscheduler")
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})

access_log = logging.getLogger("pn_relay.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, (pid,) message."""

    def __init__(self, *, with_pid: bool = False) -> None:
        super().__init__()
        self.with_pid = with_pid

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, object] = {
            "time": time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.with_pid:
            entry["pid"] = record.process
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text", *, with_pid: bool = False) -> None:
    """`with_pid`: each line names the process that wrote it (several workers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter(with_pid=with_pid)
        if log_format == "json"
        else logging.Formatter(TEXT_FORMAT_WITH_PID if with_pid else TEXT_FORMAT)
    )
    logging.basicConfig(level=level, handlers=[handler])
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    # APScheduler logs each minute's roll-up at INFO; httpx each FCM request.
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Tornado's access lines hold URIs and addresses: `RequestLog` writes ours instead.
    logging.getLogger("tornado.access").disabled = True


class AccessLog:
    """One line per request if enabled (ACCESS_LOG): method, path, status, duration.

    Tornado's own access lines (its `tornado.access` logger, also used by WSGIContainer for
    the Flask routes) carry the full URI, query string included, and the client's address:
    they are replaced by these, for both kinds of route. Server errors are logged apart, at
    most a line per kind and minute (server.log_server_errors, web/errorlog.py).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def record(self, method: str | None, path: str, status: int, seconds: float) -> None:
        if not self.enabled:
            return
        method = method if method in KNOWN_METHODS else "-"
        shown = "-" if status == 404 else path  # an unknown path could hold anything
        access_log.info("%s %s %d %.1fms", method, shown, status, 1000 * seconds)

    def tornado(self, handler: RequestHandler) -> None:
        """For Tornado's `log_function` (the onion routes, /healthz)."""
        request = handler.request
        self.record(request.method, request.path, handler.get_status(), request.request_time())


class LoggedWSGIContainer(WSGIContainer):
    """Tornado's WSGIContainer, its access line (URI and address) replaced by `AccessLog`."""

    def __init__(self, wsgi_application: Any, executor: Executor, access_log: AccessLog) -> None:
        super().__init__(wsgi_application, executor=executor)
        self._access_log = access_log

    def _log(self, status_code: int, request: HTTPServerRequest) -> None:
        self._access_log.record(request.method, request.path, status_code, request.request_time())


class _Holder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def held_until_started(discard_on: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Hold log lines while the relay starts: shown once it started (or failed unexpectedly),
    dropped if it stops for one of `discard_on`, so that a failed start says one line."""
    root = logging.getLogger()
    saved = root.handlers[:]
    holder = _Holder()
    root.handlers = [holder]
    keep = True
    try:
        yield
    except discard_on:
        keep = False
        raise
    finally:
        root.handlers = saved
        if keep:
            for record in holder.records:
                for handler in saved:
                    if record.levelno >= handler.level:
                        handler.handle(record)
