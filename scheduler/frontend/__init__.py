"""The frontend process: the client-facing gRPC server, request validation and tokenization."""
