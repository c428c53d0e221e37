"""Qwen2 forward pass over a flat, unpadded batch of tokens, on the kernels of a KernelSet.

Weights are fused where it saves launches (q‖k‖v, gate‖up) and sharded for tensor
parallelism: q/k/v by head and gate/up by column (column-parallel), o and down by row with an
all-reduce (row-parallel). Embedding and lm_head are replicated on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from litelang.kernels.kernel_set import KernelSet
from litelang.kernels.rmsnorm import DeferredNorm
from litelang.kernels.greedy import logprobs_from_argmax
from litelang.kernels.rope import rope_cos_sin_cache
from litelang.kernels.sampling import top_logprobs
from litelang.worker.checkpoint import CheckpointReader, Qwen2Spec
from litelang.worker.forward_batch import ForwardBatch
from litelang.worker.parallel import TPGroup, shard_range
from litelang.worker.residual import DeferredNormStream, ResidualStream

# rows of logits per pass when scoring a prompt: 1,024 x 151,936 bf16 is 311 MB
SCORE_ROWS = 1024


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    qkv_weight: torch.Tensor   # [(q + 2 kv) local heads * head_dim, hidden]
    qkv_bias: torch.Tensor | None
    o_weight: torch.Tensor     # [hidden, q local heads * head_dim]
    post_norm: torch.Tensor
    gate_up_weight: torch.Tensor  # [2 * local intermediate, hidden]
    down_weight: torch.Tensor  # [hidden, local intermediate]


def local_kv_heads(spec: Qwen2Spec, tp: TPGroup) -> tuple[int, int]:
    """(first kv head, count) held by this rank; kv heads are replicated when tp > kv heads."""
    if tp.size <= spec.num_kv_heads:
        start, end = shard_range(spec.num_kv_heads, tp.rank, tp.size)
        return start, end - start
    if tp.size % spec.num_kv_heads:
        raise ValueError(f"tp={tp.size} must divide or be a multiple of the {spec.num_kv_heads} kv heads")
    return tp.rank * spec.num_kv_heads // tp.size, 1


class Qwen2Model:
    def __init__(self, spec: Qwen2Spec, kernels: KernelSet, tp: TPGroup, device: torch.device, dtype: torch.dtype):
        if spec.num_heads % tp.size:
            raise ValueError(f"tp={tp.size} must divide the {spec.num_heads} attention heads")
        self.spec, self.kernels, self.tp = spec, kernels, tp
        self.device, self.dtype = device, dtype
        self.num_local_heads = spec.num_heads // tp.size
        self.kv_head_start, self.num_local_kv_heads = local_kv_heads(spec, tp)
        self.scale = spec.head_dim**-0.5
        self.cos_sin = rope_cos_sin_cache(spec.head_dim, spec.max_position_embeddings, spec.rope_theta, device)
        self.layers: list[LayerWeights] = []

    # ---------------- loading ----------------

    def load(self, reader: CheckpointReader) -> None:
        s, tp = self.spec, self.tp
        d = s.head_dim
        q0, q1 = shard_range(s.num_heads * d, tp.rank, tp.size)
        kv0 = self.kv_head_start * d
        kv1 = kv0 + self.num_local_kv_heads * d
        i0, i1 = shard_range(s.intermediate_size, tp.rank, tp.size)

        def t(name: str) -> torch.Tensor:
            return reader.get(name).to(device=self.device, dtype=self.dtype)

        self.embed = t("model.embed_tokens.weight")
        self.final_norm = t("model.norm.weight")
        if "lm_head.weight" in reader and not s.tie_word_embeddings:
            self.lm_head = t("lm_head.weight")
        else:
            self.lm_head = self.embed
        for i in range(s.num_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            qkv = torch.cat([t(a + "q_proj.weight")[q0:q1], t(a + "k_proj.weight")[kv0:kv1], t(a + "v_proj.weight")[kv0:kv1]])
            bias = None
            if a + "q_proj.bias" in reader:
                bias = torch.cat([t(a + "q_proj.bias")[q0:q1], t(a + "k_proj.bias")[kv0:kv1], t(a + "v_proj.bias")[kv0:kv1]])
            gate_up = torch.cat([t(p + "mlp.gate_proj.weight")[i0:i1], t(p + "mlp.up_proj.weight")[i0:i1]])
            self.layers.append(
                LayerWeights(
                    input_norm=t(p + "input_layernorm.weight"),
                    qkv_weight=qkv.contiguous(),
                    qkv_bias=bias,
                    o_weight=t(a + "o_proj.weight")[:, q0:q1].contiguous(),
                    post_norm=t(p + "post_attention_layernorm.weight"),
                    gate_up_weight=gate_up.contiguous(),
                    down_weight=t(p + "mlp.down_proj.weight")[:, i0:i1].contiguous(),
                )
            )

    # ---------------- forward ----------------

    def forward(self, batch: ForwardBatch, k_pools: list[torch.Tensor], v_pools: list[torch.Tensor],
                hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Return logits [samplers, vocab] (model dtype) for the rows in batch.logits_index.
        hidden: the embedded inputs, when the caller has them (else batch.input_ids are embedded)."""
        ks = self.kernels
        if hidden is None:
            hidden = self.embed[batch.input_ids]
        # each projection added to the stream, and the norm weight the next read is normed with
        next_norms = [w.input_norm for w in self.layers[1:]] + [self.final_norm]
        stream = self._residual_stream(batch, hidden)
        for i, (w, next_norm) in enumerate(zip(self.layers, next_norms)):
            x, norm = stream.normed()
            stream.add_projection(self._attention(w, x, norm, batch, k_pools[i], v_pools[i]), w.o_weight, w.post_norm)
            x, norm = stream.normed()
            stream.add_projection(ks.linear_silu_mul(x, w.gate_up_weight, norm=norm), w.down_weight, next_norm)
        x, norm = stream.normed()
        if batch.score_index is not None:  # (a ResidualStream: every row is normed)
            batch.scored_hidden = x[batch.score_index]
        if batch.logits_index is not None:
            x = x[batch.logits_index]  # (a ResidualStream: norm is None)
        return ks.linear(x, self.lm_head, norm=norm)

    def score(self, hidden: torch.Tensor, targets: torch.Tensor, top_n: int
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Each row's log-softmax at its target token [rows] (and the top_n most likely tokens
        with theirs), SCORE_ROWS rows of logits at a time: a whole prefill chunk's float32 logits
        would take gigabytes. hidden: final normed hidden states [rows, hidden]."""
        ks, logprobs, ids, values = self.kernels, [], [], []
        for h, t in zip(hidden.split(SCORE_ROWS), targets.split(SCORE_ROWS)):
            logits = ks.linear(h, self.lm_head)
            # one pass over the logits in their own dtype (the greedy kernel), no float32 copy
            lp = logprobs_from_argmax(logits, t, *ks.greedy_sample(logits))
            logprobs.append(lp)
            if top_n:
                i, v = top_logprobs(logits, t, lp, top_n)
                ids.append(i)
                values.append(v)
        tops = (torch.cat(ids), torch.cat(values)) if top_n else None
        return torch.cat(logprobs), tops

    def _residual_stream(self, batch: ForwardBatch, hidden: torch.Tensor) -> ResidualStream:
        """The norms inside the projections where the kernels say it pays (o and down on Triton,
        at decode batch sizes), on one GPU, when every row reaches the lm_head; else norm kernels."""
        ks, eps, n = self.kernels, self.spec.rms_norm_eps, hidden.shape[0]
        w = self.layers[0]
        if (self.tp.size == 1 and batch.logits_index is None and ks.defers_norm(n, w.o_weight)
                and ks.defers_norm(n, w.down_weight)):
            return DeferredNormStream(ks, self.tp, hidden, w.input_norm, eps, projections=2 * len(self.layers))
        return ResidualStream(ks, self.tp, hidden, w.input_norm, eps)

    def _attention(self, w: LayerWeights, x: torch.Tensor, norm: DeferredNorm | None, batch: ForwardBatch,
                   k_pool: torch.Tensor, v_pool: torch.Tensor) -> torch.Tensor:
        """Attention over a layer's input x (normed, or with the norm for the projection to apply),
        from the q‖k‖v projection up to o: the heads' outputs [tokens, q local heads * head_dim]."""
        ks, d = self.kernels, self.spec.head_dim
        n = x.shape[0]
        q_size = self.num_local_heads * d
        # the projection, RoPE and the KV store (one launch at decode batch sizes): rotated k and
        # v go to the pool, where attention reads them; of qkv only the q columns count after this
        qkv = ks.linear_rope_store(x, w.qkv_weight, w.qkv_bias, batch.positions, self.cos_sin, k_pool, v_pool,
                                   batch.slots, self.num_local_heads, self.num_local_kv_heads, norm=norm)
        q = qkv[:, :q_size].view(n, self.num_local_heads, d)

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
        return out.reshape(n, q_size)
