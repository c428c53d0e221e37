"""The decode step's input kernel (table write + last-token embedding) vs decode_inputs_ref."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from litelang.kernels.decode_inputs import decode_inputs, decode_inputs_ref  # noqa: E402


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("hidden", [96, 200])  # several chunks; a masked tail
def test_decode_inputs_matches_reference(device, index_dtype, hidden):
    g = torch.Generator().manual_seed(hidden)
    vocab, table_rows, width = 50, 7, 16
    embed = torch.randn(vocab, hidden, generator=g).to(device, torch.bfloat16)
    last_tokens = torch.randint(0, vocab, (table_rows,), generator=g).to(device)
    table = torch.randint(0, 1000, (table_rows, width), generator=g, dtype=torch.int32).to(device)
    # rows out of order, and a padding row (the last table row) repeated, as CUDA graphs pad
    rows = torch.tensor([3, 0, 5, 6, 6], dtype=index_dtype, device=device)
    seq_lens = torch.tensor([1, 16, 9, 1, 1], dtype=index_dtype, device=device)
    slots = torch.tensor([11, 22, 33, 99, 99], dtype=index_dtype, device=device)
    ref_table = table.clone()
    out = decode_inputs(embed, last_tokens, table, rows, slots, seq_lens)
    ref = decode_inputs_ref(embed, last_tokens, ref_table, rows, slots, seq_lens)
    assert torch.equal(out, ref)
    assert torch.equal(table, ref_table)
    assert table[3, 0].item() == 11 and table[0, 15].item() == 22 and table[5, 8].item() == 33
    assert torch.equal(out[1], embed[last_tokens[0]])
