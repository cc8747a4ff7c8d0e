"""The onion request protocol, pure: bytes in, values out, no web framework and nothing that
serves HTTP (the only I/O: `keys` reads its files, the `cli` client posts requests).

`keys` (the relay's X25519 keypair and its files), `crypto` (the hop encryption), `framing`
(the outer frame), `v2` and `v4` (the request inside, and the sealed reply), `bencode`,
`call` (`ClientCall`, what either framing carries), `paths` (the onion paths and their
aliases), and the protocol's `client` side (`client`, `cli`). Serving it over HTTP is
`web/onion.py` (the core) and `web/onion_routes.py` (its Tornado front).
"""
