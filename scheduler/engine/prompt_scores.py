"""prompt_logprobs: the scores the worker returns for prompt positions, kept per request, and
handed to the client once, on the request's first event."""

from __future__ import annotations

from litelang.proto import worker_pb2
from litelang.scheduler.engine.request import Request
from litelang.scheduler.messages import OutputEvent


def take_prompt_scores(reply: worker_pb2.StepResponse, by_rid: dict[int, Request]) -> None:
    """Keep each scored position that continues a request's prompt scores (a chunk scored
    again after a retraction, or a position past the prompt, is skipped)."""
    n, offset = reply.score_top_n, 0
    for rid, first, count in zip(reply.score_rids, reply.score_first_positions, reply.score_counts):
        r = by_rid.get(rid)
        for k in range(count):
            p = first + k
            if r is not None and p == len(r.prompt_scores) and p < len(r.prompt_ids) - 1:
                r.prompt_scores.append(reply.score_logprobs[offset + k])
                if r.sampling.prompt_logprobs:
                    row = (offset + k) * n
                    m = r.sampling.prompt_logprobs
                    r.prompt_top.append((list(reply.score_top_ids[row : row + m]),
                                         list(reply.score_top_logprobs[row : row + m])))
        offset += count


def attach_prompt_scores(r: Request, ev: OutputEvent) -> None:
    """The prompt's scores on the request's first event, when it asked for them."""
    if r.sampling.prompt_logprobs is not None and not r.prompt_scores_sent:
        r.prompt_scores_sent = True
        ev.prompt_logprobs = r.prompt_scores
        ev.prompt_top_logprobs = r.prompt_top if r.sampling.prompt_logprobs else None
