"""create_app() alone is a complete WSGI application (Flask's test client, no socket)."""

from __future__ import annotations

from flask.testing import FlaskClient

from lsrpc.client import OnionClient
from tests.support import RunningRelay, random_apns_token, random_session_id


def client_for(relay: RunningRelay) -> FlaskClient:
    return relay.relay.app.test_client()


def test_v2_and_v4_through_the_flask_blueprint(sqlite_relay: RunningRelay) -> None:
    flask_client = client_for(sqlite_relay)
    onion = OnionClient(sqlite_relay.relay.keypair.public_bytes)
    params = {"token": random_apns_token(), "pubKey": random_session_id()}

    request = onion.v2("register", params, style="ios", enc_type="xchacha20")
    response = flask_client.post("/loki/v2/lsrpc", data=request.body)
    assert response.status_code == 200
    assert request.open_v2_reply(response.data) == (200, {"code": 1, "message": "Success"})

    request = onion.v4("register", params, style="libsession")
    response = flask_client.post("/oxen/v4/lsrpc", data=request.body)
    assert response.status_code == 200
    meta, body = request.open_v4_reply(response.data)
    assert (meta["code"], body) == (200, {"code": 1, "message": "Success"})


def test_flask_errors_are_plain_and_short(sqlite_relay: RunningRelay) -> None:
    flask_client = client_for(sqlite_relay)
    response = flask_client.post("/loki/v2/lsrpc", data=b"\x00\x01")
    assert (response.status_code, response.data) == (
        400,
        b"Invalid onion request: body too short for the length prefix\n",
    )
    too_big = b"x" * (sqlite_relay.settings.MAX_BODY_BYTES + 1)
    response = flask_client.post("/loki/v2/lsrpc", data=too_big)
    assert response.status_code == 413
    assert b"<" not in response.data
    assert flask_client.get("/loki/v2/lsrpc").status_code == 405
    assert flask_client.get("/healthz").status_code == 200
