"""litelang: a small, fast LLM inference server (gRPC scheduler + tensor-parallel Qwen2 workers)."""

__version__ = "0.1.0"
