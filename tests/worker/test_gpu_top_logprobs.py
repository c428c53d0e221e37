"""GPU: Sampling.top_logprobs in the worker at Qwen2-1.5B shapes (random weights, bf16): steps that
ask for alternatives take them after the CUDA graph and change no request's tokens or logprobs;
in deterministic mode a request's alternatives and logprobs are the same bits alone or in a
batch, asked for or not. Run with -m gpu."""

from __future__ import annotations

import pytest
import torch

from litelang.bench.shapes import random_checkpoint
from litelang.configs.schema import LitelangConfig
from litelang.proto import worker_pb2
from litelang.worker.setup import build_runner

pytestmark = pytest.mark.gpu
VOCAB = 151936

# (token, logprob, top ids, top logprobs) of one sampled position
Position = tuple[int, float, list[int], list[float]]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.fail("GPU tests need CUDA")
    return random_checkpoint("qwen2-1.5b", tmp_path_factory.mktemp("q15_top") / "ckpt")


def make_runner(path, deterministic: bool = False):
    cfg = LitelangConfig(model=str(path), device="cuda", max_batch_size=16, max_input_length=512,
                         max_output_length=512, kv_slots=8000, cuda_graphs=True, deterministic=deterministic,
                         warmup=False)
    return build_runner(cfg, rank=0)


def prompts(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (int(length),), generator=g).tolist()
            for length in torch.randint(3, 200, (n,), generator=g)]


def run(runner, requests: list[tuple[list[int], worker_pb2.Sampling]], new_tokens: int) -> list[list[Position]]:
    """Prefill every request in one step, then decode with launch-ahead (as the scheduler does);
    each request's positions, its alternatives cut to what it asked for."""
    out: list[list[Position]] = [[] for _ in requests]
    asked = [s.top_logprobs for _, s in requests]
    next_slot = 0

    def take(n: int) -> list[int]:
        nonlocal next_slot
        next_slot += n
        return list(range(next_slot - n, next_slot))

    def collect(reply: worker_pb2.StepResponse) -> None:
        n = reply.top_n
        assert n == max(asked), "top_n is the most any request of the step asked for"
        for i, (rid, token, lp) in enumerate(zip(reply.rids, reply.token_ids, reply.logprobs)):
            k = asked[rid]
            ids, lps = list(reply.top_ids[i * n : i * n + k]), list(reply.top_logprobs[i * n : i * n + k])
            out[rid].append((token, lp, ids, lps))

    rids = list(range(len(requests)))
    req = worker_pb2.StepRequest(step_id=0)
    for rid, (prompt, sampling) in zip(rids, requests):
        req.extends.add(rid=rid, token_ids=prompt, slots=take(len(prompt)), sample=True, is_new=True, sampling=sampling)
    collect(runner.step(req))
    pending = None
    for step in range(1, new_tokens):
        launched = runner.launch(worker_pb2.StepRequest(step_id=step, decode_rids=rids, decode_slots=take(len(rids))))
        if pending is not None:
            collect(pending.result())
        pending = launched
    collect(pending.result())
    runner.step(worker_pb2.StepRequest(step_id=new_tokens, release=rids))
    return out


def greedy(top: int = 0) -> worker_pb2.Sampling:
    return worker_pb2.Sampling(temperature=0.0, top_p=1.0, top_logprobs=top)


def sampled(top: int = 0) -> worker_pb2.Sampling:
    return worker_pb2.Sampling(temperature=0.9, top_p=0.95, seed=7, repetition_penalty=1.2, top_logprobs=top)


def check_rows(positions: list[Position], is_greedy: bool) -> None:
    for token, lp, ids, lps in positions:
        assert lps == sorted(lps, reverse=True), "most likely first"
        if token in ids:
            assert lps[ids.index(token)] == lp, "the token's entry is its logprob, bit for bit"
        if is_greedy:
            assert ids[0] == token


@pytest.mark.parametrize("with_sampled", [False, True], ids=["greedy-graph", "full-graph"])
def test_top_logprobs_change_nothing_else(ckpt, with_sampled):
    """The top-N are taken after the step's CUDA graph (greedy, or full sampling when a request
    samples) from the logits it kept: every request's tokens and logprobs are the same bits
    whether or not some request asks, and the asking ones get well-formed alternatives."""
    runner = make_runner(ckpt)
    ps = prompts(3, seed=1)
    third = (sampled(3), sampled()) if with_sampled else (greedy(3), greedy())
    asking = run(runner, [(ps[0], greedy(5)), (ps[1], greedy()), (ps[2], third[0])], 12)
    plain = run(runner, [(ps[0], greedy()), (ps[1], greedy()), (ps[2], third[1])], 12)
    check_rows(asking[0], is_greedy=True)
    check_rows(asking[2], is_greedy=not with_sampled)
    assert all(len(p[2]) == 5 for p in asking[0]) and all(len(p[2]) == 3 for p in asking[2])
    assert not any(p[2] for p in asking[1] + plain[0])
    for rid in range(3):
        assert [p[:2] for p in asking[rid]] == [p[:2] for p in plain[rid]], f"request {rid}: tokens or logprobs moved"


@pytest.mark.parametrize("make", [greedy, sampled], ids=["greedy", "sampled"])
def test_deterministic_top_logprobs_are_batch_invariant(ckpt, make):
    """deterministic: true: the target's positions, alternatives included, bit for bit alone
    and beside 9 companions (some asking, some not); and its tokens and logprobs equal those of
    the same request not asking."""
    runner = make_runner(ckpt, deterministic=True)
    target, *companions = prompts(10, seed=3)
    alone = run(runner, [(target, make(5))], 10)[0]
    mixed = [(p, greedy(2) if i % 3 == 0 else make()) for i, p in enumerate(companions)]
    batched = run(runner, mixed[:4] + [(target, make(5))] + mixed[4:], 10)[4]
    assert batched == alone
    check_rows(alone, is_greedy=not make().temperature)
    quiet = run(runner, [(target, make())], 10)[0]
    assert [(t, lp) for t, lp, _, _ in quiet] == [(t, lp) for t, lp, _, _ in alone]
