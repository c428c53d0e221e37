"""The causal LM forward pass over a flat, unpadded batch of tokens, on the kernels of a KernelSet.

CausalLM is what every family shares: embeddings, the decoder layers over one residual stream,
the final norm and lm_head (replicated on every rank), and prompt scoring. A family
(worker/models/) only says how its checkpoint's tensors become the blocks' weights (`load`).
"""

from __future__ import annotations

import torch

from litelang.kernels.greedy import logprobs_from_argmax
from litelang.kernels.kernel_set import KernelSet
from litelang.kernels.sampling import top_logprobs
from litelang.worker.checkpoint import CheckpointReader, Weights
from litelang.worker.forward_batch import ForwardBatch
from litelang.worker.models.attention import HeadShard
from litelang.worker.models.decoder import DecoderLayer
from litelang.worker.models.rope import rope_cos_sin
from litelang.worker.models.spec import ModelSpec
from litelang.worker.parallel import TPGroup
from litelang.worker.residual import DeferredNormStream, ResidualStream

# rows of logits per pass when scoring a prompt: 1,024 x 151,936 bf16 is 311 MB
SCORE_ROWS = 1024


class CausalLM:
    def __init__(self, spec: ModelSpec, kernels: KernelSet, tp: TPGroup, device: torch.device, dtype: torch.dtype):
        self.spec, self.kernels, self.tp = spec, kernels, tp
        self.device, self.dtype = device, dtype
        self.heads = HeadShard.of(spec, tp)
        self.num_local_kv_heads = self.heads.kv_heads  # the KV pool's width on this rank
        self.cos_sin = rope_cos_sin(spec, device)
        self.embed: torch.Tensor
        self.final_norm: torch.Tensor
        self.lm_head: torch.Tensor
        self.layers: list[DecoderLayer] = []

    # ---------------- loading ----------------

    def load(self, reader: CheckpointReader) -> None:
        """Set embed, final_norm, lm_head and layers from the checkpoint (each family names its tensors)."""
        raise NotImplementedError

    def weights(self, reader: CheckpointReader) -> Weights:
        """The reader's tensors on this model's device, in its dtype."""
        return lambda name: reader.get(name).to(device=self.device, dtype=self.dtype)

    # ---------------- forward ----------------

    def forward(self, batch: ForwardBatch, k_pools: list[torch.Tensor], v_pools: list[torch.Tensor],
                hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Return logits [samplers, vocab] (model dtype) for the rows in batch.logits_index.
        hidden: the embedded inputs, when the caller has them (else batch.input_ids are embedded)."""
        if hidden is None:
            hidden = self.embed[batch.input_ids]
        # each layer's blocks add to the stream, and hand it the norm weight its next read is normed with
        next_norms = [layer.input_norm for layer in self.layers[1:]] + [self.final_norm]
        stream = self._residual_stream(batch, hidden)
        for layer, k_pool, v_pool, next_norm in zip(self.layers, k_pools, v_pools, next_norms):
            layer.add_to(stream, batch, k_pool, v_pool, next_norm)
        x, norm = stream.normed()
        if batch.score_index is not None:  # (a ResidualStream: every row is normed)
            batch.scored_hidden = x[batch.score_index]
        if batch.logits_index is not None:
            x = x[batch.logits_index]  # (a ResidualStream: norm is None)
        return self.kernels.linear(x, self.lm_head, norm=norm)

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
        first = self.layers[0]
        if (self.tp.size == 1 and batch.logits_index is None and ks.defers_norm(n, first.attention.o_weight)
                and ks.defers_norm(n, first.mlp.down_weight)):
            return DeferredNormStream(ks, self.tp, hidden, first.input_norm, eps, projections=2 * len(self.layers))
        return ResidualStream(ks, self.tp, hidden, first.input_norm, eps)
