"""Sampling state on the worker: each request's parameters as decoded from its Sampling message
(RequestSampling), which sampling work a step needs (SamplingMode), the per-request parameters
as device tensors (SamplingTensors), per-row penalty and stop-token state (PenaltyState), and the
device-only forward + sample step that CUDA graphs capture."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from litelang.kernels.kernel_set import KernelSet
from litelang.kernels.sampling import top_logprobs
from litelang.kernels.token_mask import ALL_ALLOWED, mask_words_for
from litelang.proto import worker_pb2
from litelang.worker.forward_batch import ForwardBatch, to_device
from litelang.worker.model import CausalLM

if TYPE_CHECKING:
    from litelang.worker.runner import RequestState


@dataclass(frozen=True)
class RequestSampling:
    """One request's sampling values, decoded once from its Sampling (worker.proto) at admission;
    every step reads them from here."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int = 0
    repetition: float = 1.0
    frequency: float = 0.0
    presence: float = 0.0
    suppress_until: int = 0  # stop tokens are masked for sampled positions before this
    top_logprobs: int = 0  # most likely alternatives to return with each sampled token
    biased: bool = False  # has a logit_bias (applied on the full sampling path)

    @classmethod
    def from_wire(cls, s: worker_pb2.Sampling) -> "RequestSampling":
        """Unset (0) top_p and repetition_penalty mean off."""
        return cls(
            temperature=s.temperature, top_k=s.top_k, top_p=s.top_p if s.top_p > 0 else 1.0, min_p=s.min_p,
            seed=s.seed, repetition=s.repetition_penalty if s.repetition_penalty > 0 else 1.0,
            frequency=s.frequency_penalty, presence=s.presence_penalty,
            suppress_until=s.suppress_until if s.suppress_token_ids else 0, top_logprobs=s.top_logprobs,
            biased=bool(s.bias_token_ids),
        )

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 and not self.penalized and not self.suppress_until and not self.biased

    @property
    def penalized(self) -> bool:
        return self.repetition != 1.0 or self.frequency != 0.0 or self.presence != 0.0

    @property
    def filtered(self) -> bool:
        return self.temperature > 0 and (self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0)


@dataclass(frozen=True)
class SamplingMode:
    """Which sampling work a step needs, decided on the host from the requests' parameters."""

    greedy: bool      # argmax only
    penalties: bool   # apply repetition / frequency / presence penalties
    filtered: bool    # top-k / top-p / min-p (needs a sort over the vocabulary)
    top_n: int = 0    # the most alternatives a request of the step asks for (top_logprobs)
    masked: bool = False  # structured outputs: some row's tokens are limited by a bitmask

    @classmethod
    def for_states(cls, states: list[RequestState]) -> "SamplingMode":
        values = [s.sampling for s in states]
        return cls(
            greedy=all(v.greedy for v in values),
            penalties=any(v.penalized for v in values),
            filtered=any(v.filtered for v in values),
            top_n=max((v.top_logprobs for v in values), default=0),
        )


FULL_SAMPLING = SamplingMode(greedy=False, penalties=True, filtered=True)
GREEDY = SamplingMode(greedy=True, penalties=False, filtered=False)
MASKED_GREEDY = SamplingMode(greedy=True, penalties=False, filtered=False, masked=True)


@dataclass
class SamplingTensors:
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor
    seeds: torch.Tensor
    positions: torch.Tensor  # index of the sampled token in its sequence: keys the random stream
    repetition: torch.Tensor
    frequency: torch.Tensor
    presence: torch.Tensor

    suppress_until: torch.Tensor  # [batch] int64

    FLOATS = ("temperature", "top_p", "min_p", "repetition", "frequency", "presence")
    INTS = ("top_k", "seeds", "positions", "suppress_until")

    @staticmethod
    def host_values(states: list[RequestState]) -> tuple[list[list[float]], list[list[int]]]:
        values = [s.sampling for s in states]
        floats = [[v.temperature for v in values], [v.top_p for v in values], [v.min_p for v in values],
                  [v.repetition for v in values], [v.frequency for v in values], [v.presence for v in values]]
        ints = [[v.top_k for v in values], [v.seed & 0x7FFFFFFFFFFFFFFF for v in values],
                [s.context_len for s in states], [v.suppress_until for v in values]]
        return floats, ints

    @classmethod
    def from_packed(cls, floats: torch.Tensor, ints: torch.Tensor) -> "SamplingTensors":
        """Views of packed [6, n] float32 and [3, n] int64 device tensors (one copy each)."""
        return cls(
            temperature=floats[0], top_p=floats[1], min_p=floats[2], repetition=floats[3],
            frequency=floats[4], presence=floats[5], top_k=ints[0].to(torch.int32), seeds=ints[1], positions=ints[2],
            suppress_until=ints[3],
        )

    @classmethod
    def from_states(cls, states: list[RequestState], device) -> "SamplingTensors":
        floats, ints = cls.host_values(states)
        return cls.from_packed(to_device(torch.tensor(floats, dtype=torch.float32), device),
                               to_device(torch.tensor(ints, dtype=torch.long), device))


MAX_SUPPRESS = 16  # stop tokens masked before min_new_tokens, per request
MAX_LOGIT_BIAS = 300  # logit_bias tokens per request (scheduler/sampling_params.py allows as many)


@dataclass
class PenaltyState:
    """Per-row token statistics for penalties, on the device: how often each token was generated
    (output_counts) and which tokens the prompt holds (prompt_mask); the stop tokens each row may
    not sample before its min_new_tokens (suppress_ids, padded by repeating the first); and each
    row's logit_bias (bias_ids / bias_values: a fixed-width table, so CUDA graphs apply it to
    every row; padded by repeating the first pair, empty as token 0 + 0)."""

    output_counts: torch.Tensor  # [rows, vocab] int32
    prompt_mask: torch.Tensor    # [rows, vocab] bool
    suppress_ids: torch.Tensor   # [rows, MAX_SUPPRESS] int64
    bias_ids: torch.Tensor       # [rows, MAX_LOGIT_BIAS] int64
    bias_values: torch.Tensor    # [rows, MAX_LOGIT_BIAS] float32
    biased_rows: set[int] = field(default_factory=set)  # rows whose table is not empty

    @classmethod
    def allocate(cls, rows: int, vocab: int, device) -> "PenaltyState":
        return cls(
            torch.zeros((rows, vocab), dtype=torch.int32, device=device),
            torch.zeros((rows, vocab), dtype=torch.bool, device=device),
            torch.zeros((rows, MAX_SUPPRESS), dtype=torch.long, device=device),
            torch.zeros((rows, MAX_LOGIT_BIAS), dtype=torch.long, device=device),
            torch.zeros((rows, MAX_LOGIT_BIAS), dtype=torch.float32, device=device),
        )

    def set_bias(self, row: int, ids, values, device) -> None:
        """The row's logit_bias for its new request (an empty one clears what the row held)."""
        ids, values = list(ids), list(values)
        if not ids and row not in self.biased_rows:
            return
        if ids:
            self.biased_rows.add(row)
            pad = MAX_LOGIT_BIAS - len(ids)
            ids, values = ids + [ids[0]] * pad, values + [values[0]] * pad
        else:
            self.biased_rows.discard(row)
            ids, values = [0] * MAX_LOGIT_BIAS, [0.0] * MAX_LOGIT_BIAS
        self.bias_ids[row] = to_device(torch.tensor(ids, dtype=torch.long), device)
        self.bias_values[row] = to_device(torch.tensor(values, dtype=torch.float32), device)

    def add_bias(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """logits [batch, vocab] float32 plus each row's logit_bias (a scatter of [batch, 300])."""
        ids = self.bias_ids[rows]
        return logits.scatter(1, ids, logits.gather(1, ids) + self.bias_values[rows])

    def set_suppressed(self, row: int, ids, device) -> None:
        ids = list(ids)[:MAX_SUPPRESS]
        padded = ids + [ids[0]] * (MAX_SUPPRESS - len(ids))  # repeats write the same value
        self.suppress_ids[row] = to_device(torch.tensor(padded, dtype=torch.long), device)

    def mask_suppressed(self, logits: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
                        until: torch.Tensor) -> torch.Tensor:
        """-inf on each row's stop tokens while its sampled position is before `until`."""
        ids = self.suppress_ids[rows]
        active = (positions < until)[:, None].expand_as(ids)
        blocked = torch.where(active, torch.full_like(ids, 0, dtype=logits.dtype) - float("inf"), logits.gather(1, ids))
        return logits.scatter(1, ids, blocked)

    def admit(self, row: int, prompt_ids, generated_ids, device) -> None:
        self.output_counts[row].zero_()
        self.prompt_mask[row].zero_()
        if prompt_ids:
            self.prompt_mask[row, to_device(torch.tensor(prompt_ids, dtype=torch.long), device)] = True
        if generated_ids:
            ids = to_device(torch.tensor(generated_ids, dtype=torch.long), device)
            self.output_counts[row].index_add_(0, ids, torch.ones_like(ids, dtype=torch.int32))


def packed_masks(masks: list[bytes], device) -> torch.Tensor:
    """[len(masks), words] int32 from TokenMask.allowed bitmasks (bit j of int32 word i allows
    token 32 * i + j), on the device in one copy from pinned memory."""
    words = torch.frombuffer(bytearray(b"".join(masks)), dtype=torch.int32).view(len(masks), -1)
    return to_device(words, device)


def mask_words(masks: list[tuple[int, bytes]], rows: int, vocab: int, device) -> torch.Tensor:
    """[rows, words] int32 bitmasks for apply_token_mask. masks: (row, TokenMask.allowed) for
    the rows with a format; the others allow every token (all bits set)."""
    words = torch.full((rows, mask_words_for(vocab)), ALL_ALLOWED, dtype=torch.int32, device=device)
    words[to_device(torch.tensor([r for r, _ in masks], dtype=torch.long), device)] = \
        packed_masks([m for _, m in masks], device)
    return words


def sample_and_record(
    model: CausalLM, kernels: KernelSet, batch: ForwardBatch, sampling: SamplingTensors, mode: SamplingMode,
    sampler_rows: torch.Tensor, last_tokens: torch.Tensor, penalties: PenaltyState, k_pools, v_pools,
    masks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward, sample, and store each sampled token as its request's next decode input.
    Returns (tokens, their logprobs, the logits those logprobs are taken from: the model's in
    greedy mode, else float32 with penalties and stop-token masks, before temperature and
    filters). top_alternatives takes a step's top-N from the last.

    Device work only (no host sync), so CUDA graphs can capture it whole. masks: structured
    outputs' [rows, vocab / 32] int32 bitmasks (kernels/token_mask.py), applied after the
    logit_bias (and before greedy's argmax).
    """
    hidden = None
    if batch.input_ids is None:  # decode only: the table writes and the embedding in one kernel
        hidden = kernels.decode_inputs(model.embed, last_tokens, batch.req_to_slot, batch.decode_rows, batch.slots,
                                       batch.decode_seq_lens)
    elif batch.num_decodes:  # each decode token's slot goes into its row at its position
        batch.req_to_slot[batch.decode_rows.long(), batch.decode_seq_lens.long() - 1] = (
            batch.slots[batch.num_extend_tokens :].to(torch.int32)
        )
    logits = model.forward(batch, k_pools, v_pools, hidden)
    if mode.greedy and masks is not None:
        logits = kernels.apply_token_mask(logits, masks)
    if mode.greedy:  # one pass over the logits: no float32 copy, argmax and logsumexp; the
        # merge also stores each token as its row's next input (every rank picks the same token)
        return *kernels.greedy_sample(logits, last_tokens, sampler_rows), logits
    logits = logits.float()
    logits = penalties.mask_suppressed(logits, sampler_rows, sampling.positions, sampling.suppress_until)
    if mode.penalties:
        logits = kernels.apply_penalties(
            logits, penalties.output_counts[sampler_rows], penalties.prompt_mask[sampler_rows],
            sampling.repetition, sampling.frequency, sampling.presence,
        )
    logits = penalties.add_bias(logits, sampler_rows)
    if masks is not None:
        logits = kernels.apply_token_mask(logits, masks)
    tokens = kernels.sample(
        logits, sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p, sampling.seeds,
        sampling.positions, needs_filter=mode.filtered,
    )
    tokens = model.tp.broadcast(tokens)  # every rank continues from rank 0's draw
    logprobs = kernels.token_logprobs(logits, tokens)
    last_tokens[sampler_rows] = tokens
    if mode.penalties:
        penalties.output_counts.index_put_((sampler_rows, tokens), torch.ones_like(tokens, dtype=torch.int32), accumulate=True)
    return tokens, logprobs, logits


def top_alternatives(scored: torch.Tensor, tokens: torch.Tensor, logprobs: torch.Tensor,
                     mode: SamplingMode) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(ids, logprobs) [rows, mode.top_n] of the most likely tokens under the distribution the
    step's logprobs use (sample_and_record's results), anchored on each sampled token's own
    logprob (kernels/sampling.py top_logprobs); None when no request of the step asks."""
    if not mode.top_n:
        return None
    return top_logprobs(scored, tokens, logprobs, min(mode.top_n, scored.shape[-1]))
