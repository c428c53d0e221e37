"""Reading an HF checkpoint directory: config.json as a dict, and the (sharded) safetensors
weights by name. What the config means for a model is the model family's business
(worker/models/registry.py), so nothing here knows one family from another."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open

# a checkpoint's tensors by HF name, as the model loads them: on its device, in its dtype
Weights = Callable[[str], torch.Tensor]


def read_config(path: str | Path) -> dict[str, Any]:
    """The checkpoint's config.json; a directory without one is not a checkpoint at all."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(
            f"{path} is not a HF checkpoint directory (no config.json); run `make model` for the default model"
        )
    return json.loads(cfg_file.read_text())


class CheckpointReader:
    """Lazy access to every tensor of the checkpoint's safetensors files by HF name."""

    def __init__(self, path: str | Path):
        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.safetensors files")
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where = {name: h for h in self._handles for name in h.keys()}

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise KeyError(f"checkpoint has no tensor {name!r}")
        return self._where[name].get_tensor(name)
