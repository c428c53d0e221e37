"""The token-granular KV pool: per layer, K and V of shape [slots, kv_heads, head_dim].

Slot numbers are owned by the scheduler; the worker only stores and reads. The last slot is a
scratch slot that padded (CUDA-graph) decode rows write into, so it is not reported.
"""

from __future__ import annotations

import torch


def bytes_per_slot(num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    return 2 * num_layers * kv_heads * head_dim * torch.tensor([], dtype=dtype).element_size()


def choose_num_slots(
    device: torch.device, per_slot: int, mem_usage: float, fixed: int, max_useful: int, reserve: int = 0
) -> int:
    """Pool size in slots: `fixed` when given, else a share of free memory after the weights
    (less `reserve` bytes, the measured memory of the CUDA graphs).

    On CPU only a quarter of the RAM share is used, and never more than `max_useful` slots (the
    most every running request could hold at once, twice over for the prefix cache).
    """
    if fixed:
        return fixed
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, int((free - reserve) * mem_usage) // per_slot)
    import psutil

    available = psutil.virtual_memory().available
    return max(1, min(int(available * mem_usage * 0.25) // per_slot, max_useful))


class KVPool:
    def __init__(self, num_layers: int, num_slots: int, kv_heads: int, head_dim: int, dtype, device):
        self.num_slots = num_slots
        self.scratch_slot = num_slots  # one extra slot, never handed out
        shape = (num_slots + 1, kv_heads, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
