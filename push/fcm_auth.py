"""The OAuth 2 access token FCM wants, from a Google service account, never on the IOLoop's time.

firebase-admin loads the service account (`credentials.Certificate`) and google-auth signs
the JWT grant and talks to the account's `token_uri`; that exchange is blocking (requests),
so it runs in a worker thread. The token is refreshed ahead of its expiry while the current
one is still used, so sends never wait for it except the very first time (or after FCM said
401). Every wait is bounded by `timeout_s`: a hung token endpoint fails the sends that need
a token (transient) instead of holding them, and the thread itself gives up through
requests' own timeout.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import google.auth.transport.requests
import requests
import requests.adapters
from firebase_admin import credentials

log = logging.getLogger(__name__)

REFRESH_MARGIN_S = 300.0  # refresh when the token has less than this left
MIN_REMAINING_S = 30.0  # below this, wait for the new token rather than use the old one
BACKGROUND_RETRY_S = 15.0  # after a failed refresh ahead of time, before the next try


class _TrustingAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter with our TLS context: the default CAs plus FCM_CA_FILE."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)


class _TimedRequest(google.auth.transport.requests.Request):
    """google-auth's requests transport, with our timeout on every HTTP call it makes."""

    def __init__(self, timeout_s: float, ca_file: Path | None) -> None:
        session = requests.Session()
        if ca_file is not None:
            context = ssl.create_default_context()
            context.load_verify_locations(cafile=str(ca_file))
            session.mount("https://", _TrustingAdapter(context))
        super().__init__(session)
        self._timeout_s = timeout_s

    def __call__(
        self,
        url: Any,
        method: Any = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> Any:
        call = super().__call__
        return call(url, method, body, headers, timeout=self._timeout_s, **kwargs)  # type: ignore[no-untyped-call]


class AccessTokens:
    """`Authorization` header values for FCM, refreshed in a worker thread."""

    def __init__(
        self, service_account_file: Path, *, timeout_s: float, ca_file: Path | None = None
    ) -> None:
        certificate = credentials.Certificate(str(service_account_file))
        self.project_id: str | None = certificate.project_id
        self._credential: Any = certificate.get_credential()
        self._timeout_s = timeout_s
        self._request = _TimedRequest(timeout_s, ca_file)
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fcm-token")
        self._header: str | None = None
        self._expires_at = 0.0  # time.time() seconds
        self._refreshing: asyncio.Future[tuple[str, float]] | None = None
        self._refresh_started = 0.0
        self._background_after = 0.0  # loop time before which no refresh ahead of time starts

    async def header(self) -> str:
        """A valid `Bearer ...` value; raises what the refresh raised, or TimeoutError."""
        remaining = self._expires_at - time.time()
        if self._header is not None and remaining > MIN_REMAINING_S:
            if remaining < REFRESH_MARGIN_S:
                loop = asyncio.get_running_loop()
                if loop.time() >= self._background_after:
                    self._background_after = loop.time() + BACKGROUND_RETRY_S
                    self._start_refresh()  # in the background; this token still serves
            return self._header
        refreshing = self._start_refresh()
        async with asyncio.timeout(self._timeout_s):
            await asyncio.shield(refreshing)
        assert self._header is not None
        return self._header

    def invalidate(self, header: str) -> None:
        """FCM refused `header` (401): the next `header()` call waits for a new token."""
        if header == self._header:
            self._header = None

    def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()  # its thread ends on requests' timeout, answering no one
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _start_refresh(self) -> asyncio.Future[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        current = self._refreshing
        # A refresh that outlived its timeout is abandoned (its thread ends on requests'
        # timeout); a new one starts.
        if current is not None and loop.time() - self._refresh_started < self._timeout_s:
            return current
        future = loop.run_in_executor(self._executor, self._refresh)
        self._refreshing = future
        self._refresh_started = loop.time()
        future.add_done_callback(self._refreshed)
        return future

    def _refresh(self) -> tuple[str, float]:
        credential = self._credential
        credential.refresh(self._request)
        expiry: datetime.datetime | None = credential.expiry
        expires_at = (
            expiry.replace(tzinfo=datetime.UTC).timestamp() if expiry else time.time() + 3600
        )
        return f"Bearer {credential.token}", expires_at

    def _refreshed(self, future: asyncio.Future[tuple[str, float]]) -> None:
        if self._refreshing is future:
            self._refreshing = None
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            log.debug("FCM access token refresh failed: %s", type(error).__name__)
            return
        header, expires_at = future.result()
        if expires_at >= self._expires_at or self._header is None:
            self._header, self._expires_at = header, expires_at
