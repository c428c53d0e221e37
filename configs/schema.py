"""The one configuration schema: the YAML files, the command-line flags of every binary and both
services read the same `LitelangConfig`.

Precedence: defaults < YAML file (--config) < command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

DEFAULT_MODEL = "models/qwen2.5-coder-0.5b-instruct"


@dataclass
class LitelangConfig:
    # --- model and devices ---
    model: str = DEFAULT_MODEL          # any HF checkpoint directory with model_type qwen2
    device: str = "auto"                # auto | cuda | cpu
    dtype: str = "auto"                 # auto (bf16 on GPU, fp32 on CPU) | bfloat16 | float16 | float32
    tp: int = 1                         # tensor-parallel ranks, one worker process each
    # --- network ---
    host: str = "127.0.0.1"             # scheduler listen address
    port: int = 50051                   # scheduler (client-facing) port
    worker_host: str = "127.0.0.1"
    worker_base_port: int = 50061       # rank r listens on worker_base_port + r
    workers: list[str] = field(default_factory=list)  # explicit worker addresses (multi-host); overrides the two above
    dist_port: int = 29571              # torch.distributed rendezvous port of rank 0 (tp > 1)
    metrics_port: int = 0               # Prometheus /metrics over HTTP on host:metrics_port (0 = off)
    openai_port: int = 0                # OpenAI-compatible HTTP API on host:openai_port (litelang-openai; 0 = off)
    served_model_name: str = ""         # the model id that API reports and accepts (default: the model folder's name)
    api_key: str = ""                   # that API then asks for `Authorization: Bearer <api_key>` (also LITELANG_API_KEY)
    allowed_origins: list[str] = field(default_factory=lambda: ["*"])  # that API's CORS origins, for browser clients ([] = none)
    # --- limits ---
    max_batch_size: int = 64            # running requests
    max_input_length: int = 4096        # prompt tokens; longer prompts get INVALID_ARGUMENT
    max_output_length: int = 2048       # upper bound (and default) for max_new_tokens
    max_prefill_tokens: int = 8192      # tokens prefilled per step; longer prompts are chunked
    max_reqs: int = 256                 # waiting-queue bound; beyond it RESOURCE_EXHAUSTED
    mem_usage: float = 0.85             # share of free device memory (after weights) for the KV pool
    kv_slots: int = 0                   # fixed KV pool size in tokens (0 = size from mem_usage)
    busy_scale: float = 0.5             # admission optimism: see docs/ARCHITECTURE.md
    use_radix_cache: bool = True        # reuse KV of shared prefixes across requests
    cuda_graphs: bool = True            # capture decode steps in CUDA graphs (GPU only)
    symm_all_reduce: bool = True        # tp > 1 on GPUs: decode-size all-reduces through symmetric memory, not NCCL
    deterministic: bool = False         # batch-invariant kernels: a request's output does not depend on its batch (slower)
    warmup: bool = True                 # run prefill/mixed steps of every kernel shape at start-up (GPU only)
    stream_interval: int = 1            # tokens per stream message (larger: fewer messages, burstier streams)
    pipeline_depth: int = 3             # steps in flight to the workers (see docs/ARCHITECTURE.md, overlap)
    # --- misc ---
    seed: int = 0                       # seed for requests that don't carry one
    log_level: str = "info"
    startup_timeout_s: float = 600.0    # litelang-launch: how long to wait for each process to be healthy

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid litelang config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        p = []
        if self.tp < 1:
            p.append(f"tp must be >= 1 (got {self.tp})")
        if self.workers and len(self.workers) != self.tp:
            p.append(f"workers lists {len(self.workers)} addresses but tp is {self.tp}")
        for name in ("max_batch_size", "max_input_length", "max_output_length", "max_prefill_tokens", "max_reqs",
                     "stream_interval", "pipeline_depth"):
            if getattr(self, name) < 1:
                p.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if not 0.0 < self.mem_usage <= 1.0:
            p.append(f"mem_usage must be in (0, 1] (got {self.mem_usage})")
        if not 0.0 <= self.busy_scale <= 1.0:
            p.append(f"busy_scale must be in [0, 1] (got {self.busy_scale})")
        for name in ("port", "metrics_port", "openai_port"):
            if not 0 <= getattr(self, name) <= 65535:
                p.append(f"{name} must be a TCP port in [0, 65535] (got {getattr(self, name)})")
        if self.kv_slots < 0:
            p.append(f"kv_slots must be >= 0 (got {self.kv_slots})")
        if self.deterministic and self.tp > 1:
            p.append("deterministic needs tp 1: NCCL's all-reduce order depends on the message size, so on "
                     "more ranks a request's output would still depend on its batch")
        if self.device not in ("auto", "cuda", "cpu"):
            p.append(f"device must be auto, cuda or cpu (got {self.device!r})")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            p.append(f"dtype must be auto, bfloat16, float16 or float32 (got {self.dtype!r})")
        return p

    @property
    def max_context(self) -> int:
        return self.max_input_length + self.max_output_length

    def worker_addresses(self) -> list[str]:
        if self.workers:
            return list(self.workers)
        return [f"{self.worker_host}:{self.worker_base_port + r}" for r in range(self.tp)]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # --- loading ---

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "LitelangConfig":
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        data.update(overrides)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "LitelangConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _field_type(f: dataclasses.Field) -> type:
    hints = typing.get_type_hints(LitelangConfig)
    return hints[f.name]


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add --config FILE and one --flag per config field (defaults None = 'not given')."""
    parser.add_argument("--config", help="YAML config file (keys as below, with underscores)")
    for f in fields(LitelangConfig):
        flag = "--" + f.name.replace("_", "-")
        t = _field_type(f)
        if t is bool:
            parser.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction)
        elif typing.get_origin(t) is list:
            parser.add_argument(flag, dest=f.name, default=None, nargs="*")
        else:
            parser.add_argument(flag, dest=f.name, default=None, type=t)


def config_from_args(args: argparse.Namespace) -> LitelangConfig:
    """Build the config from --config (if any) with command-line flags on top."""
    overrides = {
        f.name: getattr(args, f.name) for f in fields(LitelangConfig) if getattr(args, f.name, None) is not None
    }
    if getattr(args, "config", None):
        return LitelangConfig.from_yaml(args.config, **overrides)
    return LitelangConfig(**overrides)
