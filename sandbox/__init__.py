"""Real fakes of Apple's APNs and Google's FCM HTTP v1 on 127.0.0.1, for tests, benchmarks and
a local demo (``python -m sandbox``).

- :mod:`sandbox.certs`: throwaway test CA + server certificate, APNs ``.p8`` key, service account.
- :mod:`sandbox.apns`: :class:`~sandbox.apns.FakeApns`, HTTP/2 over TLS with token auth.
- :mod:`sandbox.fcm`: :class:`~sandbox.fcm.FakeFcm`, ``messages:send`` + the OAuth2 token endpoint.
- :mod:`sandbox.script`: per-token behaviours (``ok()``, ``unregistered()``, ``drop()``...) and
  the thread-safe push recorder both fakes share.
- :mod:`sandbox.h2client`: a small raw HTTP/2 client with controllable flow control.
"""
