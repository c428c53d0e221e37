"""The self-attention block on this rank's heads, for any family the spec describes.

q, k and v are one fused projection (rows sharded by head for tensor parallelism); RoPE and the
KV store follow it, in its epilogue where the kernels can, and o is the row-parallel projection
that adds the heads' output to the residual stream, where the residual add and the next norm
fuse with it (worker/residual.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from litelang.kernels.kernel_set import KernelSet
from litelang.kernels.linear import split_qkv
from litelang.kernels.rmsnorm import DeferredNorm
from litelang.worker.checkpoint import Weights
from litelang.worker.forward_batch import ForwardBatch
from litelang.worker.models.spec import ModelSpec
from litelang.worker.parallel import TPGroup, shard_range
from litelang.worker.residual import ResidualStream


@dataclass(frozen=True)
class HeadShard:
    """This rank's heads: q heads split evenly, kv heads split too, or each replicated on
    tp / kv heads ranks when there are fewer kv heads than ranks."""

    head_dim: int
    q_start: int
    q_heads: int
    kv_start: int
    kv_heads: int

    @classmethod
    def of(cls, spec: ModelSpec, tp: TPGroup) -> HeadShard:
        if spec.num_heads % tp.size:
            raise ValueError(f"tp={tp.size} must divide the {spec.num_heads} attention heads")
        if tp.size <= spec.num_kv_heads:
            kv_start, kv_end = shard_range(spec.num_kv_heads, tp.rank, tp.size)
        elif tp.size % spec.num_kv_heads:
            raise ValueError(f"tp={tp.size} must divide or be a multiple of the {spec.num_kv_heads} kv heads")
        else:
            kv_start = tp.rank * spec.num_kv_heads // tp.size
            kv_end = kv_start + 1
        q_heads = spec.num_heads // tp.size
        return cls(spec.head_dim, tp.rank * q_heads, q_heads, kv_start, kv_end - kv_start)

    @property
    def q_rows(self) -> slice:
        """This rank's rows of q_proj (and columns of o_proj)."""
        return slice(self.q_start * self.head_dim, (self.q_start + self.q_heads) * self.head_dim)

    @property
    def kv_rows(self) -> slice:
        return slice(self.kv_start * self.head_dim, (self.kv_start + self.kv_heads) * self.head_dim)


@dataclass(frozen=True)
class QKNorm:
    """Per-head RMSNorm of q and k before RoPE (Qwen3): one weight [head_dim] each, on every rank."""

    q_weight: torch.Tensor
    k_weight: torch.Tensor
    eps: float

    def __call__(self, kernels: KernelSet, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [tokens, q heads, head_dim], k [tokens, kv heads, head_dim] -> both normed (new tensors)."""
        return kernels.rms_norm(q, self.q_weight, self.eps)[0], kernels.rms_norm(k, self.k_weight, self.eps)[0]


class Attention:
    def __init__(self, kernels: KernelSet, heads: HeadShard, cos_sin: torch.Tensor, qkv_weight: torch.Tensor,
                 qkv_bias: torch.Tensor | None, o_weight: torch.Tensor, qk_norm: QKNorm | None = None):
        self.kernels, self.heads, self.cos_sin = kernels, heads, cos_sin
        self.qkv_weight = qkv_weight  # [(q + 2 kv) local heads * head_dim, hidden]
        self.qkv_bias = qkv_bias
        self.o_weight = o_weight  # [hidden, q local heads * head_dim]
        self.qk_norm = qk_norm
        self.q_size = heads.q_heads * heads.head_dim
        self.scale = heads.head_dim**-0.5

    @classmethod
    def load(cls, weights: Weights, prefix: str, spec: ModelSpec, heads: HeadShard, kernels: KernelSet,
             cos_sin: torch.Tensor) -> Attention:
        """From HF's q_proj, k_proj, v_proj, o_proj (and q_norm, k_norm) under prefix."""
        q, kv = heads.q_rows, heads.kv_rows
        qkv = torch.cat([weights(prefix + "q_proj.weight")[q], weights(prefix + "k_proj.weight")[kv],
                         weights(prefix + "v_proj.weight")[kv]])
        bias = None
        if spec.attention_bias:
            bias = torch.cat([weights(prefix + "q_proj.bias")[q], weights(prefix + "k_proj.bias")[kv],
                              weights(prefix + "v_proj.bias")[kv]])
        qk_norm = None
        if spec.qk_norm:
            qk_norm = QKNorm(weights(prefix + "q_norm.weight"), weights(prefix + "k_norm.weight"), spec.rms_norm_eps)
        o = weights(prefix + "o_proj.weight")[:, q]
        return cls(kernels, heads, cos_sin, qkv.contiguous(), bias, o.contiguous(), qk_norm)

    def add_to(self, stream: ResidualStream, batch: ForwardBatch, k_pool: torch.Tensor, v_pool: torch.Tensor,
               next_norm: torch.Tensor) -> None:
        """Attend over the stream's normed read, add o of the heads' output to the stream; its next
        read is normed with next_norm."""
        x, norm = stream.normed()
        stream.add_projection(self.heads_output(x, norm, batch, k_pool, v_pool), self.o_weight, next_norm)

    def heads_output(self, x: torch.Tensor, norm: DeferredNorm | None, batch: ForwardBatch, k_pool: torch.Tensor,
                     v_pool: torch.Tensor) -> torch.Tensor:
        """Attention over x (normed, or with the norm for the projection to apply), from the
        q‖k‖v projection up to o: the heads' outputs [tokens, q local heads * head_dim]."""
        ks = self.kernels
        n = x.shape[0]
        q = self._project_rotate_store(x, norm, batch, k_pool, v_pool)
        e = batch.num_extend_tokens
        parts = []
        if batch.num_extends:
            parts.append(ks.extend_attention(
                q[:e], k_pool, v_pool, batch.req_to_slot, batch.extend_rows,
                batch.extend_cu_seqlens, batch.extend_prefix_lens, self.scale, max_new_len=batch.extend_max_new_len,
            ))
        if batch.num_decodes:
            parts.append(ks.decode_attention(
                q[e:], k_pool, v_pool, batch.req_to_slot, batch.decode_rows, batch.decode_seq_lens, self.scale
            ))
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out.reshape(n, self.q_size)

    def _project_rotate_store(self, x: torch.Tensor, norm: DeferredNorm | None, batch: ForwardBatch,
                              k_pool: torch.Tensor, v_pool: torch.Tensor) -> torch.Tensor:
        """q [tokens, q local heads, head_dim], rotated; rotated k and v go to the pool, where
        attention reads them."""
        ks, h = self.kernels, self.heads
        if self.qk_norm is None:
            # one launch at decode batch sizes; of qkv only the q columns count after it
            qkv = ks.linear_rope_store(x, self.qkv_weight, self.qkv_bias, batch.positions, self.cos_sin, k_pool,
                                       v_pool, batch.slots, h.q_heads, h.kv_heads, norm=norm)
            return qkv[:, : self.q_size].view(x.shape[0], h.q_heads, h.head_dim)
        # the norm sits between the projection and RoPE, so they run as separate kernels
        qkv = ks.linear(x, self.qkv_weight, self.qkv_bias, norm=norm)
        q, k, v = split_qkv(qkv, h.q_heads, h.kv_heads, h.head_dim)
        q, k = self.qk_norm(ks, q, k)
        ks.apply_rope(q, k, batch.positions, self.cos_sin)
        ks.store_kv(k_pool, v_pool, k, v, batch.slots)
        return q
