"""The senders on our HTTP/2 client, against the fakes; and the h2 and hpack internals that
client relies on (push/h2conn.py, push/hpack_cache.py): fail loudly if they move."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from pathlib import Path
from typing import Any

import hpack
from h2 import utilities
from h2.connection import ConnectionState, H2Connection
from h2.stream import H2Stream
from hpack.table import HeaderTable

from push.apns import APNsConfig, APNsSender
from push.fcm import FCMConfig, FCMSender
from push.outcome import Push, Verdict
from sandbox import script
from storage.records import Provider
from tests import loops
from tests.providers import Providers
from tests.support import random_apns_token, random_fcm_token


def test_the_h2_internals_the_client_connection_relies_on() -> None:
    # push/h2conn.py keeps a connection open after a graceful GOAWAY by restoring the state
    # h2's `_receive_goaway_frame` moves to CLOSED, and counts streams instead of h2.
    source = inspect.getsource(H2Connection._receive_goaway_frame)
    assert "ConnectionInputs.RECV_GOAWAY" in source
    assert "clear_outbound_data_buffer" in source
    assert "self._data_to_send = bytearray()" in inspect.getsource(
        H2Connection.clear_outbound_data_buffer
    )
    assert hasattr(ConnectionState, "CLIENT_OPEN")
    counted = inspect.getattr_static(H2Connection, "open_outbound_streams")
    assert "_open_streams" in inspect.getsource(counted.fget)
    assert "open_outbound_streams" in inspect.getsource(H2Connection.send_headers)
    # APNs' per-push values go as hpack.NeverIndexedHeaderTuple: h2 must hand them to the
    # encoder as such (it rebuilds every header tuple, keeping its class).
    assert "header.__class__(" in inspect.getsource(utilities.utf8_encode_headers)
    assert "utf8_encode_headers(headers)" in inspect.getsource(H2Stream.send_headers)


def test_the_hpack_internals_the_caching_coders_rely_on() -> None:
    # push/hpack_cache.py learns each field's bytes in `Encoder.add`, called once per header
    # by `Encoder.encode`, and counts table changes in `HeaderTable.add` and `maxsize`.
    encode = inspect.getsource(hpack.Encoder.encode)
    assert "self.add(new_header, sensitive, huffman)" in encode
    assert "self.header_table.resized" in encode
    add = inspect.getsource(hpack.Encoder.add)
    assert "self.header_table.search(name, value)" in add
    assert "self._encode_indexed(index)" in add
    assert "self.header_table.add(name, value)" in add
    assert isinstance(inspect.getattr_static(HeaderTable, "maxsize"), property)
    assert not hpack.NeverIndexedHeaderTuple(b"a", b"b").indexable
    assert hpack.HeaderTuple(b"a", b"b").indexable
    # The quick decoder reads the table through get_by_index, as hpack's does.
    assert "self.header_table.get_by_index(index)" in inspect.getsource(hpack.Decoder)


def pushes_for(tokens: list[str], provider: Provider) -> list[Push]:
    expiration = int(time.time()) + 3600
    return [
        Push(n, provider, token, "QUJD", str(uuid.uuid4()), expiration)
        for n, token in enumerate(tokens)
    ]


def apns_config(providers: Providers, **extra: object) -> APNsConfig:
    settings = providers.settings
    host, _, port = str(settings["APNS_ENDPOINT"]).rpartition(":")
    return APNsConfig(
        topic="com.loki-project.loki-messenger",
        host=host,
        port=int(port),
        key_file=Path(settings["APNS_KEY_FILE"]),
        key_id=str(settings["APNS_KEY_ID"]),
        team_id=str(settings["APNS_TEAM_ID"]),
        ca_file=Path(settings["APNS_CA_FILE"]),
        **extra,  # type: ignore[arg-type]
    )


def test_apns_connection_survives_thousands_of_error_bodies(providers: Providers) -> None:
    # A client that never acknowledges received DATA (aioapns 4.0 did not) stalls after ~1,285
    # such answers on one connection: its receive window is spent.
    tokens = [random_apns_token() for _ in range(3000)]
    providers.apns.scripts.default = script.unregistered(int(time.time() * 1000))
    sender = APNsSender(apns_config(providers, max_connections=1, request_timeout_s=20.0))

    async def run() -> list[Verdict]:
        try:
            chunks = [sender.send([push]) for push in pushes_for(tokens, Provider.APNS)]
            return [
                outcome.verdict for result in await asyncio.gather(*chunks) for outcome in result
            ]
        finally:
            await sender.close()

    verdicts = loops.run(run())
    assert verdicts == [Verdict.DEAD_TOKEN] * 3000
    assert providers.apns.connections_total == 1


def test_apns_jwt_is_shared_by_connections(providers: Providers) -> None:
    # One stream per connection and answers that take a while: the pool opens all three.
    sender = APNsSender(apns_config(providers, max_connections=3, max_streams=1))
    tokens = [random_apns_token() for _ in range(30)]
    for token in tokens:
        providers.apns.scripts.set(token, script.slow(0.1))

    async def run() -> list[Verdict]:
        try:
            return [o.verdict for o in await sender.send(pushes_for(tokens, Provider.APNS))]
        finally:
            await sender.close()

    assert loops.run(run()) == [Verdict.ACCEPTED] * 30
    pushes = providers.apns.pushes.snapshot()
    assert {p.status for p in pushes} == {200}
    assert len({p.connection_id for p in pushes}) == 3
    assert len({p.headers["authorization"] for p in pushes}) == 1


def test_fcm_sender_goes_to_the_configured_endpoint_and_closes(providers: Providers) -> None:
    config = FCMConfig(
        service_account_file=Path(providers.settings["FCM_SERVICE_ACCOUNT_FILE"]),
        endpoint=str(providers.settings["FCM_ENDPOINT"]),
        ca_file=Path(providers.settings["FCM_CA_FILE"]),
    )
    sender = FCMSender(config)
    tokens = [random_fcm_token() for _ in range(150)]

    async def run() -> list[Verdict]:
        try:
            outcomes = await sender.send(pushes_for(tokens, Provider.FCM))
            return [o.verdict for o in outcomes]
        finally:
            await sender.close()

    assert loops.run(run()) == [Verdict.ACCEPTED] * 150
    assert len(providers.fcm.pushes) == 150
    assert {p.http_version for p in providers.fcm.pushes.snapshot()} == {"HTTP/2"}
    assert providers.fcm.tokens_issued == 1
    deadline = time.monotonic() + 10
    while providers.fcm.connections_open and time.monotonic() < deadline:
        time.sleep(0.01)
    assert providers.fcm.connections_open == 0


def test_apns_certificate_authentication(tmp_path: Path) -> None:
    from sandbox.apns import FakeApns
    from sandbox.certs import generate_apns_certificate, generate_apns_key, generate_tls

    certificate = generate_apns_certificate(tmp_path / "cert")
    fake = FakeApns(
        generate_tls(tmp_path / "tls"),
        generate_apns_key(tmp_path / "key"),
        client_ca_file=certificate.ca_file,
    )
    fake.start()
    try:
        config = APNsConfig(
            topic="com.loki-project.loki-messenger",
            host="127.0.0.1",
            port=fake.port,
            cert_file=certificate.cert_file,
            ca_file=fake.tls.ca_file,
        )
        sender = APNsSender(config)
        token = random_apns_token()

        async def run() -> list[Verdict]:
            try:
                return [o.verdict for o in await sender.send(pushes_for([token], Provider.APNS))]
            finally:
                await sender.close()

        assert loops.run(run()) == [Verdict.ACCEPTED]
        (push,) = fake.pushes.snapshot()
        assert push.status == 200
        assert "authorization" not in push.headers
    finally:
        fake.stop()


def test_apns_without_certificate_or_jwt_is_a_configuration_error(providers: Providers) -> None:
    config = APNsConfig(
        topic="com.loki-project.loki-messenger",
        host="127.0.0.1",
        port=providers.apns.port,
        key_file=Path(providers.settings["APNS_KEY_FILE"]),
        key_id="WRONGKEYID",
        team_id=str(providers.settings["APNS_TEAM_ID"]),
        ca_file=Path(providers.settings["APNS_CA_FILE"]),
    )
    sender = APNsSender(config)

    async def run() -> list[Any]:
        try:
            return list(await sender.send(pushes_for([random_apns_token()], Provider.APNS)))
        finally:
            await sender.close()

    (outcome,) = loops.run(run())
    assert outcome.verdict is Verdict.CONFIG_ERROR
    assert outcome.reason == "InvalidProviderToken"
    assert "APNS_KEY_ID" in outcome.hint
