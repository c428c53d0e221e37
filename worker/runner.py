"""The worker's running batch and one step of it: deltas in, sampled tokens out.

The batch persists here between steps: each request's row of the req->slot table, its
context length and its last sampled token (on the device), so a decode step needs only the
request id and the one new slot from the scheduler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from litelang.kernels import KernelSet
from litelang.proto import worker_pb2
from litelang.worker.forward_batch import ForwardBatch
from litelang.worker.kv_pool import KVPool
from litelang.worker.model import Qwen2Model


class StepError(ValueError):
    """The scheduler sent a step that contradicts the worker's state (a protocol bug)."""


@dataclass
class RequestState:
    row: int
    context_len: int = 0  # tokens of this request whose k/v are in the pool
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int = 0


class ModelRunner:
    def __init__(self, model: Qwen2Model, pool: KVPool, kernels: KernelSet, max_batch_size: int, max_context: int):
        self.model, self.pool, self.kernels = model, pool, kernels
        self.device = model.device
        self.max_context = max_context
        rows = max_batch_size
        self.req_to_slot = torch.zeros((rows, max_context), dtype=torch.int32, device=self.device)
        self.last_tokens = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.free_rows = list(range(rows - 1, -1, -1))
        self.requests: dict[int, RequestState] = {}

    def reset(self) -> None:
        self.free_rows = list(range(self.req_to_slot.shape[0] - 1, -1, -1))
        self.requests.clear()

    # ------------------------------------------------------------------

    def step(self, req: worker_pb2.StepRequest) -> worker_pb2.StepResponse:
        start = time.perf_counter()
        for rid in req.release:
            state = self.requests.pop(rid, None)
            if state is not None:
                self.free_rows.append(state.row)
        if not req.extends and not req.decodes:
            return worker_pb2.StepResponse(step_id=req.step_id)
        batch, samplers = self._build_batch(req)
        logits = self.model.forward(batch, self.pool.k, self.pool.v)
        tokens, logprobs = self._sample(logits, samplers)
        rows = torch.tensor([s.row for s in samplers], dtype=torch.long, device=self.device)
        self.last_tokens[rows] = tokens
        rids = [rid for rid, _ in self._sampler_ids]
        out = worker_pb2.StepResponse(step_id=req.step_id)
        for rid, tok, lp in zip(rids, tokens.tolist(), logprobs.tolist()):
            out.tokens.add(rid=rid, token_id=tok, logprob=lp)
        out.forward_ms = (time.perf_counter() - start) * 1000.0
        return out

    # ------------------------------------------------------------------

    def _admit(self, ext: worker_pb2.Extend) -> RequestState:
        if ext.rid in self.requests:
            raise StepError(f"request {ext.rid} is already running")
        if not self.free_rows:
            raise StepError("more running requests than max_batch_size")
        if len(ext.prefix_slots) != ext.prefix_len:
            raise StepError(f"request {ext.rid}: prefix_len {ext.prefix_len} != {len(ext.prefix_slots)} prefix slots")
        s = ext.sampling
        state = RequestState(
            row=self.free_rows.pop(), temperature=s.temperature, top_k=s.top_k,
            top_p=s.top_p if s.top_p > 0 else 1.0, min_p=s.min_p, seed=s.seed,
        )
        self.requests[ext.rid] = state
        return state

    def _build_batch(self, req: worker_pb2.StepRequest) -> tuple[ForwardBatch, list[RequestState]]:
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        table_rows: list[int] = []
        table_cols: list[int] = []
        table_slots: list[int] = []
        ext_rows, cu, prefix_lens = [], [0], []
        dec_rows, dec_lens = [], []
        logits_index: list[int] = []
        samplers: list[RequestState] = []
        self._sampler_ids: list[tuple[int, RequestState]] = []
        num_slots = self.pool.num_slots

        def claim(state: RequestState, new_slots, start: int) -> None:
            if start + len(new_slots) > self.max_context:
                raise StepError(f"context of {start + len(new_slots)} tokens exceeds max_context {self.max_context}")
            for j, slot in enumerate(new_slots):
                if not 0 <= slot < num_slots:
                    raise StepError(f"slot {slot} outside the pool of {num_slots}")
                table_rows.append(state.row)
                table_cols.append(start + j)
                table_slots.append(slot)

        for ext in req.extends:
            if ext.is_new:
                state = self._admit(ext)
                claim(state, ext.prefix_slots, 0)
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
            claim(state, ext.slots, state.context_len)
            ids.extend(ext.token_ids)
            positions.extend(range(state.context_len, state.context_len + n))
            slots.extend(ext.slots)
            ext_rows.append(state.row)
            prefix_lens.append(state.context_len)
            cu.append(cu[-1] + n)
            state.context_len += n
            if ext.sample:
                logits_index.append(len(ids) - 1)
                samplers.append(state)
                self._sampler_ids.append((ext.rid, state))
        num_extend_tokens = len(ids)
        for dec in req.decodes:
            state = self.requests.get(dec.rid)
            if state is None:
                raise StepError(f"decode for unknown request {dec.rid}")
            claim(state, [dec.slot], state.context_len)
            positions.append(state.context_len)
            slots.append(dec.slot)
            state.context_len += 1
            dec_rows.append(state.row)
            dec_lens.append(state.context_len)
            logits_index.append(num_extend_tokens + len(dec_rows) - 1)
            samplers.append(state)
            self._sampler_ids.append((dec.rid, state))

        dev = self.device

        def t(values, dtype=torch.int32) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype).to(dev, non_blocking=True)

        if table_rows:
            self.req_to_slot[t(table_rows, torch.long), t(table_cols, torch.long)] = t(table_slots)
        decode_rows = t(dec_rows)
        input_ids = torch.cat([t(ids, torch.long), self.last_tokens[decode_rows.long()]])
        batch = ForwardBatch(
            input_ids=input_ids,
            positions=t(positions, torch.long),
            slots=t(slots, torch.long),
            req_to_slot=self.req_to_slot,
            num_extend_tokens=num_extend_tokens,
            extend_rows=t(ext_rows),
            extend_cu_seqlens=t(cu),
            extend_prefix_lens=t(prefix_lens),
            extend_max_new_len=max((b - a for a, b in zip(cu, cu[1:])), default=0),
            decode_rows=decode_rows,
            decode_seq_lens=t(dec_lens),
            logits_index=t(logits_index, torch.long),
        )
        return batch, samplers

    def _sample(self, logits: torch.Tensor, samplers: list[RequestState]) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        f32 = torch.float32
        tokens = self.kernels.sample(
            logits,
            torch.tensor([s.temperature for s in samplers], dtype=f32).to(dev),
            torch.tensor([s.top_k for s in samplers], dtype=torch.int32).to(dev),
            torch.tensor([s.top_p for s in samplers], dtype=f32).to(dev),
            torch.tensor([s.min_p for s in samplers], dtype=f32).to(dev),
            torch.tensor([s.seed & 0x7FFFFFFFFFFFFFFF for s in samplers], dtype=torch.long).to(dev),
            # the sampled token's index in its sequence keys the random stream
            torch.tensor([s.context_len for s in samplers], dtype=torch.long).to(dev),
        )
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None])[:, 0]
        return tokens, logprobs
