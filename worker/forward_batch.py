"""What one forward pass needs to know about its batch, as device tensors.

Token order in a step: every extend request's new tokens (contiguous per request), then one
token per decode request. Attention runs the extend kernel on the first part and the decode
kernel on the second.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ForwardBatch:
    # [tokens] int64; None in a decode-only CUDA-graph step, whose inputs are each row's last
    # sampled token (embedded by kernels.decode_inputs in sample_and_record)
    input_ids: torch.Tensor | None
    positions: torch.Tensor        # [tokens] int64, position of each token in its sequence
    slots: torch.Tensor            # [tokens] int64, KV pool slot each token's k/v goes to
    req_to_slot: torch.Tensor      # [rows, max_context] int32, the worker's persistent table
    num_extend_tokens: int
    # extend part
    extend_rows: torch.Tensor      # [extends] int32
    extend_cu_seqlens: torch.Tensor  # [extends + 1] int32
    extend_prefix_lens: torch.Tensor  # [extends] int32
    extend_max_new_len: int
    # decode part
    decode_rows: torch.Tensor      # [decodes] int32 (int64 in CUDA graphs: the kernels take either)
    decode_seq_lens: torch.Tensor  # [decodes] int32 (the same), context length including the new token
    # which hidden rows produce logits (one per request that samples this step); None: every row
    logits_index: torch.Tensor | None
    # prompt_logprobs: the rows whose final hidden states the forward keeps (in scored_hidden)
    score_index: torch.Tensor | None = None
    scored_hidden: torch.Tensor | None = None

    @property
    def num_extends(self) -> int:
        return self.extend_rows.shape[0]

    @property
    def num_decodes(self) -> int:
        return self.decode_rows.shape[0]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to the device without holding up the host: through pinned memory (torch
    caches those buffers and reuses one once its copy has run). From pageable memory the copy can
    block the host while the GPU works through the steps queued before it (measured on an H100:
    3.6 ms for 10 KB behind 100 ms of queued work, 0.06 ms pinned)."""
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)
