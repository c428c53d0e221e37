"""litelang: a small, fast LLM inference server (gRPC scheduler + tensor-parallel workers).

The top-level folders (scheduler/, worker/, kernels/, ...) have no `__init__.py`: they are
namespace portions of this package, so from the repository root an installed package of the
same name (Hugging Face's `kernels`, say) still wins over the folder (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

__version__ = "0.1.0"

_CLIENT_API = ("AsyncLitelangClient", "LitelangClient", "generate_request", "sampling_params")
__all__ = ["__version__", *_CLIENT_API]


def __getattr__(name: str):
    """`from litelang import LitelangClient` without importing gRPC on `import litelang`."""
    if name in _CLIENT_API:
        from litelang.client import api

        return getattr(api, name)
    raise AttributeError(f"module 'litelang' has no attribute {name!r}")
