"""The worker's running batch and one step of it: deltas in, sampled tokens out.

The batch persists here between steps: each request's row of the req->slot table, its
context length and its last sampled token (on the device), so a decode step needs only the
request id and the one new slot from the scheduler, and step N+1 can be launched before step
N's tokens have reached the host (`launch` enqueues GPU work; `PendingStep.result` waits).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from litelang.kernels.kernel_set import KernelSet
from litelang.proto import worker_pb2
from litelang.worker.forward_batch import ForwardBatch, to_device
from litelang.worker.kv_pool import KVPool
from litelang.worker.model import CausalLM
from litelang.worker.sampler import (
    MAX_LOGIT_BIAS, PenaltyState, RequestSampling, SamplingMode, SamplingTensors, mask_words, sample_and_record,
    top_alternatives,
)

MAX_SCORE_TOP_N = 20  # alternatives per scored prompt position (as top_logprobs)


class StepError(ValueError):
    """The scheduler sent a step that contradicts the worker's state (a protocol bug)."""


@dataclass
class RequestState:
    row: int
    sampling: RequestSampling
    context_len: int = 0  # tokens of this request whose k/v are in the pool


@dataclass
class StepPlan:
    """A step as host arrays, before anything touches the device. Extend parts are numpy
    chunks (one per request): a 24k-token prefill converts in microseconds, where Python
    lists of ints cost milliseconds per tensor."""

    ext_ids: list[np.ndarray] = field(default_factory=list)  # decode inputs live on the device
    ext_positions: list[np.ndarray] = field(default_factory=list)
    ext_slots: list[np.ndarray] = field(default_factory=list)
    table_writes: list[tuple[int, int, np.ndarray]] = field(default_factory=list)  # (row, first col, slots)
    ext_rows: list[int] = field(default_factory=list)
    cu: list[int] = field(default_factory=lambda: [0])
    prefix_lens: list[int] = field(default_factory=list)
    dec_rows: list[int] = field(default_factory=list)
    dec_positions: list[int] = field(default_factory=list)
    dec_slots: list[int] = field(default_factory=list)
    dec_lens: list[int] = field(default_factory=list)
    logits_index: list[int] = field(default_factory=list)
    samplers: list[RequestState] = field(default_factory=list)
    sampler_rids: list[int] = field(default_factory=list)
    # prompt_logprobs: the step's token rows to score, each one's target, and per scored extend
    # its rid, first scored position and count (StepResponse's score_* fields)
    score_index: list[int] = field(default_factory=list)
    score_targets: list[int] = field(default_factory=list)
    score_rids: list[int] = field(default_factory=list)
    score_first_positions: list[int] = field(default_factory=list)
    score_counts: list[int] = field(default_factory=list)
    score_top_n: int = 0
    # structured outputs: (index in samplers, TokenMask.allowed) of each sampler with a format
    token_masks: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def num_extend_tokens(self) -> int:
        return self.cu[-1]

    @property
    def decode_only(self) -> bool:
        return not self.ext_rows

    @property
    def mode(self) -> "SamplingMode":
        return SamplingMode.for_states(self.samplers)


class PendingStep:
    """A launched step whose sampled tokens are on their way to the host.

    On CUDA, events around the step's GPU work measure its GPU time and the GPU's idle gap
    since the previous step ended (the figure the overlap pipeline exists to drive to zero).
    """

    def __init__(self, step_id: int, rids: list[int], tokens=None, logprobs=None, start=0.0,
                 gpu_start=None, gpu_end=None, prev_gpu_end=None, top=None):
        self.step_id, self.rids = step_id, rids
        self.tokens, self.logprobs, self.start = tokens, logprobs, start
        self.top = top  # (ids, logprobs) [rows, top_n] when a request asked for top_logprobs
        self.scores = None  # prompt_logprobs: (plan, logprobs, (ids, logprobs) or None)
        self.gpu_start, self.gpu_end, self.prev_gpu_end = gpu_start, gpu_end, prev_gpu_end

    def wait(self) -> None:
        """Block until the step's GPU work (and its copy to the host) is done."""
        if self.gpu_end is not None:
            self.gpu_end.synchronize()

    def result(self) -> worker_pb2.StepResponse:
        out = worker_pb2.StepResponse(step_id=self.step_id)
        if not self.rids and self.scores is None:
            return out
        if self.gpu_end is not None:
            self.gpu_end.synchronize()
            out.gpu_ms = self.gpu_start.elapsed_time(self.gpu_end)
            if self.prev_gpu_end is not None:
                out.gpu_gap_ms = max(0.0, self.prev_gpu_end.elapsed_time(self.gpu_start))
        out.rids.extend(self.rids)
        out.token_ids.extend(self.tokens.tolist())
        out.logprobs.extend(self.logprobs.tolist())
        if self.top is not None:  # row-major [rows, top_n]: worker.proto's layout
            ids, values = self.top
            out.top_n = ids.shape[1]
            out.top_ids.extend(ids.flatten().tolist())
            out.top_logprobs.extend(values.flatten().tolist())
        if self.scores is not None:
            plan, logprobs, top = self.scores
            out.score_rids.extend(plan.score_rids)
            out.score_first_positions.extend(plan.score_first_positions)
            out.score_counts.extend(plan.score_counts)
            out.score_logprobs.extend(logprobs.tolist())
            if top is not None:
                out.score_top_n = plan.score_top_n
                out.score_top_ids.extend(top[0].flatten().tolist())
                out.score_top_logprobs.extend(top[1].flatten().tolist())
        out.forward_ms = (time.perf_counter() - self.start) * 1000.0
        return out


class ModelRunner:
    def __init__(self, model: CausalLM, pool: KVPool, kernels: KernelSet, max_batch_size: int, max_context: int):
        self.model, self.pool, self.kernels = model, pool, kernels
        self.device = model.device
        self.max_context = max_context
        self.max_batch_size = max_batch_size
        # one extra row, never handed out: padded CUDA-graph rows read and write it
        self.dummy_row = max_batch_size
        self.req_to_slot = torch.zeros((max_batch_size + 1, max_context), dtype=torch.int32, device=self.device)
        self.req_to_slot[self.dummy_row] = pool.scratch_slot
        self.last_tokens = torch.zeros(max_batch_size + 1, dtype=torch.long, device=self.device)
        self.penalties = PenaltyState.allocate(max_batch_size + 1, model.spec.vocab_size, self.device)
        self.free_rows = list(range(max_batch_size - 1, -1, -1))
        self.requests: dict[int, RequestState] = {}
        self.graphs = None  # DecodeGraphs, set by setup when CUDA graphs are enabled
        self._last_gpu_end = None  # CUDA event at the end of the previous step's GPU work

    def reset(self) -> None:
        self._last_gpu_end = None
        self.free_rows = list(range(self.max_batch_size - 1, -1, -1))
        self.requests.clear()

    # ------------------------------------------------------------------

    def step(self, req: worker_pb2.StepRequest) -> worker_pb2.StepResponse:
        return self.launch(req).result()

    def launch(self, req: worker_pb2.StepRequest) -> PendingStep:
        start = time.perf_counter()
        for rid in req.release:
            state = self.requests.pop(rid, None)
            if state is not None:
                self.free_rows.append(state.row)
        if not req.extends and not req.decode_rids:
            return PendingStep(req.step_id, [])
        plan = self._plan(req)
        dev = self.device
        gpu_start = gpu_end = None
        scores = None  # prompt_logprobs: (logprobs, top) of plan.score_index
        if dev.type == "cuda":
            gpu_start = torch.cuda.Event(enable_timing=True)
            gpu_start.record()
        self._write_table(plan)
        mode = plan.mode
        if plan.token_masks:  # structured outputs: the mask goes between the logits and the draw
            mode = dataclasses.replace(mode, masked=True)
        if plan.decode_only and self.graphs is not None and self.graphs.fits(len(plan.dec_rows)):
            tokens, logprobs, scored = self.graphs.run(plan, mode)
        else:
            masks = None
            if plan.token_masks:
                masks = mask_words(plan.token_masks, len(plan.samplers), self.model.spec.vocab_size, dev)
            batch = self._forward_batch(plan)
            rows = _t([s.row for s in plan.samplers], torch.long, dev)
            tokens, logprobs, scored = sample_and_record(
                self.model, self.kernels, batch, SamplingTensors.from_states(plan.samplers, dev), mode, rows,
                self.last_tokens, self.penalties, self.pool.k, self.pool.v, masks,
            )
            if plan.score_index:
                scores = self.model.score(batch.scored_hidden, _t(plan.score_targets, torch.long, dev),
                                          plan.score_top_n)
        top = top_alternatives(scored, tokens, logprobs, mode)
        prev_end = self._last_gpu_end
        if dev.type == "cuda":
            tokens = tokens.to("cpu", non_blocking=True)
            logprobs = logprobs.to("cpu", non_blocking=True)
            if top is not None:
                top = tuple(t.to("cpu", non_blocking=True) for t in top)
            if scores is not None:
                lp, alternatives = scores
                scores = (lp.to("cpu", non_blocking=True),
                          alternatives and tuple(t.to("cpu", non_blocking=True) for t in alternatives))
            gpu_end = torch.cuda.Event(enable_timing=True)
            gpu_end.record()
            self._last_gpu_end = gpu_end
        pending = PendingStep(req.step_id, plan.sampler_rids, tokens, logprobs, start, gpu_start, gpu_end, prev_end, top)
        if scores is not None:
            pending.scores = (plan, *scores)
        return pending

    def forward_logits(self, req: worker_pb2.StepRequest) -> torch.Tensor:
        """Eager forward of a step without sampling: the logits of each sampling request, in order.
        For tests (teacher forcing: set last_tokens[row] before a decode step)."""
        plan = self._plan(req)
        self._write_table(plan)
        batch = self._forward_batch(plan)
        if batch.num_decodes:
            self.req_to_slot[batch.decode_rows.long(), batch.decode_seq_lens.long() - 1] = batch.slots[batch.num_extend_tokens :].int()
        return self.model.forward(batch, self.pool.k, self.pool.v).float()

    def row_of(self, rid: int) -> int:
        return self.requests[rid].row

    # ------------------------------------------------------------------

    def _admit(self, ext: worker_pb2.Extend) -> RequestState:
        if ext.rid in self.requests:
            raise StepError(f"request {ext.rid} is already running")
        if not self.free_rows:
            raise StepError("more running requests than max_batch_size")
        if len(ext.prefix_slots) != ext.prefix_len:
            raise StepError(f"request {ext.rid}: prefix_len {ext.prefix_len} != {len(ext.prefix_slots)} prefix slots")
        s = ext.sampling
        if len(s.bias_token_ids) != len(s.bias_values) or len(s.bias_token_ids) > MAX_LOGIT_BIAS:
            raise StepError(f"request {ext.rid}: logit_bias needs as many values as ids, at most {MAX_LOGIT_BIAS}")
        if s.bias_token_ids and not 0 <= min(s.bias_token_ids) <= max(s.bias_token_ids) < self.model.spec.vocab_size:
            raise StepError(f"request {ext.rid}: a logit_bias token id is outside the vocabulary")
        state = RequestState(row=self.free_rows.pop(), sampling=RequestSampling.from_wire(s))
        if state.sampling.suppress_until:
            self.penalties.set_suppressed(state.row, s.suppress_token_ids, self.device)
        self.penalties.set_bias(state.row, s.bias_token_ids, s.bias_values, self.device)
        if state.sampling.penalized:
            self.penalties.admit(state.row, ext.prompt_ids, ext.generated_ids, self.device)
        self.requests[ext.rid] = state
        return state

    def _claim(self, plan: StepPlan, state: RequestState, new_slots: np.ndarray, start: int) -> None:
        """Check an extend's new slots; queue their req_to_slot writes (decode slots are written on
        the device by sample_and_record instead, inside the CUDA graph)."""
        if start + len(new_slots) > self.max_context:
            raise StepError(f"context of {start + len(new_slots)} tokens exceeds max_context {self.max_context}")
        num_slots = self.pool.num_slots
        if len(new_slots) and not (0 <= new_slots.min() and new_slots.max() < num_slots):
            bad = next(int(s) for s in new_slots if not 0 <= s < num_slots)
            raise StepError(f"slot {bad} outside the pool of {num_slots}")
        if len(new_slots):
            plan.table_writes.append((state.row, start, new_slots))

    def _write_table(self, plan: StepPlan) -> None:
        if not plan.table_writes:
            return
        dev = self.device
        rows = np.concatenate([np.full(len(sl), row, np.int64) for row, _, sl in plan.table_writes])
        cols = np.concatenate([np.arange(c, c + len(sl), dtype=np.int64) for _, c, sl in plan.table_writes])
        slots = np.concatenate([sl for _, _, sl in plan.table_writes])
        self.req_to_slot[_a(rows, dev), _a(cols, dev)] = _a(slots, dev)

    def _plan(self, req: worker_pb2.StepRequest) -> StepPlan:
        plan = StepPlan()
        for ext in req.extends:
            if ext.is_new:
                state = self._admit(ext)
                self._claim(plan, state, np.array(ext.prefix_slots, np.int32), 0)
                state.context_len = ext.prefix_len
            else:
                state = self.requests.get(ext.rid)
                if state is None:
                    raise StepError(f"extend for unknown request {ext.rid}")
            n = len(ext.token_ids)
            if n == 0 or len(ext.slots) != n:
                raise StepError(f"request {ext.rid}: {n} tokens with {len(ext.slots)} slots")
            if ext.prefix_len != state.context_len:
                raise StepError(f"request {ext.rid}: prefix_len {ext.prefix_len} but {state.context_len} tokens cached")
            slots = np.array(ext.slots, np.int32)
            self._claim(plan, state, slots, state.context_len)
            if ext.score:
                self._plan_scores(plan, ext, state.context_len)
            plan.ext_ids.append(np.array(ext.token_ids, np.int64))
            plan.ext_positions.append(np.arange(state.context_len, state.context_len + n, dtype=np.int64))
            plan.ext_slots.append(slots)
            plan.ext_rows.append(state.row)
            plan.prefix_lens.append(state.context_len)
            plan.cu.append(plan.cu[-1] + n)
            state.context_len += n
            if ext.sample:
                plan.logits_index.append(plan.cu[-1] - 1)
                plan.samplers.append(state)
                plan.sampler_rids.append(ext.rid)
        rids, slots = req.decode_rids, req.decode_slots
        if len(rids) != len(slots):
            raise StepError(f"{len(rids)} decode rids with {len(slots)} decode slots")
        num_slots, first_index = self.pool.num_slots, plan.cu[-1]
        for rid, slot in zip(rids, slots):
            state = self.requests.get(rid)
            if state is None:
                raise StepError(f"decode for unknown request {rid}")
            if state.context_len >= self.max_context:
                raise StepError(f"context of {state.context_len + 1} tokens exceeds max_context {self.max_context}")
            if not 0 <= slot < num_slots:
                raise StepError(f"slot {slot} outside the pool of {num_slots}")
            plan.dec_positions.append(state.context_len)
            state.context_len += 1
            plan.dec_rows.append(state.row)
            plan.dec_lens.append(state.context_len)
            plan.samplers.append(state)
        plan.dec_slots.extend(slots)
        plan.logits_index.extend(range(first_index, first_index + len(rids)))
        plan.sampler_rids.extend(rids)
        if req.token_masks:
            self._plan_masks(plan, req.token_masks)
        return plan

    def _plan_masks(self, plan: StepPlan, masks) -> None:
        index = {rid: i for i, rid in enumerate(plan.sampler_rids)}
        size = 4 * ((self.model.spec.vocab_size + 31) // 32)
        for k, m in enumerate(masks):
            if m.rid not in index:
                raise StepError(f"token mask for request {m.rid}, which samples nothing in this step")
            if m.same_as:  # the mask of an earlier TokenMask of this step
                if not 0 < m.same_as <= k:
                    raise StepError(f"token mask {k} for request {m.rid} refers to mask {m.same_as - 1}, not an earlier one")
                allowed = plan.token_masks[m.same_as - 1][1]
            else:
                allowed = m.allowed
                if len(allowed) != size:
                    raise StepError(f"token mask of {len(allowed)} bytes for request {m.rid}; the vocabulary needs {size}")
            plan.token_masks.append((index[m.rid], allowed))

    def _plan_scores(self, plan: StepPlan, ext: worker_pb2.Extend, first_position: int) -> None:
        """Score each token of the extend as the prediction of the next one (prompt_logprobs)."""
        targets = list(ext.token_ids[1:]) + ([ext.score_next_token] if ext.score_next_token >= 0 else [])
        if ext.score_next_token != -1 and not 0 <= ext.score_next_token < self.model.spec.vocab_size:
            raise StepError(f"request {ext.rid}: score_next_token {ext.score_next_token} outside the vocabulary")
        if not 0 <= ext.score_top_n <= MAX_SCORE_TOP_N:
            raise StepError(f"request {ext.rid}: score_top_n {ext.score_top_n} outside [0, {MAX_SCORE_TOP_N}]")
        if not targets:
            return
        first_row = plan.cu[-1]
        plan.score_index.extend(range(first_row, first_row + len(targets)))
        plan.score_targets.extend(targets)
        plan.score_rids.append(ext.rid)
        plan.score_first_positions.append(first_position)
        plan.score_counts.append(len(targets))
        plan.score_top_n = max(plan.score_top_n, ext.score_top_n)

    def _forward_batch(self, plan: StepPlan) -> ForwardBatch:
        dev = self.device
        decode_rows = _t(plan.dec_rows, torch.int32, dev)
        ids = np.concatenate(plan.ext_ids) if plan.ext_ids else np.zeros(0, np.int64)
        positions = np.concatenate(plan.ext_positions + [np.array(plan.dec_positions, np.int64)])
        slots = np.concatenate(plan.ext_slots + [np.array(plan.dec_slots, np.int32)]).astype(np.int64)
        return ForwardBatch(
            input_ids=torch.cat([_a(ids, dev), self.last_tokens[decode_rows.long()]]),
            positions=_a(positions, dev),
            slots=_a(slots, dev),
            req_to_slot=self.req_to_slot,
            num_extend_tokens=plan.num_extend_tokens,
            extend_rows=_t(plan.ext_rows, torch.int32, dev),
            extend_cu_seqlens=_t(plan.cu, torch.int32, dev),
            extend_prefix_lens=_t(plan.prefix_lens, torch.int32, dev),
            extend_max_new_len=max((b - a for a, b in zip(plan.cu, plan.cu[1:])), default=0),
            decode_rows=decode_rows,
            decode_seq_lens=_t(plan.dec_lens, torch.int32, dev),
            # None when every row samples (decode-only steps): no gather, and the norms can move
            # into the projections (worker/residual.py). The indices are distinct and increasing,
            # so one per row means all of them.
            logits_index=(None if len(plan.logits_index) == len(positions) and not plan.score_index
                          else _t(plan.logits_index, torch.long, dev)),
            score_index=_t(plan.score_index, torch.long, dev) if plan.score_index else None,
        )


def _t(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return to_device(torch.tensor(values, dtype=dtype), device)


def _a(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on the device (a copy: torch.from_numpy shares the array's memory)."""
    t = torch.from_numpy(values)
    return to_device(t, device) if device.type != "cpu" else t.clone()
