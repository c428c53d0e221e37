"""Parity with HF transformers, for any family: HF's greedy tokens, and the worker's runner
driven directly, one StepRequest at a time, with no scheduler in front."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from litelang.proto import worker_pb2


def hf_greedy(path, prompt: list[int], n: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(prompt):].tolist()


class SlotPool:
    """A trivial allocator for driving the runner directly."""

    def __init__(self):
        self.next = 0

    def take(self, n: int) -> list[int]:
        # hand out slots in a scrambled order so nothing relies on contiguity
        out = [(self.next + i) * 7 % 1000 for i in range(n)]
        self.next += n
        return out


def greedy_sampling() -> worker_pb2.Sampling:
    return worker_pb2.Sampling(temperature=0.0, top_p=1.0)


def run_greedy(runner, prompts: dict[int, list[int]], n: int, chunk: int | None = None) -> dict[int, list[int]]:
    """Prefill all prompts (optionally in chunks) then decode n-1 steps together."""
    slots = SlotPool()
    out = {rid: [] for rid in prompts}
    step = 0
    pending = {rid: 0 for rid in prompts}  # tokens prefilled so far
    while pending:
        req = worker_pb2.StepRequest(step_id=step)
        for rid, done in list(pending.items()):
            p = prompts[rid]
            size = len(p) - done if chunk is None else min(chunk, len(p) - done)
            last = done + size == len(p)
            req.extends.add(
                rid=rid, token_ids=p[done : done + size], slots=slots.take(size), prefix_len=done,
                sample=last, is_new=done == 0, sampling=greedy_sampling(),
            )
            pending[rid] = done + size
            if last:
                del pending[rid]
        reply = runner.step(req)
        for rid, token in zip(reply.rids, reply.token_ids):
            out[rid].append(token)
        step += 1
    for _ in range(n - 1):
        req = worker_pb2.StepRequest(step_id=step)
        req.decode_rids.extend(prompts)
        req.decode_slots.extend(slots.take(len(prompts)))
        reply = runner.step(req)
        for rid, token in zip(reply.rids, reply.token_ids):
            out[rid].append(token)
        step += 1
    return out


def greedy_on_rank(rank: int, cfg, prompts: dict[int, list[int]], n: int, results) -> None:
    """One tensor-parallel rank in its own process: build the runner (joining the gloo group) and
    run the same greedy steps as the other ranks; rank 0 puts its tokens on results."""
    from litelang.worker.setup import build_runner

    got = run_greedy(build_runner(cfg, rank=rank), prompts, n)
    if rank == 0:
        results.put(got)


def assert_teacher_forced(runner, hf, seqs: dict[int, list[int]], slots: "SlotPool", steps: int,
                          check_prefill: bool = True, tol: float = 1e-4) -> None:
    """Prefill each sequence but its last `steps` tokens, then `steps` decode steps fed the true
    next token: every row's logits within tol of HF's at the same position."""
    import torch

    from litelang.proto import worker_pb2

    def hf_last(ids: list[int]):
        with torch.no_grad():
            return hf(torch.tensor([ids])).logits[0, -1]

    req = worker_pb2.StepRequest(step_id=0)
    for rid, s in seqs.items():
        n = len(s) - steps
        req.extends.add(rid=rid, token_ids=s[:n], slots=slots.take(n), sample=True, is_new=True,
                        sampling=greedy_sampling())
    got = runner.forward_logits(req)
    if check_prefill:
        for row, (rid, s) in zip(got, seqs.items()):
            torch.testing.assert_close(row, hf_last(s[: len(s) - steps]), atol=tol, rtol=tol, msg=f"request {rid}, prefill")
    for step in range(steps):
        req = worker_pb2.StepRequest(step_id=step + 1, decode_rids=list(seqs))
        req.decode_slots.extend(slots.take(len(seqs)))
        for rid, s in seqs.items():
            runner.last_tokens[runner.row_of(rid)] = s[len(s) - steps + step]
        for row, (rid, s) in zip(runner.forward_logits(req), seqs.items()):
            torch.testing.assert_close(row, hf_last(s[: len(s) - steps + step + 1]), atol=tol, rtol=tol,
                                       msg=f"request {rid}, decode step {step}")
