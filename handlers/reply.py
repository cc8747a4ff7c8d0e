"""What a handler answers, before the onion layer encodes it for v2 or v4."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    """`status` is the HTTP-like status; `code` is the 1 (success) / 0 (failure) result."""

    status: int
    code: int
    message: str

    @classmethod
    def success(cls, message: str = "Success") -> Reply:
        return cls(status=200, code=1, message=message)

    @classmethod
    def bad_request(cls, message: str) -> Reply:
        return cls(status=400, code=0, message=message)

    @classmethod
    def too_many(cls, message: str) -> Reply:
        """A rate limit refused the request (nothing was written); a later one may pass."""
        return cls(status=429, code=0, message=message)

    @classmethod
    def limit_reached(cls, message: str) -> Reply:
        """A size limit refused the request (nothing was written), e.g. a full group."""
        return cls(status=403, code=0, message=message)

    @classmethod
    def unavailable(cls) -> Reply:
        return cls(status=503, code=0, message="Temporarily unavailable, try again later")

    def body(self) -> dict[str, int | str]:
        return {"code": self.code, "message": self.message}
