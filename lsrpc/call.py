"""`ClientCall`: what a client asked for, whichever onion framing (v2 or v4) carried it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ClientCall:
    """An endpoint name and its parameters, whichever onion version carried them."""

    endpoint: str
    params: dict[str, Any]
