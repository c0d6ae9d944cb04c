"""The one error type admin calls raise, the same over gRPC and over the in-memory transport."""

from __future__ import annotations

# gRPC status code names used by the admin API (grpc.StatusCode[name]).
INVALID_ARGUMENT = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"
UNAUTHENTICATED = "UNAUTHENTICATED"
UNAVAILABLE = "UNAVAILABLE"
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
INTERNAL = "INTERNAL"

#: Codes that mean the caller's input was wrong (the CLI exits 2 on these, 1 on the rest).
BAD_INPUT_CODES = frozenset({INVALID_ARGUMENT, NOT_FOUND})


class AdminError(Exception):
    """An admin call failed; ``code`` is the gRPC status code name, ``details`` the reason."""

    def __init__(self, code: str, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code}: {details}")

    @property
    def bad_input(self) -> bool:
        return self.code in BAD_INPUT_CODES
