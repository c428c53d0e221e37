"""Where a 40 x 600 prefill's wall time goes beyond its kernels: GPU idle before, between and
after them (torch.profiler with CPU activity), and timers around the worker's host steps.

Usage (GPU): python -m litelang.bench.probe_prefill_host
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import litelang.worker.runner as runner_module
from litelang.bench.bench_model import litelang_runner, prompts
from litelang.bench.driver import run_batch
from litelang.bench.shapes import random_checkpoint


def idle_gaps(runner, vocab: int) -> None:
    """The profiled step: first kernel's start, idle between kernels, the longest gaps."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function("STEP"):
            r = run_batch(runner, prompts(40, 600, vocab, 20), 1)
    print(f"profiled prefill wall {r.prefill_s * 1000:.2f} ms")
    events = prof.events()
    step = next(e for e in events if e.name == "STEP")
    kernels = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    t0 = step.time_range.start
    print(f"first kernel starts {(kernels[0].time_range.start - t0) / 1000:.3f} ms after STEP "
          f"(which includes building the request); last ends {(kernels[-1].time_range.end - t0) / 1000:.3f} ms")
    gaps = [(b.time_range.start - a.time_range.end, a.name[:50], b.name[:50]) for a, b in zip(kernels, kernels[1:])]
    gaps = [g for g in gaps if g[0] > 0]
    print(f"GPU idle between kernels {sum(g for g, _, _ in gaps) / 1000:.2f} ms")
    for g, a, b in sorted(gaps, reverse=True)[:10]:
        print(f"  {g:8.1f} us  after {a}  before {b}")


def host_timers(runner, vocab: int) -> None:
    """Wall time of each host step of the worker's launch, summed per prefill."""
    spent: dict[str, float] = {}

    def timed(name, fn):
        def call(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
            return out
        return call

    for name in ("_plan", "_write_table", "_forward_batch"):
        setattr(runner, name, timed(name, getattr(runner, name)))
    runner_module.sample_and_record = timed("sample_and_record (launches)", runner_module.sample_and_record)
    states = runner_module.SamplingTensors.from_states
    runner_module.SamplingTensors.from_states = staticmethod(timed("SamplingTensors", states))
    for i in range(4):
        spent.clear()
        r = run_batch(runner, prompts(40, 600, vocab, 30 + i), 1)
        print(f"wall {r.prefill_s * 1000:.2f} ms; " + ", ".join(f"{k} {v * 1000:.2f}" for k, v in spent.items()))


def main() -> None:
    path = random_checkpoint("qwen2-1.5b", Path("/tmp/litelang-bench") / "qwen2-1.5b")
    runner = litelang_runner(path, max_batch=64, max_context=2048)
    vocab = runner.model.spec.vocab_size
    for i in range(3):
        print(f"prefill wall {run_batch(runner, prompts(40, 600, vocab, 10 + i), 1).prefill_s * 1000:.2f} ms")
    idle_gaps(runner, vocab)
    host_timers(runner, vocab)


if __name__ == "__main__":
    main()
