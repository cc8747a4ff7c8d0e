"""FCM HTTP v1 through firebase-admin 7 (`send_each_async`), on the server's IOLoop.

- The app is a named firebase-admin App of our own (deleted on close), built on first use,
  because its HTTP client binds to the first event loop it meets: the IOLoop.
- FCM_ENDPOINT replaces https://fcm.googleapis.com (path unchanged). firebase-admin has no
  public option: `_build_app` is the one place its private parts are touched (the service's
  `_fcm_url`, and its `_async_client` replaced by one that does not retry on its own), and
  tests/test_delivery.py fails if they disappear.
- The OAuth token comes from the service account's own `token_uri`. firebase-admin refreshes
  it synchronously inside the request; we refresh it ahead of time in a worker thread so the
  IOLoop never waits on Google's token endpoint.
- A message that failed before any response (a connection closed by GOAWAY: httpx does not
  retry it) is transient: the dispatcher re-queues it.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import firebase_admin
import google.auth.transport.requests
from firebase_admin import _http_client, credentials, exceptions, messaging
from firebase_admin._retry import HttpxRetry

from push.outcome import ACCEPTED, ProviderSender, Push, PushOutcome, Verdict
from push.payloads import fcm_data
from storage.records import Provider

log = logging.getLogger(__name__)

CREDENTIAL_HINT = "FCM_SERVICE_ACCOUNT_FILE and FCM_PROJECT_ID"
TOKEN_REFRESH_MARGIN = datetime.timedelta(minutes=5)
_app_names = itertools.count(1)


@dataclass(frozen=True)
class FCMConfig:
    service_account_file: Path
    project_id: str | None = None
    endpoint: str | None = None  # e.g. http://127.0.0.1:8443; None: Google's
    timeout_s: float = 30.0


def _retry_after(error: exceptions.FirebaseError) -> float | None:
    response = error.http_response
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def classify(error: Exception) -> PushOutcome:
    """Map a firebase-admin send error to what the dispatcher does about it."""
    if not isinstance(error, exceptions.FirebaseError):
        return PushOutcome.transient(type(error).__name__)
    reason = str(getattr(error, "code", "") or type(error).__name__)
    if error.http_response is None:
        return PushOutcome.transient(f"transport: {type(error.cause).__name__}")
    if isinstance(error, messaging.UnregisteredError):
        return PushOutcome(Verdict.DEAD_TOKEN, reason="UNREGISTERED")
    if isinstance(error, messaging.SenderIdMismatchError):
        return PushOutcome(Verdict.CONFIG_ERROR, reason="SENDER_ID_MISMATCH", hint=CREDENTIAL_HINT)
    if isinstance(error, messaging.ThirdPartyAuthError):
        return PushOutcome(
            Verdict.CONFIG_ERROR, reason="THIRD_PARTY_AUTH_ERROR", hint=CREDENTIAL_HINT
        )
    if isinstance(error, exceptions.InvalidArgumentError):
        if "registration token" in str(error).lower():
            return PushOutcome(Verdict.DEAD_TOKEN, reason="INVALID_ARGUMENT")
        return PushOutcome(Verdict.REJECTED, reason="INVALID_ARGUMENT")
    if isinstance(error, (exceptions.UnauthenticatedError, exceptions.PermissionDeniedError)):
        return PushOutcome(Verdict.CONFIG_ERROR, reason=reason, hint=CREDENTIAL_HINT)
    if isinstance(error, exceptions.NotFoundError):
        return PushOutcome(Verdict.CONFIG_ERROR, reason=reason, hint="FCM_PROJECT_ID")
    if isinstance(
        error,
        (
            messaging.QuotaExceededError,
            exceptions.ResourceExhaustedError,
            exceptions.UnavailableError,
            exceptions.InternalError,
            exceptions.DeadlineExceededError,
            exceptions.UnknownError,
        ),
    ):
        return PushOutcome.transient(reason, _retry_after(error))
    return PushOutcome(Verdict.REJECTED, reason=reason)


class FCMSender(ProviderSender):
    provider = Provider.FCM
    name = "FCM"

    def __init__(
        self, config: FCMConfig, *, max_in_flight: int = 100, batch_size: int = 25
    ) -> None:
        self.config = config
        self.max_in_flight = max_in_flight
        self.batch_size = min(batch_size, 500)  # send_each_async takes at most 500
        self._app: firebase_admin.App | None = None
        self._service: Any = None
        self._credential: Any = None
        self._refreshing: asyncio.Future[None] | None = None

    def _build_app(self) -> firebase_admin.App:
        certificate = credentials.Certificate(str(self.config.service_account_file))
        options: dict[str, Any] = {"httpTimeout": self.config.timeout_s}
        if self.config.project_id:
            options["projectId"] = self.config.project_id
        app = firebase_admin.initialize_app(
            certificate, options, name=f"pn-relay-fcm-{next(_app_names)}"
        )
        service = messaging._get_messaging_service(app)  # private: see the module docstring
        # firebase-admin would retry 500/503 itself (4 times, ignoring Retry-After) while the
        # dispatcher waits; the dispatcher's own backoff honours Retry-After instead.
        service._async_client = _http_client.HttpxAsyncClient(
            credential=service._credential,
            timeout=self.config.timeout_s,
            retry_config=HttpxRetry(max_retries=0),
        )
        self._service = service
        if self.config.endpoint:
            project = app.project_id
            service._fcm_url = (
                f"{self.config.endpoint.rstrip('/')}/v1/projects/{project}/messages:send"
            )
        self._credential = certificate.get_credential()
        return app

    async def _fresh_token(self) -> None:
        credential = self._credential
        expiry = getattr(credential, "expiry", None)
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        if credential.valid and expiry is not None and expiry - now > TOKEN_REFRESH_MARGIN:
            return
        if self._refreshing is None:
            loop = asyncio.get_running_loop()
            request = google.auth.transport.requests.Request()
            self._refreshing = asyncio.ensure_future(
                loop.run_in_executor(None, credential.refresh, request)
            )
        try:
            await self._refreshing
        finally:
            self._refreshing = None

    async def send(self, pushes: list[Push]) -> list[PushOutcome]:
        if self._app is None:
            self._app = self._build_app()
        try:
            await self._fresh_token()
        except Exception as exc:  # noqa: BLE001 - any failure to get a token
            outcome = classify_token_error(exc)
            return [outcome] * len(pushes)
        messages = []
        trimmed_flags = []
        for push in pushes:
            data, trimmed = fcm_data(push.data)
            trimmed_flags.append(trimmed)
            with warnings.catch_warnings():
                # firebase-admin 7.7 nudges towards `fid`; Session's apps register tokens.
                warnings.simplefilter("ignore", DeprecationWarning)
                message = messaging.Message(
                    token=push.token, data=data, android=messaging.AndroidConfig(priority="high")
                )
            messages.append(message)
        batch = await messaging.send_each_async(messages, app=self._app)
        outcomes = []
        for response, trimmed in zip(batch.responses, trimmed_flags, strict=True):
            outcome = ACCEPTED if response.success else classify(response.exception)
            outcomes.append(outcome.with_trimmed() if trimmed else outcome)
        return outcomes

    async def close(self) -> None:
        if self._app is not None:
            app, self._app = self._app, None
            # Close the HTTP client on the loop it belongs to; delete_app (which runs its own
            # asyncio.run) then finds it closed, so it goes to a worker thread.
            await self._service._async_client.aclose()
            await asyncio.get_running_loop().run_in_executor(None, firebase_admin.delete_app, app)


def classify_token_error(error: Exception) -> PushOutcome:
    """The OAuth token endpoint refused or failed: wrong account, or Google unreachable."""
    name = type(error).__name__
    if name == "RefreshError" and "invalid_grant" in str(error):
        return PushOutcome(Verdict.CONFIG_ERROR, reason="invalid_grant", hint=CREDENTIAL_HINT)
    return PushOutcome.transient(f"token: {name}")


def describe(config: FCMConfig) -> str:
    endpoint = config.endpoint or "https://fcm.googleapis.com"
    return f"{endpoint}, service account {config.service_account_file.name}"
