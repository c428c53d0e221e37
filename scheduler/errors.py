"""The two ways a request is refused, raised on both sides of the frontend/engine pipe: here, low
in the import graph, so neither side imports the other for them."""

from __future__ import annotations

import grpc


class InvalidRequest(ValueError):
    """Never valid, whatever the server's load: INVALID_ARGUMENT."""


class RejectedError(Exception):
    """A request the server cannot take now; carries the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
