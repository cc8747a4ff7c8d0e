"""push/providers.py is the one description of the providers: every consumer derives from it.

A third provider is added here the way a real one would be (one more `ProviderInfo`), and
each consumer given that table shows it: the senders built, the statistics counters and the
/metrics events, the /metrics labels, and the `device` words and token shapes a register
accepts. The same calls with the shipped table do not show it.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Any, cast

import pytest

from handlers.validation import InvalidParameter, device_token, token_only
from push.outcome import PushOutcome
from push.providers import PROVIDERS, ProviderInfo, provider_info
from push.senders import build_senders
from settings import Settings, load_settings
from stats.counters import COUNTER_NAMES, METRIC_EVENTS, Counters, counter_names, metric_events
from stats.metrics import RelayMetrics
from storage.records import Provider
from tests.scripted_sender import ScriptedSender


class _ThirdProvider(enum.IntEnum):
    """Stands in for the member a real third provider adds to storage.records.Provider."""

    WEB = 3


WEB = cast(Provider, _ThirdProvider.WEB)


def web_info(*, configured: bool = True) -> ProviderInfo[str]:
    def config(settings: Settings) -> str | None:
        return "https://push.example" if configured else None

    return ProviderInfo(
        provider=WEB,
        name="WebPush",
        platform="Web",
        device="web",
        config=config,
        sender=lambda config, settings: ScriptedSender(WEB),
        describe=lambda config: f"endpoint {config}",
        enable_hint="WEB_PUSH_KEY",
        token_valid=lambda token: token.startswith("web:") and len(token) > 4,
        shape_error="Parameter token: a web token starts with web:",
        token_claims=lambda token: token.startswith("web:"),
        tokens_ignore_case=False,
        suspect_reasons={"VapidKeyMismatch": "WEB_PUSH_KEY"},
    )


# first: FCM claims every token shape, so a provider asked after it would never be chosen
WITH_WEB = (web_info(), *PROVIDERS)


def test_the_shipped_table_keeps_the_counters_and_their_column_order() -> None:
    assert COUNTER_NAMES == (
        "total_message_number",
        "ios_pn_number",
        "android_pn_number",
        "closed_group_message_number",
        "untracked_message_number",
        "ios_pn_failed",
        "android_pn_failed",
        "tokens_pruned",
        "deduplicated_number",
        "payload_trimmed_number",
        "pushes_dropped_unregistered",
        "stale_results",
    )
    assert METRIC_EVENTS == (
        "devices_replaced",
        "apns_config_storms",
        "fcm_config_storms",
        "apns_suspect_answers_held",
        "fcm_suspect_answers_held",
    )
    assert provider_info(Provider.APNS).name == "APNs"
    assert provider_info(Provider.FCM).label == "fcm"
    with pytest.raises(KeyError):
        provider_info(WEB)


def test_a_new_provider_gets_statistics_counters_and_events() -> None:
    names = counter_names(WITH_WEB)
    assert "web_pn_number" in names and "web_pn_failed" in names
    assert "web_pn_number" not in COUNTER_NAMES
    assert set(COUNTER_NAMES) < set(names)
    events = metric_events(WITH_WEB)
    assert {"webpush_config_storms", "webpush_suspect_answers_held"} <= set(events)
    assert "webpush_config_storms" not in METRIC_EVENTS


def scrape(providers: tuple[ProviderInfo[Any], ...]) -> str:
    counters = Counters()
    metrics = RelayMetrics(counters, process_metrics=False, providers=providers)
    counters.incr("web_pn_number", 3)
    counters.incr("webpush_config_storms")
    metrics.observe_push_outcome(WEB, PushOutcome.transient("timeout"))
    metrics.observe_push_latency(WEB, 0.2)
    return metrics.render().decode()


def test_a_new_provider_is_a_metrics_label() -> None:
    text = scrape(WITH_WEB)
    assert 'pn_relay_pushes_total{outcome="sent",provider="webpush"} 3.0' in text
    assert 'pn_relay_pushes_total{outcome="failed",provider="webpush"} 0.0' in text
    assert 'pn_relay_events_total{event="webpush_config_storms"} 1.0' in text
    assert (
        'pn_relay_push_results_total{provider="webpush",reason="timeout",result="transient"} 1.0'
        in text
    )
    assert 'pn_relay_pushes_in_flight{provider="webpush"} 0.0' in text
    assert 'pn_relay_push_latency_seconds_count{provider="webpush"} 1.0' in text
    assert 'pn_relay_pushes_total{outcome="sent",provider="apns"} 0.0' in text


def test_without_the_entry_the_provider_is_other_and_its_counters_unexported() -> None:
    text = scrape(PROVIDERS)
    assert "webpush" not in text and "web_pn_number" not in text
    assert (
        'pn_relay_push_results_total{provider="other",reason="timeout",result="transient"} 1.0'
        in text
    )


def test_a_register_may_name_the_new_device_or_give_its_token_shape() -> None:
    assert device_token({"token": "web:Abc", "device": "web"}, WITH_WEB) == ("web:Abc", WEB)
    assert device_token({"token": "web:Abc"}, WITH_WEB) == ("web:Abc", WEB)
    assert device_token({"token": "web:Abc"}) == ("web:Abc", Provider.FCM)
    with pytest.raises(InvalidParameter, match=r"^Parameter token: a web token starts with web:$"):
        device_token({"token": "abc", "device": "web"}, WITH_WEB)
    with pytest.raises(InvalidParameter, match=r"^Parameter device must be one of ios, android, "):
        device_token({"token": "web:Abc", "device": "web"})
    with pytest.raises(
        InvalidParameter, match=r"^Parameter device must be one of web, ios, android, huawei$"
    ):
        device_token({"token": "web:Abc", "device": "pager"}, WITH_WEB)
    apns_token = "AB" * 32
    assert device_token({"token": apns_token}, WITH_WEB) == (apns_token.lower(), Provider.APNS)
    assert token_only({"token": "web:Abc"}, WITH_WEB) == "web:Abc"


def test_senders_are_built_for_the_new_provider(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(environ={}, cwd=tmp_path)
    with caplog.at_level(logging.INFO, logger="push.senders"):
        senders = build_senders(settings, WITH_WEB)
        off = build_senders(settings, (web_info(configured=False),))
    sender = senders[WEB]
    assert isinstance(sender, ScriptedSender) and sender.provider == WEB
    assert senders[Provider.APNS] is None and senders[Provider.FCM] is None  # no credentials
    assert off == {WEB: None}
    assert build_senders(settings).keys() == {Provider.APNS, Provider.FCM}
    messages = [record.getMessage() for record in caplog.records]
    assert "WebPush: endpoint https://push.example" in messages
    assert (
        "WebPush is off: no credentials. Web pushes are counted as failed and dropped."
        " To enable, set WEB_PUSH_KEY."
    ) in messages
