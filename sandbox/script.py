"""Per-token scripted behaviours and push recording, shared by the fake APNs and FCM.

A :class:`Behaviour` says how a fake answers one push: it is provider-neutral (``unregistered()``
becomes APNs 410 ``Unregistered`` or FCM 404 ``UNREGISTERED``). A :class:`Scripts` table maps
tokens to behaviours, either steady (``set``) or as a queue of one-shot steps followed by a steady
behaviour (``sequence`` / ``fail_times``), which is what retry tests need.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

__all__ = [
    "Behaviour",
    "Kind",
    "Recorder",
    "Scripts",
    "bad_device_token",
    "device_token_not_for_topic",
    "drop",
    "error",
    "goaway",
    "internal",
    "invalid_argument",
    "ok",
    "payload_too_large",
    "quota_exceeded",
    "sender_id_mismatch",
    "server_error",
    "service_unavailable",
    "slow",
    "too_many_requests",
    "unavailable",
    "unregistered",
]


class Kind(enum.Enum):
    OK = "ok"
    UNREGISTERED = "unregistered"
    BAD_DEVICE_TOKEN = "bad_device_token"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    TOO_MANY_REQUESTS = "too_many_requests"
    SERVER_ERROR = "server_error"
    SERVICE_UNAVAILABLE = "service_unavailable"
    WRONG_SENDER = "wrong_sender"
    ERROR = "error"
    GOAWAY = "goaway"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How to answer one push.

    ``delay`` (seconds) is waited before answering (or before GOAWAY/drop). ``timestamp_ms`` is
    the APNs 410 invalidation time (``None``: now). ``retry_after`` (seconds) adds a
    ``retry-after`` header. ``status``/``reason`` are used by :func:`error` only.
    """

    kind: Kind
    delay: float = 0.0
    timestamp_ms: int | None = None
    retry_after: float | None = None
    status: int = 0
    reason: str = ""

    @property
    def is_success(self) -> bool:
        return self.kind is Kind.OK


_OK = Behaviour(Kind.OK)


def ok() -> Behaviour:
    """APNs 200 / FCM 200 ``{"name": ...}``."""
    return _OK


def unregistered(timestamp_ms: int | None = None) -> Behaviour:
    """APNs 410 ``Unregistered`` with ``timestamp`` (ms; default: now) / FCM 404 UNREGISTERED."""
    return Behaviour(Kind.UNREGISTERED, timestamp_ms=timestamp_ms)


def bad_device_token() -> Behaviour:
    """APNs 400 ``BadDeviceToken`` / FCM 400 INVALID_ARGUMENT (not a valid registration token)."""
    return Behaviour(Kind.BAD_DEVICE_TOKEN)


invalid_argument = bad_device_token


def payload_too_large() -> Behaviour:
    """APNs 413 ``PayloadTooLarge`` / FCM 400 INVALID_ARGUMENT "Message is too big"."""
    return Behaviour(Kind.PAYLOAD_TOO_LARGE)


def too_many_requests(retry_after: float | None = None) -> Behaviour:
    """APNs 429 ``TooManyRequests`` / FCM 429 QUOTA_EXCEEDED, ``retry-after`` if given."""
    return Behaviour(Kind.TOO_MANY_REQUESTS, retry_after=retry_after)


quota_exceeded = too_many_requests


def server_error() -> Behaviour:
    """APNs 500 ``InternalServerError`` / FCM 500 INTERNAL."""
    return Behaviour(Kind.SERVER_ERROR)


internal = server_error


def service_unavailable(retry_after: float | None = None) -> Behaviour:
    """APNs 503 ``ServiceUnavailable`` / FCM 503 UNAVAILABLE."""
    return Behaviour(Kind.SERVICE_UNAVAILABLE, retry_after=retry_after)


unavailable = service_unavailable


def sender_id_mismatch() -> Behaviour:
    """FCM 403 SENDER_ID_MISMATCH / APNs 400 ``DeviceTokenNotForTopic``."""
    return Behaviour(Kind.WRONG_SENDER)


device_token_not_for_topic = sender_id_mismatch


def error(status: int, reason: str, retry_after: float | None = None) -> Behaviour:
    """Any other answer: APNs ``{"reason": reason}``; FCM errorCode ``reason``."""
    return Behaviour(Kind.ERROR, status=status, reason=reason, retry_after=retry_after)


def goaway() -> Behaviour:
    """APNs: send GOAWAY (last-stream-id before this stream) and close. FCM: close the socket."""
    return Behaviour(Kind.GOAWAY)


def drop() -> Behaviour:
    """Close the TCP connection abruptly (RST) without answering."""
    return Behaviour(Kind.DROP)


def slow(seconds: float, then: Behaviour = _OK) -> Behaviour:
    """Wait ``seconds`` before behaving like ``then`` (default: success)."""
    return replace(then, delay=seconds)


class _Queue:
    __slots__ = ("steps", "then")

    def __init__(self, steps: Iterable[Behaviour], then: Behaviour) -> None:
        self.steps: deque[Behaviour] = deque(steps)
        self.then = then


class Scripts:
    """Thread-safe token → behaviour table. Tokens without an entry get ``default``."""

    def __init__(self, default: Behaviour = _OK) -> None:
        self._lock = threading.Lock()
        self._steady: dict[str, Behaviour] = {}
        self._queues: dict[str, _Queue] = {}
        self.default = default

    def set(self, token: str, behaviour: Behaviour) -> None:
        """Answer every push to ``token`` with ``behaviour``."""
        with self._lock:
            self._queues.pop(token, None)
            self._steady[token] = behaviour

    def sequence(
        self, token: str, steps: Sequence[Behaviour], then: Behaviour | None = None
    ) -> None:
        """Answer the next pushes to ``token`` with ``steps`` in order, then with ``then``
        (default: the table's ``default``)."""
        with self._lock:
            self._steady.pop(token, None)
            self._queues[token] = _Queue(steps, then if then is not None else self.default)

    def fail_times(
        self,
        token: str,
        times: int,
        failure: Behaviour | None = None,
        then: Behaviour | None = None,
    ) -> None:
        """Fail the next ``times`` pushes to ``token`` with ``failure`` (default: 500
        server error), then answer ``then`` (default: success)."""
        self.sequence(
            token,
            [failure if failure is not None else server_error()] * times,
            then if then is not None else _OK,
        )

    def clear(self, token: str | None = None) -> None:
        """Forget the script of ``token``, or of every token."""
        with self._lock:
            if token is None:
                self._steady.clear()
                self._queues.clear()
            else:
                self._steady.pop(token, None)
                self._queues.pop(token, None)

    def remaining(self, token: str) -> int:
        """How many one-shot steps are still queued for ``token``."""
        with self._lock:
            queue = self._queues.get(token)
            return len(queue.steps) if queue else 0

    def next(self, token: str) -> Behaviour:
        """The behaviour for the next push to ``token`` (consumes one queued step)."""
        if not self._steady and not self._queues:
            return self.default
        with self._lock:
            steady = self._steady.get(token)
            if steady is not None:
                return steady
            queue = self._queues.get(token)
            if queue is None:
                return self.default
            if queue.steps:
                return queue.steps.popleft()
            return queue.then


T = TypeVar("T")


class Recorder(Generic[T]):
    """A thread-safe, append-only record of received pushes, plus an optional listener."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[T] = []
        self.listeners: list[Callable[[T], None]] = []

    def add(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
        for listener in self.listeners:
            listener(item)

    def snapshot(self) -> list[T]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[T]:
        """Block (poll) until at least ``count`` items were recorded; raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while len(self._items) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"recorded {len(self._items)} pushes, wanted {count}")
            time.sleep(0.005)
        return self.snapshot()
