# pn-relay settings. Copy to config.py (read from the working directory) or pass
# --config FILE. Every setting can also be given as an environment variable PN_<NAME>
# (PN_PORT=3005), which wins over the file; a variable without PN_ is ignored, with a warning.
# Lines left commented show the default.
#
# This is Python, and values are Python values: numbers and True/False without quotes
# (PORT = 3005, APNS_SANDBOX = True), paths and text in quotes; "~" in a path is your home.
# Every name this file sets must be one of the settings below, exactly as written here (upper
# case), so that a typo stops the start instead of being ignored. Names of your own must start
# with "_" (e.g. _BASE = "/srv/pn-relay", then DATA_DIR = _BASE + "/data"); imports and the
# functions or classes you define are fine.

# -- Network ------------------------------------------------------------------------------
# Address to listen on. The default keeps the relay private to this machine; service nodes
# reach it through your reverse proxy or a public address you choose (e.g. "0.0.0.0").
# HOST = "127.0.0.1"

# TCP port. Service nodes POST onion requests to /loki/v2/lsrpc and /oxen/v4/lsrpc here.
# PORT = 3000

# True: several `python server.py` processes may listen on the same port (SO_REUSEPORT); the
# kernel spreads connections over them. Give them one PostgreSQL DATABASE_URL and the same
# key files (bench/README.md measures what they add up to).
# REUSE_PORT = False

# -- Files --------------------------------------------------------------------------------
# Where the relay keeps its key files and (by default) its SQLite database.
# DATA_DIR = "./data"

# SQLAlchemy URL of the database. Empty: an SQLite file in DATA_DIR. For several processes
# or machines, PostgreSQL: "postgresql+psycopg://user:password@host/dbname".
# DATABASE_URL = ""

# The three key files below are created (mode 0600) only on the first start: when DATA_DIR
# does not exist yet or holds nothing but key files (say, the 2021 server's key you copied
# in), and only those not named here. A key file you name must exist; a missing one stops
# the start, so that a typo never makes a new key. `python server.py --init` creates missing
# key files on purpose. The database keeps a fingerprint of each (never the secret itself):
# when it holds registrations, a missing or different secret stops the start, naming the file.

# The server's X25519 private key: 64 hex characters (a trailing newline allowed), the
# 2021 push server's format. Clients pin its public key (python server.py --print-pubkey):
# keep this file, or ship new client builds. None: DATA_DIR/server_key.hex
# KEY_FILE = None

# Secret for the keyed hashes that stand in for Session IDs and group keys in the database.
# Every process sharing a database needs the same file. None: DATA_DIR/identity_secret.hex
# IDENTITY_KEY_FILE = None

# Secret that seals device tokens in the database. Lose it and every registration is
# unusable. None: DATA_DIR/token_secret.hex
# TOKEN_KEY_FILE = None

# -- Limits -------------------------------------------------------------------------------
# Largest onion request body accepted; larger ones get HTTP 413. Real requests are a few KiB.
# MAX_BODY_BYTES = 65536

# Largest notify `data` (decoded bytes). Pushes carry at most 4 KiB anyway; larger messages
# are pushed without their data, and the app shows a generic notification.
# MAX_DATA_BYTES = 8192

# Worker threads for the Flask routes (statistics, metrics). Onion requests and /healthz do
# not use them.
# WEB_THREADS = 16

# Database connection pool size; 0: WEB_THREADS + 4.
# DB_POOL_SIZE = 0

# Most writes committed in one transaction (group commit). Larger batches mean fewer commits
# under load; a request waits only for the batch it is in.
# WRITE_BATCH_MAX = 256

# Seconds the writer waits for more writes to join a transaction, only while it is busy (its
# last commit less than 5 of these ago; an idle relay commits at once). Under a moderate
# load (hundreds of requests a second) this turns one commit and one wake-up per request into
# one per few requests: ~40 % less CPU per notify at 600/s, for ~3 ms more latency on a
# notify's answer (bench/README.md). 0 commits every batch at once.
# WRITE_GATHER = 0.004

# SQLite: where a small batch of the event loop's writes (fewer than 8) runs. "loop": on the
# loop's own thread, through a second connection, when the writer thread is not in a
# transaction and SQLite's lock is free at once (no hand-over to the thread and back: less CPU
# per notify at a moderate load, bench/README.md); otherwise, and for larger batches, on the
# writer thread. "thread": every write on the writer thread. PostgreSQL always uses the thread.
# SQLITE_SMALL_WRITES = "loop"

# Seconds during which an identical notify (same send_to and data) pushes only once:
# clients retry an onion request up to four times. 0 turns deduplication off.
# DEDUP_WINDOW = 600.0

# SQLite only. "FULL": a notify is answered only after its commit is on disk and survives a
# power cut or kernel crash (one fsync per group commit, shared by every write in it).
# "NORMAL": faster, and safe when the process is killed, but a power loss or kernel crash
# can roll back the last notifies already answered Success: those pushes are then lost.
# SQLITE_SYNCHRONOUS = "FULL"

# -- Logging ------------------------------------------------------------------------------
# DEBUG, INFO, WARNING or ERROR. No level ever logs a Session ID, key, token or message.
# LOG_LEVEL = "INFO"

# "text": one readable line per event on standard error. "json": one JSON object per line
# ({"time", "level", "logger", "message"}), for log shippers.
# LOG_FORMAT = "text"

# True: one line per HTTP request (method, path, status, duration), at INFO. Never a body, a
# query string or an address; the path of a request for an unknown page shows as "-".
# ACCESS_LOG = False

# -- Delivery: APNs -----------------------------------------------------------------------
# A provider without credentials is off: its pushes are counted as failed and dropped, and
# the start-up log says how to turn it on.
# The app's bundle id, sent as apns-topic. Session's is com.loki-project.loki-messenger.
# APNS_TOPIC = "com.loki-project.loki-messenger"

# Token auth (recommended): the .p8 key Apple issued, its key id and your team id (all three,
# or none). The relay signs one JWT per team and renews it every 30 minutes.
# APNS_KEY_FILE = None
# APNS_KEY_ID = ""
# APNS_TEAM_ID = ""

# Or certificate auth: a PEM file holding the push certificate and its private key.
# APNS_CERT_FILE = None

# True: Apple's sandbox (development builds) instead of production.
# APNS_SANDBOX = False

# host:port replacing Apple's host (for a local fake APNs: python -m sandbox).
# APNS_ENDPOINT = ""

# A CA file to trust for APNS_ENDPOINT's certificate (the sandbox's test CA). None: the
# system's trusted CAs.
# APNS_CA_FILE = None

# HTTP/2 connections to APNs; each carries up to 1,000 concurrent streams.
# APNS_CONNECTIONS = 4

# Most APNs pushes awaiting an answer at once. 250 covers 2,500 pushes/s at Apple's usual
# ~100 ms round trip; more makes h2's per-stream bookkeeping slower (bench/README.md).
# APNS_MAX_IN_FLIGHT = 250

# -- Delivery: FCM ------------------------------------------------------------------------
# The Google service account key (JSON) of the Firebase project. Its token_uri is where the
# OAuth token comes from.
# FCM_SERVICE_ACCOUNT_FILE = None

# The Firebase project id; empty: the service account's.
# FCM_PROJECT_ID = ""

# A URL replacing https://fcm.googleapis.com (for a local fake FCM: python -m sandbox).
# FCM_ENDPOINT = ""

# A CA file to trust for an https FCM_ENDPOINT's certificate (the sandbox's test CA), and for
# the service account's token endpoint besides the usual CAs. None: the system's CAs only.
# FCM_CA_FILE = None

# Most FCM pushes awaiting an answer at once, multiplexed over a few HTTP/2 connections of
# up to 100 streams each. 250 covers 2,500 pushes/s at a ~100 ms round trip; with 100, the
# dispatcher waited on its own round trips (bench/push_bench.py). Over HTTP/1.1 (an endpoint
# without h2) at most 16 connections carry one request each; the rest queue.
# FCM_MAX_IN_FLIGHT = 250

# -- Delivery: retries --------------------------------------------------------------------
# Seconds after a notify during which a push is retried (provider down, throttled); after
# that it is dropped and counted. Also sent to APNs as apns-expiration.
# PUSH_MAX_AGE = 3600.0

# Seconds before the first retry of a push that failed transiently; each further retry waits
# twice as long (with jitter, at most 5 minutes), or longer if the provider says Retry-After.
# PUSH_RETRY_BASE = 1.0

# Seconds a dispatcher holds a push it is sending. If the process dies meanwhile, the push
# is sent again when the lease runs out (delivery is at-least-once).
# DELIVERY_LEASE = 60.0

# Seconds a dispatcher lane that found nothing more to send waits, once woken by a new
# notify, before it claims: the notifies of that moment are then claimed, sent and settled
# together instead of one by one. Adds at most this to a push's latency when the relay is
# quiet; none while it is busy. 0 claims at once.
# PUSH_GATHER = 0.01

# -- Statistics and metrics ---------------------------------------------------------------
# POST /get_statistics_data answers only HTTP Basic credentials matching these. With no user
# set it refuses everyone (and the start-up log says so). There is no default password: a
# user needs STATS_PASSWORD_HASH or STATS_PASSWORD.
# STATS_USERNAME = ""

# The password, in clear. Prefer STATS_PASSWORD_HASH; set one, not both.
# STATS_PASSWORD = ""

# A pbkdf2_sha256$... line from `python -m stats.hash_password`.
# STATS_PASSWORD_HASH = ""

# Days of per-minute statistics kept; a daily job (one process, even when several share the
# database) deletes older rows. 0 keeps them forever.
# STATS_RETENTION_DAYS = 400

# Serve Prometheus metrics at GET /metrics (counters by provider and outcome, push latency,
# in-flight gauges, queue depth and age). Same credentials as the statistics endpoint...
# METRICS_ENABLED = True

# ...unless this is True (for a scraper on a private network).
# METRICS_PUBLIC = False

# -- Slow clients and statistics authentication (docs/security.md) ------------------------
# Seconds a client has to send a request body once its headers arrived; slower ones are
# disconnected. Onion requests are a few KiB.
# BODY_TIMEOUT = 30.0

# Seconds a connection may stay open between requests, which is also the time a client has
# to send a request's headers; then it is closed.
# IDLE_CONNECTION_TIMEOUT = 60.0

# Most connections open at once (per process). Beyond it a new connection gets a short 503
# and is closed. The relay raises its open-file limit to fit, or lowers this with a warning.
# MAX_CONNECTIONS = 4096

# Threads that check a STATS_PASSWORD_HASH (PBKDF2, a fraction of a second of CPU each).
# STATS_AUTH_THREADS = 2

# Password checks running or waiting at once; beyond it the answer is 429 straight away.
# STATS_AUTH_MAX_PENDING = 8

# Failed statistics/metrics logins allowed per minute (in bursts of as many); beyond it the
# answer is 429 with Retry-After, without checking the password.
# STATS_AUTH_FAILURES_PER_MINUTE = 30

# -- Health (GET /healthz) ----------------------------------------------------------------
# /healthz answers 503 when the oldest queued push has waited longer than this many seconds
# (pushes are not going out), as well as when the database refuses writes or a provider is
# paused for a configuration error. 0 leaves the queue's age out of the check.
# HEALTH_MAX_QUEUE_AGE = 1800.0
# -- Abuse limits (docs/security.md) ------------------------------------------------------
# Anyone may register any token under any Session ID and notify anyone: requests come
# through onion routing, with no address to block. These bound what one Session ID or group
# can cost. A refused request gets an encrypted error and is counted in /metrics
# (pn_relay_refused_total{reason}).

# Devices registered under one Session ID. At the cap, a new registration replaces the least
# recently registered device (clients register again at every start, so the one unused the
# longest), and what was queued for it: a user's new phone always works.
# MAX_DEVICES_PER_SESSION = 20

# Members of one closed group. Session's legacy closed groups hold at most 100; the slack is
# for members who left without unsubscribing. A new member beyond it is refused (403); one
# already in the group is not affected.
# MAX_GROUP_MEMBERS = 200

# Notifies one recipient (a Session ID or a group) may receive a minute on average, and at
# once after a quiet spell. Beyond that a notify is refused (429), not queued. Counted per
# process: with several processes a recipient may get up to that many times as many.
# NOTIFY_PER_MINUTE = 120
# NOTIFY_BURST = 60

# Deliveries written per transaction when a notify fans out to many devices (a large group):
# other requests' writes run between the chunks, so none waits behind the whole fan-out. The
# notify is answered once every chunk is written.
# FANOUT_CHUNK = 500
# -- Workers (issue 10) -------------------------------------------------------------------
# Relay processes on this machine (also --workers N). Each takes requests on the same port
# and sends pushes; they share the database. A supervisor process starts them, restarts one
# that dies, and stops them all on SIGTERM or Ctrl-C. "auto": one per CPU this process may
# use. With more than one, log lines carry the process id: pn_relay[4242].
# WORKERS = 1

# The event loop under Tornado, in every relay process: "uvloop" (libuv, written in C; about
# 4-6 % less relay CPU per notify+push, measured in bench/README.md) or "asyncio" (Python's
# own: the one to fall back on should uvloop misbehave).
# EVENT_LOOP = "uvloop"
# The HTTP/1.1 server: "own" (web/h1server.py: an asyncio protocol per connection, less CPU
# per request than Tornado's, the same bytes on the wire; bench/README.md) or "tornado"
# (Tornado's HTTPServer: the one to fall back on).
# HTTP_SERVER = "own"
# -- Provider timeouts (docs/security.md, "Fault tests") ----------------------------------
# Seconds to wait for APNs to answer one push; then it counts as failed for now and is sent
# again later (with backoff). A late answer is ignored, so Apple may deliver that push twice.
# APNS_REQUEST_TIMEOUT = 15.0
