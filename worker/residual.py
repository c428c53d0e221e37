"""The residual stream between a layer's projections, and where its RMSNorms run.

Qwen2 adds each attention and MLP output to the residual stream, then normalizes the sum for
the next projection. ResidualStream does that with the fused add + RMSNorm kernel; where cuBLAS
runs o or down at decode sizes, that kernel also sums the projection's split-K partials.
DeferredNormStream (decode steps where o and down run on Triton, one GPU) moves the norm into the
projections around it: o and down add the residual, each row's sum of squares and the norm
weight in their epilogue, and qkv, gate_up and lm_head scale by 1/rms in theirs
(kernels/rmsnorm.py DeferredNorm). That is two launches less per layer: at batch 1 a decode step
is a chain of ~200 kernels of a few microseconds each, and each launch boundary costs about as
much as a norm.
"""

from __future__ import annotations

import torch

from litelang.kernels.kernel_set import KernelSet
from litelang.kernels.rmsnorm import DeferredNorm
from litelang.worker.parallel import TPGroup


class ResidualStream:
    """The stream with a norm kernel before each projection that reads it. Starts with the
    embeddings and the first norm's weight."""

    def __init__(self, kernels: KernelSet, tp: TPGroup, hidden: torch.Tensor, norm_weight: torch.Tensor, eps: float):
        self.kernels, self.tp, self.eps = kernels, tp, eps
        self.pending = hidden  # added to the stream by the next norm
        self.residual: torch.Tensor | None = None
        self.norm_weight = norm_weight

    def normed(self) -> tuple[torch.Tensor, DeferredNorm | None]:
        """The next projection's input: (x, None) with x normed, or (x, norm) for the projection to
        finish (the norm= argument of the linear kernels)."""
        if self.pending.dim() == 3:  # split-K partials of the projection: the norm kernel sums them
            x, self.residual = self.kernels.rms_norm_sum(self.pending, self.norm_weight, self.eps, self.residual)
        else:
            x, self.residual = self.kernels.rms_norm(self.pending, self.norm_weight, self.eps, self.residual)
        return x, None

    def add_projection(self, x: torch.Tensor, w: torch.Tensor, norm_weight: torch.Tensor) -> None:
        """Add x @ w.T (all-reduced across tensor-parallel ranks) to the stream; the next read
        (normed) is normed with norm_weight. On one GPU the projection may stay as float32 split-K
        partials [splits, tokens, hidden] until that norm (kernels/linear.py partial_splits)."""
        partials = self.kernels.linear_partials(x, w) if self.tp.size == 1 else None
        self.pending = partials if partials is not None else self.tp.all_reduce(self.kernels.linear(x, w))
        self.norm_weight = norm_weight


class DeferredNormStream(ResidualStream):
    """The stream with each norm inside the projections around it; one GPU only (the residual add
    must follow the all-reduce). The first norm, over the embeddings, runs as a kernel."""

    def __init__(self, kernels: KernelSet, tp: TPGroup, hidden: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                 projections: int):
        assert tp.size == 1
        super().__init__(kernels, tp, hidden, norm_weight, eps)
        # one accumulator of row sums of squares per projection added to the stream
        self.sumsq = torch.zeros((projections, hidden.shape[0]), dtype=torch.int64, device=hidden.device)
        self.added = 0
        self.weighted: torch.Tensor | None = None  # the stream times the next norm's weight

    def normed(self) -> tuple[torch.Tensor, DeferredNorm | None]:
        if self.added == 0:
            return super().normed()
        return self.weighted, DeferredNorm(self.sumsq[self.added - 1], self.eps)

    def add_projection(self, x: torch.Tensor, w: torch.Tensor, norm_weight: torch.Tensor) -> None:
        self.residual, self.weighted = self.kernels.linear_residual(x, w, self.residual, self.sumsq[self.added],
                                                                    norm_weight)
        self.added += 1
