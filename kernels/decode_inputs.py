"""A decode step's inputs in one launch: each row's new slot into the req->slot table, and the
embedding of the token the row sampled last.

In torch this is a gather of the last tokens, two casts, an index arithmetic, a scatter into the
table and an embedding gather: six kernels of a microsecond or two, each waiting for the one
before, at the head of every CUDA-graph decode step (where batch 1 runs in ~1.5 ms).
"""

from __future__ import annotations

import torch

from litelang.kernels._triton import INTERPRET, pdl_launch, pdl_start, tl, triton


def decode_inputs_ref(embed: torch.Tensor, last_tokens: torch.Tensor, req_to_slot: torch.Tensor, rows: torch.Tensor,
                      slots: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """embed [vocab, hidden]; last_tokens [table rows] (each row's last sampled token); rows,
    slots, seq_lens [batch] (any int dtype; seq_len counts the new token) -> hidden [batch,
    hidden] = embed[last_tokens[rows]], after req_to_slot[rows, seq_lens - 1] = slots."""
    rows = rows.long()
    req_to_slot[rows, seq_lens.long() - 1] = slots.to(req_to_slot.dtype)
    return embed[last_tokens[rows]]


# --- Triton ----------------------------------------------------------------------------------


@triton.jit
def _decode_inputs_kernel(Embed, LastTokens, ReqToSlot, Rows, Slots, SeqLens, Out, hidden, stride_r,
                          BLOCK: tl.constexpr, PDL: tl.constexpr):
    """Program (token, hidden chunk): copy a chunk of the token's embedding row; chunk 0 also
    writes the table entry."""
    pdl_start(PDL)  # before any memory access: see kernels/_triton.py
    i = tl.program_id(0)
    c = tl.program_id(1)
    row = tl.load(Rows + i).to(tl.int64)
    token = tl.load(LastTokens + row).to(tl.int64)
    if c == 0:
        pos = tl.load(SeqLens + i).to(tl.int64) - 1
        tl.store(ReqToSlot + row * stride_r + pos, tl.load(Slots + i).to(ReqToSlot.dtype.element_ty))
    cols = c * BLOCK + tl.arange(0, BLOCK)
    mask = cols < hidden
    values = tl.load(Embed + token * hidden + cols, mask=mask)
    tl.store(Out + i.to(tl.int64) * hidden + cols, values, mask=mask)


def decode_inputs(embed: torch.Tensor, last_tokens: torch.Tensor, req_to_slot: torch.Tensor, rows: torch.Tensor,
                  slots: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """Triton version of decode_inputs_ref; no host sync, CUDA-graph capturable."""
    batch, hidden = rows.shape[0], embed.shape[1]
    assert embed.stride(-1) == 1 and embed.stride(0) == hidden and req_to_slot.stride(-1) == 1
    out = torch.empty((batch, hidden), dtype=embed.dtype, device=embed.device)
    if batch == 0:
        return out
    block = 64 if INTERPRET else 1024
    _decode_inputs_kernel[(batch, triton.cdiv(hidden, block))](
        embed, last_tokens, req_to_slot, rows, slots, seq_lens, out, hidden, req_to_slot.stride(0),
        BLOCK=block, num_warps=4, **pdl_launch(),
    )
    return out
