"""A pre-norm decoder layer: attention, then the MLP, each reading the residual stream normed
and adding its output back.

The layer holds its norms' weights but does not run them: the stream does, fused with the add
before them or deferred into the projections around them (worker/residual.py), so each block
hands the stream the weight its next read is normed with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from litelang.worker.forward_batch import ForwardBatch
from litelang.worker.models.attention import Attention
from litelang.worker.models.mlp import GatedMLP
from litelang.worker.residual import ResidualStream


@dataclass
class DecoderLayer:
    input_norm: torch.Tensor  # normed with by the block before this layer (or the stream's start)
    attention: Attention
    post_norm: torch.Tensor
    mlp: GatedMLP

    def add_to(self, stream: ResidualStream, batch: ForwardBatch, k_pool: torch.Tensor, v_pool: torch.Tensor,
               next_norm: torch.Tensor) -> None:
        """next_norm: the weight of the norm after this layer (the next layer's input norm, or the
        final norm)."""
        self.attention.add_to(stream, batch, k_pool, v_pool, self.post_norm)
        self.mlp.add_to(stream, next_norm)
