"""The gated MLP block: silu(x @ gate.T) * (x @ up.T), then down.

gate and up are one fused projection whose SiLU-and-multiply runs in its epilogue, sharded by
column for tensor parallelism; down is row-parallel and, like attention's o, adds its output to
the residual stream (worker/residual.py).
"""

from __future__ import annotations

import torch

from litelang.kernels.kernel_set import KernelSet
from litelang.worker.checkpoint import Weights
from litelang.worker.models.spec import ModelSpec
from litelang.worker.parallel import TPGroup, shard_range
from litelang.worker.residual import ResidualStream


class GatedMLP:
    def __init__(self, kernels: KernelSet, gate_up_weight: torch.Tensor, down_weight: torch.Tensor):
        self.kernels = kernels
        self.gate_up_weight = gate_up_weight  # [2 * local intermediate, hidden]: gate rows, then up rows
        self.down_weight = down_weight  # [hidden, local intermediate]

    @classmethod
    def load(cls, weights: Weights, prefix: str, spec: ModelSpec, tp: TPGroup, kernels: KernelSet) -> GatedMLP:
        """From HF's gate_proj, up_proj and down_proj under prefix."""
        i0, i1 = shard_range(spec.intermediate_size, tp.rank, tp.size)
        gate_up = torch.cat([weights(prefix + "gate_proj.weight")[i0:i1], weights(prefix + "up_proj.weight")[i0:i1]])
        return cls(kernels, gate_up.contiguous(), weights(prefix + "down_proj.weight")[:, i0:i1].contiguous())

    def add_to(self, stream: ResidualStream, next_norm: torch.Tensor) -> None:
        """Add the MLP of the stream's normed read to the stream; its next read is normed with
        next_norm."""
        x, norm = stream.normed()
        stream.add_projection(self.kernels.linear_silu_mul(x, self.gate_up_weight, norm=norm), self.down_weight,
                              next_norm)
