"""Token sampling with per-request parameters and no host sync.

Randomness is counter-based: the uniform for (seed, position, token id) is a hash of the three,
so a seeded request draws the same tokens whatever batch it lands in, and nothing depends on a
global generator's state. Sampling is Gumbel-max over the filtered logits, which draws exactly
from softmax(filtered / temperature).
"""

from __future__ import annotations

import torch

from litelang.kernels._triton import INTERPRET, tl, triton

_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (xorshift-multiply) on int64 tensors holding values in [0, 2**32).

    Products may wrap int64, but only their low 32 bits are kept, which wrapping leaves exact.
    """
    x = x & _MASK32
    x = (x ^ (x >> 16)) * 0x7FEB352D & _MASK32
    x = (x ^ (x >> 15)) * 0x846CA68B & _MASK32
    return x ^ (x >> 16)


def _row_keys(seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[batch] int64 in [0, 2**32): the random stream of each (seed, position)."""
    seeds = seeds.long()
    key = _hash32(_hash32(seeds & _MASK32) ^ (seeds >> 32) & _MASK32)
    return _hash32(key ^ _hash32(positions.long() + 0x9E3779B9))


def _uniforms(keys: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """float32 uniforms strictly inside (0, 1) of the given token ids (broadcast against keys).

    23 bits plus a half, so every value is exact in float32: a 32-bit fraction could round to 1.0,
    making the Gumbel noise +inf (a certain win, and NaN on a filtered -inf logit)."""
    bits = _hash32(keys ^ _hash32(tokens.long() + 0x632BE5AB))
    return ((bits >> 9).to(torch.float32) + 0.5) * (1.0 / 8388608.0)


def uniform_from_counter(seeds: torch.Tensor, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[batch, vocab] float32 uniforms in (0, 1), a pure function of (seed, position, token id)."""
    token = torch.arange(vocab_size, device=seeds.device, dtype=torch.long)
    return _uniforms(_row_keys(seeds, positions)[:, None], token[None, :])


def _scale(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """float32 logits / temperature (greedy rows, temperature <= 0, are left unscaled)."""
    temp = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).float()
    return logits.float() / temp[:, None]


def _filter_sorted(
    scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted logits with the dropped ones at -inf, their token ids), descending.

    The sort is stable, so tied logits keep token-id order: which of them survive top-k is then
    defined, the same on every device, and rank 0 is the greedy token (argmax's first maximum).
    """
    vocab = scaled.shape[-1]
    sorted_logits, sorted_idx = scaled.sort(dim=-1, descending=True, stable=True)
    probs = sorted_logits.softmax(dim=-1)
    rank = torch.arange(vocab, device=scaled.device)[None, :]
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab)).long()
    drop = rank >= k[:, None]
    # top-p: keep the smallest prefix whose mass reaches top_p (the token crossing it is kept)
    # (top_p >= 1 is off: the float32 cumsum can pass 1.0 before the tail and would drop it)
    mass_before = probs.cumsum(dim=-1) - probs
    drop |= (mass_before >= top_p[:, None]) & (top_p[:, None] < 1)
    drop |= probs < (min_p[:, None] * probs[:, :1])
    drop[:, 0] = False
    return sorted_logits.masked_fill(drop, float("-inf")), sorted_idx


def _filter(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """scaled with the tokens dropped by top-k, top-p and min-p set to -inf."""
    sorted_logits, sorted_idx = _filter_sorted(scaled, top_k, top_p, min_p)
    return torch.full_like(scaled, float("-inf")).scatter(1, sorted_idx, sorted_logits)


def sample_ref(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
    positions: torch.Tensor,
    needs_filter: bool = True,
) -> torch.Tensor:
    """Pick one token per row of logits [batch, vocab]. (needs_filter is the Triton version's
    shortcut hint; the reference always filters, which gives the same tokens.)

    temperature [batch] float (0 = greedy); top_k [batch] int (0 = off); top_p [batch] float
    (1 = off); min_p [batch] float (0 = off); seeds [batch] int64; positions [batch] int64 (the
    index of the token being sampled, which keys the random stream).
    """
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    filtered = _filter(_scale(logits, temperature), top_k, top_p, min_p)
    u = uniform_from_counter(seeds, positions, logits.shape[-1])
    gumbel = -torch.log(-torch.log(u))
    sampled = (filtered + gumbel).argmax(dim=-1)
    return torch.where(temperature > 0, sampled, greedy)


def token_logprobs_ref(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log-softmax of float32 logits [batch, vocab] at tokens [batch]: logit - logsumexp, one
    reduction and no [batch, vocab] softmax."""
    return logits.gather(1, tokens[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)


def top_logprobs(logits: torch.Tensor, tokens: torch.Tensor, token_logprobs: torch.Tensor,
                 n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids [batch, n] int64, their log-softmax [batch, n] float32), most likely first.
    logits [batch, vocab] are those the step's token logprobs were taken from (any float dtype),
    tokens the sampled ones and token_logprobs theirs: each value is (x - x[token]) +
    logprob(token), so a sampled token among them carries exactly its logprob, whichever kernel
    computed it (the greedy kernel's chunked log-sum-exp, or the deterministic mode's), and rows
    never depend on the batch. Torch ops, no host sync: the same on CPU and GPU."""
    values, ids = top_by_value_then_id(logits, n)
    anchor = logits.gather(1, tokens.long()[:, None]).float()
    return ids, (values.float() - anchor) + token_logprobs.float()[:, None]


def top_by_value_then_id(logits: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits.topk(n) with tied values in token-id order, as argmax and the stable sort of the
    filters break ties: the first entry is the greedy token unless more than n tokens tie for the
    top. Which of several tokens tied at the n-th value make the cut is topk's choice. No host
    sync."""
    values, ids = logits.topk(n, dim=-1)
    ids, order = ids.sort(dim=-1)
    values, order = values.gather(1, order).sort(dim=-1, descending=True, stable=True)
    return values, ids.gather(1, order)


def apply_penalties_ref(
    logits: torch.Tensor,
    output_counts: torch.Tensor,
    prompt_mask: torch.Tensor,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> torch.Tensor:
    """Repetition, frequency and presence penalties (vLLM / OpenAI semantics); float32 result.

    logits [batch, vocab]; output_counts [batch, vocab] int: how often each token was generated
    so far (the worker keeps it on the GPU: zero a row on admission, scatter_add_ each step's
    tokens); prompt_mask [batch, vocab] bool: the token occurs in the prompt. repetition
    [batch] float (1 = off): seen tokens (prompt or generated) have positive logits divided by
    it and negative ones multiplied; frequency [batch] (0 = off): minus frequency * count;
    presence [batch] (0 = off): minus presence once a token was generated.
    Tensors in, tensors out, elementwise: no host sync.
    """
    logits = logits.float()
    generated = output_counts > 0
    rep = repetition.float()[:, None]
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(prompt_mask | generated, penalized, logits)
    logits = logits - frequency.float()[:, None] * output_counts.float()
    return logits - presence.float()[:, None] * generated.float()


# --- Triton ----------------------------------------------------------------------------------
#
# The filters (top-k / top-p / min-p) need the sorted order, so the Triton path shares the torch
# sort-based filter with the reference: same ops, same values. What it replaces is the expensive
# part of the reference for a large vocabulary: the [batch, vocab] int64 hash and the log-log
# over every token. One Triton pass hashes, adds Gumbel noise and keeps each block's two best
# candidates; the winner among those few is then recomputed with the reference's own torch ops,
# so the token is bit-identical to sample_ref's. (Triton's log may differ from torch's in the
# last bit; the true winner is among the candidates unless three tokens of one block land within
# a few ulps of each other.)


@triton.jit
def _hash32_tl(x):
    """_hash32 in uint32 arithmetic (products wrap mod 2**32, as the reference's masks do)."""
    x = (x ^ (x >> 16)) * 0x7FEB352D
    x = (x ^ (x >> 15)) * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _gumbel_candidates_kernel(
    X, TokenIds, Temperature, Keys, Cand, vocab, stride_x, stride_t,
    SCALE: tl.constexpr, SORTED: tl.constexpr, BLOCK: tl.constexpr,
):
    """Program (row, block): where in X the block's two best tokens by logit + Gumbel noise are.

    X: float logits (SCALE: raw, divided by the temperature here) or, SORTED, the filtered sorted
    logits whose token ids are in TokenIds. Greedy rows (temperature <= 0) add no noise.
    """
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < vocab
    x = tl.load(X + row * stride_x + offs, mask=mask, other=float("-inf")).to(tl.float32)
    temp = tl.load(Temperature + row).to(tl.float32)
    if SCALE:
        x = tl.math.div_rn(x, tl.where(temp > 0, temp, 1.0))
    if SORTED:
        tok = tl.load(TokenIds + row * stride_t + offs, mask=mask, other=0).to(tl.int32)
    else:
        tok = offs
    key = tl.load(Keys + row).to(tl.uint32)
    bits = _hash32_tl(key ^ _hash32_tl(tok.to(tl.uint32) + 0x632BE5AB))
    u = ((bits >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)  # as _uniforms: exact, never 0 or 1
    # float64: Triton's float32 log is the fast approximation, whose absolute error near u = 1
    # (where the winning, largest Gumbel values come from) would reorder candidates
    gumbel = (-tl.log(-tl.log(u.to(tl.float64)))).to(tl.float32)
    val = tl.where(mask, x + tl.where(temp > 0, gumbel, 0.0), float("-inf"))
    tok = tl.where(mask, tok, vocab)  # masked lanes lose every tie
    out = Cand + row * 2 * tl.num_programs(1) + 2 * blk
    for i in tl.static_range(2):
        best = tl.max(val, axis=0)
        best_tok = tl.min(tl.where(val == best, tok, vocab), axis=0)  # argmax's first maximum
        at = tl.min(tl.where(tok == best_tok, offs, vocab), axis=0)
        tl.store(out + i, tl.minimum(at, vocab - 1))  # clamped: any real entry is a harmless extra
        val = tl.where(offs == at, float("-inf"), val)


def _sample_block(vocab: int) -> int:
    return min(256 if INTERPRET else 4096, triton.next_power_of_2(vocab))


def _candidates(
    x: torch.Tensor, token_ids: torch.Tensor | None, temperature: torch.Tensor, keys: torch.Tensor, scale: bool
) -> torch.Tensor:
    """[batch, 2 * blocks] int32: where in x each vocabulary block's two best tokens are.

    x: raw logits (scale: divided by the temperature in the kernel) or sorted filtered logits
    whose token ids are token_ids."""
    batch, vocab = x.shape
    block = _sample_block(vocab)
    n_blocks = triton.cdiv(vocab, block)
    cand = torch.empty((batch, 2 * n_blocks), dtype=torch.int32, device=x.device)
    ids = x if token_ids is None else token_ids  # placeholder when unsorted
    _gumbel_candidates_kernel[(batch, n_blocks)](
        x, ids, temperature, keys, cand, vocab, x.stride(0), ids.stride(0),
        SCALE=scale, SORTED=token_ids is not None, BLOCK=block, num_warps=8 if block >= 2048 else 4,
    )
    return cand


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
    positions: torch.Tensor,
    needs_filter: bool = True,
) -> torch.Tensor:
    """sample_ref without host syncs and with one pass over the vocabulary for the noise.

    needs_filter=False skips the sort: pass it only when no sampled row (temperature > 0) sets
    top_k > 0, top_p < 1 or min_p > 0 — the caller knows the batch's parameters on the host.
    """
    batch, vocab = logits.shape
    if batch == 0:
        return torch.empty(0, dtype=torch.long, device=logits.device)
    keys = _row_keys(seeds, positions)
    if needs_filter:
        x, token_ids = _filter_sorted(_scale(logits, temperature), top_k, top_p, min_p)
    else:
        x = logits if logits.stride(-1) == 1 else logits.contiguous()
        token_ids = None
    cand = _candidates(x, token_ids, temperature, keys, scale=not needs_filter)
    # the exact reference values of the candidates: same ops as sample_ref, on [batch, 2 * blocks]
    at = cand.long()
    if needs_filter:
        cand_tok, cand_x = token_ids.gather(1, at), x.gather(1, at)
    else:
        cand_tok, cand_x = at, _scale(logits.gather(1, at), temperature)
    gumbel = -torch.log(-torch.log(_uniforms(keys[:, None], cand_tok)))
    val = torch.where((temperature > 0)[:, None], cand_x + gumbel, cand_x)
    best = val.max(dim=1, keepdim=True).values
    # argmax's first maximum: the smallest token id among the best
    return torch.where(val == best, cand_tok, vocab).min(dim=1).values


@triton.jit
def _penalties_kernel(
    Logits, Counts, PromptMask, Repetition, Frequency, Presence, Out,
    vocab, stride_l, stride_c, stride_m, stride_o, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < vocab
    x = tl.load(Logits + row * stride_l + offs, mask=mask, other=0.0).to(tl.float32)
    count = tl.load(Counts + row * stride_c + offs, mask=mask, other=0)
    in_prompt = tl.load(PromptMask + row * stride_m + offs, mask=mask, other=0) != 0
    rep = tl.load(Repetition + row).to(tl.float32)
    freq = tl.load(Frequency + row).to(tl.float32)
    pres = tl.load(Presence + row).to(tl.float32)
    generated = count > 0
    penalized = tl.where(x > 0, tl.math.div_rn(x, rep), x * rep)
    x = tl.where(in_prompt | generated, penalized, x)
    x = x - freq * count.to(tl.float32)
    x = x - pres * generated.to(tl.float32)
    tl.store(Out + row * stride_o + offs, x, mask=mask)


def apply_penalties(
    logits: torch.Tensor,
    output_counts: torch.Tensor,
    prompt_mask: torch.Tensor,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> torch.Tensor:
    """Triton version of apply_penalties_ref: one pass instead of about ten (equal up to float32
    rounding: the GPU may fuse a multiply and a subtract)."""
    batch, vocab = logits.shape
    out = torch.empty((batch, vocab), dtype=torch.float32, device=logits.device)
    if batch == 0:
        return out
    tensors = [t if t.stride(-1) == 1 else t.contiguous() for t in (logits, output_counts, prompt_mask)]
    logits, output_counts, prompt_mask = tensors
    block = min(2048, triton.next_power_of_2(vocab))
    _penalties_kernel[(batch, triton.cdiv(vocab, block))](
        logits, output_counts, prompt_mask.view(torch.uint8), repetition, frequency, presence, out,
        vocab, logits.stride(0), output_counts.stride(0), prompt_mask.stride(0), out.stride(0),
        BLOCK=block, num_warps=4,
    )
    return out
