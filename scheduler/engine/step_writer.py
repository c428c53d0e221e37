"""The one place that writes the worker protocol's StepRequest (worker.proto): the scheduler
decides what a step does, StepWriter says it in the worker's terms (extends with their sampling,
prompt scoring and cached prefixes, decode slots, token masks, releases)."""

from __future__ import annotations

from litelang.proto import worker_pb2
from litelang.scheduler.engine.request import Request


class StepWriter:
    def __init__(self, step_id: int):
        self.step = worker_pb2.StepRequest(step_id=step_id)
        self._masks: dict[bytes, int] = {}  # the step's distinct token masks -> index

    @property
    def empty(self) -> bool:
        """Nothing to compute: the step is not sent."""
        return not (self.step.extends or self.step.decode_rids)

    @property
    def prompt_tokens(self) -> int:
        """Tokens the step's extends read (what makes a step long)."""
        return sum(len(e.token_ids) for e in self.step.extends)

    def decode(self, reqs: list[Request], slots: list[int]) -> None:
        """One token each: the worker feeds each request its own last sampled token."""
        self.step.decode_rids.extend([r.rid for r in reqs])
        self.step.decode_slots.extend(slots)
        for r in reqs:
            if r.matcher:
                add_token_mask(self.step, r.rid, r.matcher.allowed(), self._masks)

    def extend(self, r: Request, start: int, slots: list[int], is_new: bool) -> None:
        """r's context tokens [start, start + len(slots)) into these slots; the first extend of an
        admission also carries its cached prefix and its sampling."""
        end = start + len(slots)
        ext = self.step.extends.add(
            rid=r.rid, token_ids=r.context(start, end), slots=slots, prefix_len=start,
            sample=end == r.prefill_target, is_new=is_new, prefix_slots=r.slots[:start] if is_new else [],
        )
        if r.matcher and ext.sample:
            add_token_mask(self.step, r.rid, r.matcher.allowed(), self._masks)
        if r.scores_prompt and start < len(r.prompt_ids) - 1:
            ext.score, ext.score_top_n = True, r.sampling.prompt_logprobs
            ext.score_next_token = r.prompt_ids[end] if end < len(r.prompt_ids) else -1
        if is_new:
            s = r.sampling
            ext.sampling.CopyFrom(s.to_worker(len(r.prompt_ids), r.stop_token_set))
            if s.penalized:
                ext.prompt_ids.extend(r.prompt_ids)
                ext.generated_ids.extend(r.output_ids)

    def release(self, rids: list[int]) -> None:
        """Requests the worker may forget (finished, failed or retracted)."""
        self.step.release.extend(rids)

    def take_back_releases(self) -> list[int]:
        """The releases of a step that is not sent, for the next one."""
        return list(self.step.release)


def add_token_mask(step: worker_pb2.StepRequest, rid: int, allowed: bytes, seen: dict[bytes, int]) -> None:
    """rid's TokenMask in the step: its bytes the first time a mask occurs in the step, a
    reference to that one (same_as) after. seen: the step's masks so far -> their index."""
    first = seen.setdefault(allowed, len(step.token_masks))
    if first == len(step.token_masks):
        step.token_masks.add(rid=rid, allowed=allowed)
    else:
        step.token_masks.add(rid=rid, same_as=first + 1)
