"""The adapters around aioapns 4.0 and h2: fail loudly if the internals they use move."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from pathlib import Path
from typing import Any

import aioapns
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsBaseConnectionPool,
    APNsKeyConnectionPool,
    ChannelPool,
    H2Protocol,
)
from h2.connection import ConnectionState, H2Connection

from push.apns import APNsConfig, APNsSender, RelayAPNsProtocol
from push.fcm import FCMConfig, FCMSender
from push.outcome import Push, Verdict
from sandbox import script
from storage.records import Provider
from tests.providers import Providers
from tests.support import random_apns_token, random_fcm_token


def test_the_aioapns_internals_the_adapter_relies_on() -> None:
    assert aioapns.__version__ == "4.0" if hasattr(aioapns, "__version__") else True
    for name in ("APNS_SERVER", "APNS_PORT"):
        assert hasattr(RelayAPNsProtocol, name)
    # The protocol's parts we use: its h2 connection, its channel pool (a semaphore handing out
    # stream ids; we give slots back), flush, close, and the pool's callback on connection loss.
    init = inspect.getsource(H2Protocol.__init__)
    assert "self.conn = H2Connection()" in init
    assert "self.free_channels = ChannelPool(" in init
    assert "self._stream_id += 2" in inspect.getsource(ChannelPool.acquire)
    for name in ("release", "destroy", "bound"):
        assert hasattr(ChannelPool, name)
    assert "data_to_send()" in inspect.getsource(APNsBaseClientProtocol.flush)
    lost = inspect.getsource(APNsBaseClientProtocol.connection_lost)
    assert "self.on_connection_lost(self)" in lost
    assert "self.free_channels.destroy(" in lost
    assert "MAX_CONCURRENT_STREAMS" in inspect.getsource(H2Protocol.on_remote_settings_changed)
    assert "self.close()" in inspect.getsource(APNsBaseClientProtocol.on_connection_terminated)
    # The pool sends again after ConnectionClosed (a refused stream, a lost connection).
    send = inspect.getsource(APNsBaseConnectionPool.send_notification)
    assert "await connection.send_notification(request)" in send
    assert "except ConnectionClosed:" in send
    source = inspect.getsource(APNsKeyConnectionPool)
    assert "self.protocol_class" in source
    assert "_create_connection" in source
    # What the adapter works around, still so upstream? If one fails, simplify the adapter.
    assert "acknowledge_received_data" not in inspect.getsource(H2Protocol)
    base_send = inspect.getsource(APNsBaseClientProtocol.send_notification)
    assert "self.requests[request.notification_id] = " in base_send  # answers by apns-id
    assert "flow_control_window" not in base_send  # DATA sent whatever the windows
    assert "StreamReset" not in inspect.getsource(H2Protocol.data_received)  # resets ignored


def test_the_h2_internals_the_fcm_connection_relies_on() -> None:
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
    # aioapns alone stalls after ~1,285 such answers on one connection (no WINDOW_UPDATE).
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

    verdicts = asyncio.run(run())
    assert verdicts == [Verdict.DEAD_TOKEN] * 3000
    assert providers.apns.connections_total == 1


def test_apns_jwt_is_shared_by_connections(providers: Providers) -> None:
    sender = APNsSender(apns_config(providers, max_connections=4))
    tokens = [random_apns_token() for _ in range(3)]

    async def run() -> None:
        try:
            await sender.send(pushes_for(tokens[:1], Provider.APNS))
            assert sender._pool is not None
            extra = [await sender._pool.create_connection() for _ in range(2)]
            sender._pool.connections.extend(extra)
            providers_used = {id(c.auth_provider) for c in sender._pool.connections}
            assert len(sender._pool.connections) == 3
            assert len(providers_used) == 1
            for connection in extra:  # and they work
                request_push = pushes_for(tokens[1:2], Provider.APNS)[0]
                from push.apns import _Request
                from push.payloads import apns_payload

                payload, _ = apns_payload(request_push.data)
                request = _Request(
                    request_push.token, payload, request_push.apns_id, request_push.expiration_s
                )
                result = await connection.send_notification(request)
                assert result.status == "200"
        finally:
            await sender.close()

    asyncio.run(run())
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

    assert asyncio.run(run()) == [Verdict.ACCEPTED] * 150
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

        assert asyncio.run(run()) == [Verdict.ACCEPTED]
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

    (outcome,) = asyncio.run(run())
    assert outcome.verdict is Verdict.CONFIG_ERROR
    assert outcome.reason == "InvalidProviderToken"
    assert "APNS_KEY_ID" in outcome.hint
