"""No log line, at any level, carries a Session ID, group key, token or message data.

The relay's records are gathered by a handler of this module's own (not pytest's log capture),
so a failure prints the offending lines, redacted, and which kind of identifier they carry,
rather than the hundreds of DEBUG lines a run writes.
"""

from __future__ import annotations

import base64
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from sandbox import script
from server import configure_logging
from tests.checks import wait_until
from tests.providers import Providers
from tests.support import RunningRelay, random_apns_token, random_fcm_token, random_session_id

MAX_LEAKS_SHOWN = 5
MAX_LINE_CHARS = 240


@dataclass(frozen=True)
class LoggedLine:
    logger: str
    level: str
    text: str  # the message (exception and stack included), then the raw arguments


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.lines: list[LoggedLine] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{self.format(record)}\nargs={record.args!r}"
        self.lines.append(LoggedLine(record.name, record.levelname, text))


@contextmanager
def every_log_line() -> Iterator[list[LoggedLine]]:
    """Every record of every logger, at DEBUG, to a list of ours and to no other handler.

    Logger levels (configure_logging sets some) are put back afterwards, so the next test
    starts as this one did.
    """
    root = logging.getLogger()
    saved_handlers, saved_root_level = root.handlers[:], root.level
    saved_levels = {
        name: logger.level
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    collector = _Collector()
    root.handlers = [collector]
    root.setLevel(logging.DEBUG)
    try:
        yield collector.lines
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_root_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


@dataclass(frozen=True)
class Leak:
    kinds: list[str]
    level: str
    logger: str  # redacted, as is the text
    text: str


def find_leaks(lines: Sequence[LoggedLine], identifiers: Mapping[str, Sequence[str]]) -> list[Leak]:
    """The records that carry an identifier (any case, in the logger name, the message or the
    arguments), each with every identifier blanked."""
    by_length = sorted(
        ((value, kind) for kind, values in identifiers.items() for value in values),
        key=lambda pair: -len(pair[0]),
    )
    leaks = []
    for line in lines:
        lowered = f"{line.logger}\n{line.text}".lower()
        kinds = sorted({kind for value, kind in by_length if value.lower() in lowered})
        if not kinds:
            continue
        logger, text = line.logger, line.text
        for value, kind in by_length:
            logger = re.sub(re.escape(value), f"<{kind}>", logger, flags=re.IGNORECASE)
            text = re.sub(re.escape(value), f"<{kind}>", text, flags=re.IGNORECASE)
        leaks.append(Leak(kinds, line.level, logger, text))
    return leaks


def describe(leaks: Sequence[Leak]) -> str:
    shown = []
    for leak in leaks[:MAX_LEAKS_SHOWN]:
        # Only the lines of the record that carry an identifier: never a whole traceback.
        markers = [f"<{kind}>" for kind in leak.kinds]
        parts = [part.strip() for part in leak.text.splitlines()]
        text = " | ".join(part for part in parts if any(marker in part for marker in markers))
        if len(text) > MAX_LINE_CHARS:
            text = text[: MAX_LINE_CHARS - 3] + "..."
        kinds = ", ".join(leak.kinds)
        shown.append(f"  [{kinds}] {leak.level} {leak.logger}: {text}")
    more = len(leaks) - len(shown)
    if more:
        shown.append(f"  ... and {more} more line(s)")
    counts = Counter(kind for leak in leaks for kind in leak.kinds)
    summary = ", ".join(f"{kind}: {count}" for kind, count in sorted(counts.items()))
    header = f"{len(leaks)} log line(s) carry an identifier ({summary}); shown redacted:"
    return "\n".join([header, *shown])


def assert_nothing_identifying(
    lines: Sequence[LoggedLine], identifiers: Mapping[str, Sequence[str]]
) -> None:
    if not lines:
        pytest.fail("the relay logged nothing at all: the check would be vacuous", pytrace=False)
    leaks = find_leaks(lines, identifiers)
    if leaks:
        pytest.fail(describe(leaks), pytrace=False)


def test_nothing_identifying_is_logged_even_at_debug(
    start_relay: Callable[..., RunningRelay], sqlite_url: str
) -> None:
    alice, group = random_session_id(), random_session_id()
    apns, fcm = random_apns_token(), random_fcm_token()
    data = base64.b64encode(os.urandom(120)).decode()
    calls = [
        ("register", {"token": apns, "pubKey": alice}),
        ("register", {"token": fcm, "pubKey": alice, "device": "android"}),
        ("subscribe_closed_group", {"closedGroupPublicKey": group, "pubKey": alice}),
        ("notify", {"data": data, "send_to": alice}),
        ("notify", {"data": data, "send_to": alice}),  # deduplicated
        ("notify", {"data": data, "send_to": group}),
        ("notify", {"data": data + "!", "send_to": alice}),  # invalid data
        ("register", {"token": apns, "pubKey": alice + "0"}),  # invalid Session ID
        ("unsubscribe_closed_group", {"closedGroupPublicKey": group, "pubKey": alice}),
        ("unregister", {"token": fcm}),
        ("no_such_endpoint", {"token": apns, "pubKey": alice}),
    ]
    with every_log_line() as lines:
        configure_logging("DEBUG")  # the relay's own logging set-up, at its most verbose
        relay = start_relay(sqlite_url)
        for endpoint, params in calls:
            relay.call_v2(endpoint, params)
            relay.call_v4(endpoint, params, style="libsession")
        relay.post("/loki/v2/lsrpc", b"garbage " + alice.encode())
        relay.stop_relay_only()
    assert_nothing_identifying(
        lines,
        {
            "Session ID": [alice, alice[2:]],
            "group key": [group, group[2:]],
            "APNs token": [apns],
            "FCM token": [fcm],
            "message data": [data],
        },
    )


def test_delivery_logs_nothing_identifying_even_at_debug(
    start_relay: Callable[..., RunningRelay], sqlite_url: str, providers: Providers
) -> None:
    """Every kind of provider answer is judged, and logged, without an identifier.

    Both notifies are queued while no dispatcher runs; a relay then started on the same data
    claims all of them at once, so every push is in flight before any answer comes back. (With
    a dispatcher running during the notifies, the DeviceTokenNotForTopic answer to the first
    one could pause the APNs lane for 30 s before the second was claimed: a 1-in-6 failure.)
    """
    alice, group = random_session_id(), random_session_id()
    good_apns, dead_apns, topic_apns = random_apns_token(), random_apns_token(), random_apns_token()
    good_fcm, dead_fcm, flaky_fcm = random_fcm_token(), random_fcm_token(), random_fcm_token()
    providers.apns.scripts.set(dead_apns, script.unregistered())
    providers.apns.scripts.set(topic_apns, script.device_token_not_for_topic())
    providers.fcm.scripts.set(dead_fcm, script.unregistered())
    providers.fcm.scripts.fail_times(flaky_fcm, 2, script.unavailable())
    tokens = [good_apns, dead_apns, topic_apns, good_fcm, dead_fcm, flaky_fcm]
    data = base64.b64encode(os.urandom(100)).decode()
    with every_log_line() as lines:
        configure_logging("DEBUG")  # the relay's own logging set-up, at its most verbose
        intake = start_relay(sqlite_url, **providers.settings)  # no dispatcher
        for token in tokens:
            assert intake.call_v2("register", {"token": token, "pubKey": alice})[0] == 200
        intake.call_v2("subscribe_closed_group", {"closedGroupPublicKey": group, "pubKey": alice})
        intake.call_v2("notify", {"data": data, "send_to": alice})
        intake.call_v2("notify", {"data": data, "send_to": group})
        intake.stop_relay_only()
        # The same relay restarted: same data directory, so the same keys.
        pusher = start_relay(
            sqlite_url, dispatch=True, DATA_DIR=intake.settings.DATA_DIR, **providers.settings
        )
        # Two notifies to three tokens per provider, each pushed once; the flaky FCM token's
        # two pushes fail once each (503) and go again.
        providers.apns.pushes.wait_for(6, timeout=30)
        providers.fcm.pushes.wait_for(8, timeout=30)
        # Every answer judged: accepted, dead token (pruned), configuration error, transient.
        final = {
            "ios_pn_number": 2,
            "ios_pn_failed": 4,
            "android_pn_number": 4,
            "android_pn_failed": 4,
            "tokens_pruned": 2,
        }

        def judged() -> bool:
            lifetime = pusher.relay.counters.lifetime()
            return all(lifetime[name] >= value for name, value in final.items())

        wait_until(judged, f"the relay to judge every answer ({final})")
        pusher.stop_relay_only()
    lifetime = pusher.relay.counters.lifetime()
    assert {name: lifetime[name] for name in final} == final
    assert len(providers.apns.pushes) == 6  # the topic token's pushes wait out the pause
    assert any("DeviceTokenNotForTopic" in line.text for line in lines)  # the error was logged
    assert_nothing_identifying(
        lines,
        {
            "Session ID": [alice, alice[2:]],
            "group key": [group, group[2:]],
            "message data": [data],
            "APNs token": [good_apns, dead_apns, topic_apns],
            "FCM token": [good_fcm, dead_fcm, flaky_fcm],
        },
    )


def test_a_leak_is_reported_in_a_few_redacted_lines() -> None:
    """The checker itself: a leak among many lines fails with a short, redacted reason."""
    alice, token = random_session_id(), random_apns_token()
    log = logging.getLogger("tests.privacy.checker")
    with every_log_line() as lines:
        for index in range(300):
            log.debug("harmless line %d", index)
        log.warning("pushing to %s", token.upper())
        try:
            raise ValueError(alice[2:])
        except ValueError:
            log.exception("failed for a user")
    identifiers = {"Session ID": [alice, alice[2:]], "APNs token": [token]}
    leaks = find_leaks(lines, identifiers)
    assert [leak.kinds for leak in leaks] == [["APNs token"], ["Session ID"]]
    with pytest.raises(pytest.fail.Exception) as failure:
        assert_nothing_identifying(lines, identifiers)
    message = str(failure.value)
    assert len(message.splitlines()) == 3
    assert message.startswith("2 log line(s) carry an identifier (APNs token: 1, Session ID: 1)")
    assert (
        "[APNs token] WARNING tests.privacy.checker: pushing to <APNs token>"
        " | args=('<APNs token>',)"
    ) in message
    assert "[Session ID] ERROR tests.privacy.checker: ValueError: <Session ID>" in message
    assert "harmless" not in message
    assert "Traceback" not in message
    assert token not in message.lower() and alice[2:] not in message
