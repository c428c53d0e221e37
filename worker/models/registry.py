"""Which model serves a checkpoint: its config.json's architectures[0] names the family.

model_type is the fallback for configs without architectures (hand-written ones); an unknown
architecture is refused before any weight is read, naming the ones litelang serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from litelang.worker.checkpoint import read_config
from litelang.worker.model import CausalLM
from litelang.worker.models.llama import LlamaModel, llama_spec
from litelang.worker.models.qwen2 import Qwen2Model, qwen2_spec
from litelang.worker.models.qwen3 import Qwen3Model, qwen3_spec
from litelang.worker.models.spec import ModelSpec, check_served


@dataclass(frozen=True)
class ModelFamily:
    architecture: str
    model_type: str
    model_class: type[CausalLM]
    read_spec: Callable[[dict[str, Any], str], ModelSpec]  # (config.json, architecture) -> spec


FAMILIES: dict[str, ModelFamily] = {
    f.architecture: f for f in (
        ModelFamily("Qwen2ForCausalLM", "qwen2", Qwen2Model, qwen2_spec),
        ModelFamily("LlamaForCausalLM", "llama", LlamaModel, llama_spec),
        ModelFamily("Qwen3ForCausalLM", "qwen3", Qwen3Model, qwen3_spec),
    )
}


def family_of(config: dict[str, Any], where: str = "checkpoint") -> ModelFamily:
    """The family for a config.json; ValueError naming the architecture and the supported ones."""
    architectures = config.get("architectures")
    if architectures:
        name = architectures[0]
        family = FAMILIES.get(name)
        asked = f"architecture {name!r}"
    else:
        model_type = config.get("model_type")
        family = next((f for f in FAMILIES.values() if f.model_type == model_type), None)
        asked = f"model_type {model_type!r} (config.json has no architectures)"
    if family is None:
        raise ValueError(f"{where}: {asked} is not supported; litelang serves {', '.join(sorted(FAMILIES))}")
    return family


def load_spec(path: str | Path) -> tuple[ModelFamily, ModelSpec]:
    """The checkpoint's family and spec, refused (ValueError) if the family's blocks cannot
    serve what its config asks for."""
    config = read_config(path)
    family = family_of(config, str(path))
    spec = family.read_spec(config, family.architecture)
    check_served(spec, str(path))
    return family, spec
