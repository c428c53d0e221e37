"""Token sampling with per-request parameters and no host sync.

Randomness is counter-based: the uniform for (seed, position, token id) is a hash of the three,
so a seeded request draws the same tokens whatever batch it lands in, and nothing depends on a
global generator's state. Sampling is Gumbel-max over the filtered logits, which draws exactly
from softmax(filtered / temperature).
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (xorshift-multiply) on int64 tensors holding values in [0, 2**32).

    Products may wrap int64, but only their low 32 bits are kept, which wrapping leaves exact.
    """
    x = x & _MASK32
    x = (x ^ (x >> 16)) * 0x7FEB352D & _MASK32
    x = (x ^ (x >> 15)) * 0x846CA68B & _MASK32
    return x ^ (x >> 16)


def uniform_from_counter(seeds: torch.Tensor, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[batch, vocab] float32 uniforms in (0, 1), a pure function of (seed, position, token id)."""
    seeds = seeds.long()
    key = _hash32(_hash32(seeds & _MASK32) ^ (seeds >> 32) & _MASK32)
    key = _hash32(key ^ _hash32(positions.long() + 0x9E3779B9))
    token = torch.arange(vocab_size, device=seeds.device, dtype=torch.long)
    bits = _hash32(key[:, None] ^ _hash32(token[None, :] + 0x632BE5AB))
    return (bits.to(torch.float64) + 0.5).div(2.0**32).to(torch.float32)


def sample_ref(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Pick one token per row of logits [batch, vocab].

    temperature [batch] float (0 = greedy); top_k [batch] int (0 = off); top_p [batch] float
    (1 = off); min_p [batch] float (0 = off); seeds [batch] int64; positions [batch] int64 (the
    index of the token being sampled, which keys the random stream).
    """
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    vocab = logits.shape[-1]
    temp = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).float()
    scaled = logits / temp[:, None]

    sorted_logits, sorted_idx = scaled.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    rank = torch.arange(vocab, device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab)).long()
    drop = rank >= k[:, None]
    # top-p: keep the smallest prefix whose mass reaches top_p (the token crossing it is kept)
    mass_before = probs.cumsum(dim=-1) - probs
    drop |= mass_before >= top_p[:, None]
    drop |= probs < (min_p[:, None] * probs[:, :1])
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    filtered = torch.full_like(scaled, float("-inf")).scatter(1, sorted_idx, sorted_logits)

    u = uniform_from_counter(seeds, positions, vocab)
    gumbel = -torch.log(-torch.log(u))
    sampled = (filtered + gumbel).argmax(dim=-1)
    return torch.where(temperature > 0, sampled, greedy)
