"""The OpenAI-compatible HTTP gateway: a client of the scheduler's gRPC API (app.py routes,
protocol.py request bodies, formatting.py response bodies, main.py the `litelang-openai`
process)."""
