"""Drive a ModelRunner in-process the way the scheduler does (slots, deltas, launch-ahead),
without gRPC: what the worker alone can do."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from litelang.proto import worker_pb2
from litelang.worker.runner import ModelRunner


@dataclass
class Result:
    tokens: dict[int, list[int]]
    prefill_s: float
    decode_s: float
    decode_gpu_ms: float = 0.0   # summed GPU time of the decode steps (CUDA events)
    decode_gap_ms: float = 0.0   # summed GPU idle time between decode steps

    @property
    def decode_idle_share(self) -> float:
        return self.decode_gap_ms / max(self.decode_gpu_ms + self.decode_gap_ms, 1e-9)


def greedy(temperature: float = 0.0, seed: int = 0) -> worker_pb2.Sampling:
    return worker_pb2.Sampling(temperature=temperature, top_p=1.0, seed=seed)


def run_batch(
    runner: ModelRunner, prompts: list[list[int]], new_tokens: int, sampling: worker_pb2.Sampling | None = None,
    first_rid: int = 1, decode_context: contextlib.AbstractContextManager | None = None,
    score_top_n: int | None = None,
) -> Result:
    """Prefill every prompt in one step, then decode new_tokens - 1 steps with launch-ahead;
    returns tokens and wall times (CUDA-synchronised). decode_context (e.g. a profiler) is
    entered around the decode steps only. score_top_n: also score the prompts (prompt_logprobs)."""
    sampling = sampling or greedy()
    next_slot = 0

    def take(n: int) -> list[int]:
        nonlocal next_slot
        out = list(range(next_slot, next_slot + n))
        next_slot += n
        return out

    rids = list(range(first_rid, first_rid + len(prompts)))
    out = {rid: [] for rid in rids}
    sync = torch.cuda.synchronize if runner.device.type == "cuda" else (lambda: None)
    timer = _Timer(sync)
    with torch.no_grad():
        req = worker_pb2.StepRequest(step_id=0)
        for rid, p in zip(rids, prompts):
            ext = req.extends.add(rid=rid, token_ids=p, slots=take(len(p)), sample=True, is_new=True, sampling=sampling)
            if score_top_n is not None:
                ext.score, ext.score_next_token, ext.score_top_n = True, -1, score_top_n
        timer.start()
        reply = runner.step(req)
        for rid, token in zip(reply.rids, reply.token_ids):
            out[rid].append(token)
        prefill_s = timer.stop()
        timer.start()
        pending = None
        gpu_ms = gap_ms = 0.0

        def collect(reply) -> None:
            nonlocal gpu_ms, gap_ms
            gpu_ms += reply.gpu_ms
            gap_ms += reply.gpu_gap_ms
            for rid, token in zip(reply.rids, reply.token_ids):
                out[rid].append(token)

        with decode_context or contextlib.nullcontext():
            for step in range(1, new_tokens):
                req = worker_pb2.StepRequest(step_id=step)
                req.decode_rids.extend(rids)
                req.decode_slots.extend(take(len(rids)))
                launched = runner.launch(req)
                if pending is not None:
                    collect(pending.result())
                pending = launched
            if pending is not None:
                collect(pending.result())
        decode_s = timer.stop()
        runner.step(worker_pb2.StepRequest(step_id=new_tokens, release=rids))
    return Result(out, prefill_s, decode_s, gpu_ms, gap_ms)


@dataclass
class Scheduled:
    """One request of run_staggered: its prompt, the step its prefill starts at, and the tokens
    its prompt is prefilled in per step (None: all in one step)."""
    prompt: list[int]
    arrival: int = 0
    chunk: int | None = None


def run_staggered(runner: ModelRunner, requests: list[Scheduled], new_tokens: int,
                  sampling: worker_pb2.Sampling | None = None, first_rid: int = 1,
                  ) -> dict[int, list[tuple[int, float]]]:
    """Step requests that arrive at different steps and prefill in chunks, so their prefills
    share steps with other requests' decodes (mixed steps), as the scheduler runs them. Returns
    each rid's (token, logprob) pairs; every request stops after new_tokens tokens."""
    sampling = sampling or greedy()
    rids = list(range(first_rid, first_rid + len(requests)))
    prefilled = dict.fromkeys(rids, 0)  # prompt tokens in the cache so far
    out: dict[int, list[tuple[int, float]]] = {rid: [] for rid in rids}
    next_slot, step, finished = 0, 0, []

    def take(n: int) -> list[int]:
        nonlocal next_slot
        next_slot += n
        return list(range(next_slot - n, next_slot))

    with torch.no_grad():
        while any(len(out[rid]) < new_tokens for rid in rids):
            req = worker_pb2.StepRequest(step_id=step, release=finished)
            finished = []
            for rid, r in zip(rids, requests):
                done, n = prefilled[rid], len(r.prompt)
                if step < r.arrival or len(out[rid]) >= new_tokens:
                    continue
                if done < n:
                    part = r.prompt[done : done + (r.chunk or n)]
                    req.extends.add(rid=rid, token_ids=part, slots=take(len(part)), sample=done + len(part) == n,
                                    is_new=done == 0, prefix_len=done, sampling=sampling)
                    prefilled[rid] += len(part)
                else:
                    req.decode_rids.append(rid)
                    req.decode_slots.extend(take(1))
            reply = runner.step(req)
            for rid, token, logprob in zip(reply.rids, reply.token_ids, reply.logprobs):
                out[rid].append((token, logprob))
                if len(out[rid]) == new_tokens:
                    finished.append(rid)
            step += 1
        runner.step(worker_pb2.StepRequest(step_id=step, release=finished))
    return out


class _Timer:
    def __init__(self, sync):
        import time

        self.sync, self.clock, self.t0 = sync, time.perf_counter, 0.0

    def start(self) -> None:
        self.sync()
        self.t0 = self.clock()

    def stop(self) -> float:
        self.sync()
        return self.clock() - self.t0
