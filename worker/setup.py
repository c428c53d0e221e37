"""Build a ready ModelRunner from the config: device, dtype, TP group, weights, KV pool.

The checkpoint's family (worker/models/registry.py) is settled before anything heavy happens, so
a checkpoint litelang cannot serve fails the worker's start-up at once, with the reason.
"""

from __future__ import annotations

import logging
import time

import torch

from litelang.configs.schema import LitelangConfig
from litelang.kernels.kernel_set import kernel_set
from litelang.worker.cuda_graph import DecodeGraphs
from litelang.worker.checkpoint import CheckpointReader
from litelang.worker.kv_pool import KVPool, bytes_per_slot, choose_num_slots
from litelang.worker.model import CausalLM
from litelang.worker.models.registry import load_spec
from litelang.worker.models.spec import ModelSpec
from litelang.worker.parallel import SMALL_ALL_REDUCE_BYTES, init_tp_group
from litelang.worker.runner import ModelRunner
from litelang.worker.warmup import warm_up

log = logging.getLogger("litelang.worker")

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def pick_device(cfg: LitelangConfig, rank: int) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda was asked for but torch sees no CUDA GPU")
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


def pick_dtype(cfg: LitelangConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype != "auto":
        return DTYPES[cfg.dtype]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def max_context(cfg: LitelangConfig, spec: ModelSpec) -> int:
    """Tokens of prompt and output together: the configured lengths, but no more than the model
    has positions (RoPE's table ends there). Reported to the scheduler in InitResponse."""
    return min(cfg.max_context, spec.max_position_embeddings)


def measure_graph_memory(model: CausalLM, kernels, cfg: LitelangConfig) -> int:
    """Bytes the decode CUDA graphs take, measured by capturing them once over a small pool."""
    spec = model.spec
    free_before = torch.cuda.mem_get_info()[0]
    pool = KVPool(spec.num_layers, 1024, model.num_local_kv_heads, spec.head_dim, model.dtype, model.device)
    runner = ModelRunner(model, pool, kernels, cfg.max_batch_size, max_context(cfg, spec))
    graphs = DecodeGraphs(runner)
    graphs.capture()
    used = free_before - torch.cuda.mem_get_info()[0]
    del graphs, runner, pool
    torch.cuda.empty_cache()
    return max(0, used)


def build_runner(cfg: LitelangConfig, rank: int) -> ModelRunner:
    t0 = time.perf_counter()
    family, spec = load_spec(cfg.model)
    device = pick_device(cfg, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dtype = pick_dtype(cfg, device)
    master = cfg.workers[0].rsplit(":", 1)[0] if cfg.workers else cfg.worker_host
    small = SMALL_ALL_REDUCE_BYTES if cfg.symm_all_reduce else 0
    tp = init_tp_group(rank, cfg.tp, master, cfg.dist_port, device, small, dtype)
    context = max_context(cfg, spec)
    if context < cfg.max_context:
        log.warning(
            "max_input_length + max_output_length = %d exceeds the model's %d positions: requests are "
            "limited to %d tokens of prompt and output together", cfg.max_context, context, context,
        )
    kernels = kernel_set(use_triton=device.type == "cuda", deterministic=cfg.deterministic)
    model = family.model_class(spec, kernels, tp, device, dtype)
    model.load(CheckpointReader(cfg.model))
    per_slot = bytes_per_slot(spec.num_layers, model.num_local_kv_heads, spec.head_dim, dtype)
    use_graphs = device.type == "cuda" and cfg.cuda_graphs
    reserve = measure_graph_memory(model, kernels, cfg) if use_graphs and not cfg.kv_slots else 0
    slots = choose_num_slots(
        device, per_slot, cfg.mem_usage, cfg.kv_slots, 2 * cfg.max_batch_size * context, reserve
    )
    pool = KVPool(spec.num_layers, slots, model.num_local_kv_heads, spec.head_dim, dtype, device)
    runner = ModelRunner(model, pool, kernels, cfg.max_batch_size, context)
    if use_graphs:
        runner.graphs = DecodeGraphs(runner)
        runner.graphs.capture()
    if cfg.warmup:
        warm_up(runner)  # Triton compiles the eager steps' kernels now, not in a request's step
    log.info(
        "rank %d/%d ready in %.1fs: %s on %s %s, kernels=%s, %d KV slots (%.1f MiB)", rank, cfg.tp,
        time.perf_counter() - t0, spec.architecture, device, dtype, kernels.name, slots, slots * per_slot / 2**20,
    )
    return runner
