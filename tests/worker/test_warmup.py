"""The start-up warm-up's steps (worker/warmup.py) are valid steps for the runner, within its
limits, and leave it as it was. (On the GPU, tests/worker/test_gpu_model.py checks that after it
a serving-like mix of steps compiles no Triton kernel.)"""

from __future__ import annotations

import pytest

from helpers import make_tiny_qwen2
from litelang.configs.schema import LitelangConfig
from litelang.worker.setup import build_runner
from litelang.worker.warmup import BATCHES, PREFILL_TOKENS, warm_up, warmup_steps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_qwen2(tmp_path_factory.mktemp("warm") / "m", max_position_embeddings=1024)


@pytest.mark.parametrize("max_batch,kv_slots,max_len", [(160, 8000, 512), (4, 300, 64), (4, 300, 35)])
def test_warmup_steps_run_and_leave_the_runner_empty(tiny, max_batch, kv_slots, max_len):
    runner = build_runner(LitelangConfig(model=str(tiny), device="cpu", kv_slots=kv_slots, max_batch_size=max_batch,
                                         max_input_length=max_len, max_output_length=max_len), rank=0)
    assert warm_up(runner) == 0  # CPU: the torch kernels have nothing to compile
    prefills, batches = set(), set()
    for req in warmup_steps(runner):
        reply = runner.step(req)  # raises StepError on an invalid step
        samplers = sum(e.sample for e in req.extends) + len(req.decode_rids)
        assert len(reply.rids) == samplers and len(reply.token_ids) == samplers
        if len(req.extends) == 1 and not req.decode_rids:
            prefills.add(len(req.extends[0].token_ids))
        batches.add(len(req.extends) + len(req.decode_rids))
    runner.reset()
    assert not runner.requests and len(runner.free_rows) == max_batch
    limit = min(runner.max_context - 1, kv_slots // 2)
    assert prefills >= {n for n in PREFILL_TOKENS if n <= limit}  # nothing skipped that fits
    assert batches >= {b + 1 for b in BATCHES if b < max_batch - 1 and 2 * b + 1 <= kv_slots // 2}
