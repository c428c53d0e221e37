"""CUDA graphs of decode-only steps, one per batch-size bucket.

A decode step of a small model is hundreds of short kernels; launching them from Python costs
more than running them. Each bucket's whole step (forward, sampling, storing the sampled
tokens) is captured once and replayed with new inputs copied into static buffers. Batches are
padded to the next bucket with a dummy row that reads and writes only the scratch KV slot.
"""

from __future__ import annotations

import logging

import torch

from litelang.worker.forward_batch import ForwardBatch
from litelang.worker.runner import ModelRunner, SamplingTensors, StepPlan, sample_and_record

log = logging.getLogger("litelang.worker")


def batch_buckets(max_batch_size: int) -> list[int]:
    sizes = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512]
    return [s for s in sizes if s < max_batch_size] + [max_batch_size]


class DecodeGraphs:
    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self.buckets = batch_buckets(runner.max_batch_size)
        n = self.buckets[-1]
        dev = runner.device
        self.rows = torch.full((n,), runner.dummy_row, dtype=torch.int32, device=dev)
        self.positions = torch.zeros(n, dtype=torch.long, device=dev)
        self.slots = torch.full((n,), runner.pool.scratch_slot, dtype=torch.long, device=dev)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=dev)
        self.sampling = SamplingTensors(
            temperature=torch.zeros(n, dtype=torch.float32, device=dev),
            top_k=torch.zeros(n, dtype=torch.int32, device=dev),
            top_p=torch.ones(n, dtype=torch.float32, device=dev),
            min_p=torch.zeros(n, dtype=torch.float32, device=dev),
            seeds=torch.zeros(n, dtype=torch.long, device=dev),
            positions=torch.zeros(n, dtype=torch.long, device=dev),
        )
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def fits(self, batch_size: int) -> bool:
        return batch_size <= self.buckets[-1]

    def _body(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.runner
        rows = self.rows[:b]
        dev = r.device
        batch = ForwardBatch(
            input_ids=r.last_tokens[rows.long()],
            positions=self.positions[:b],
            slots=self.slots[:b],
            req_to_slot=r.req_to_slot,
            num_extend_tokens=0,
            extend_rows=torch.empty(0, dtype=torch.int32, device=dev),
            extend_cu_seqlens=torch.zeros(1, dtype=torch.int32, device=dev),
            extend_prefix_lens=torch.empty(0, dtype=torch.int32, device=dev),
            extend_max_new_len=0,
            decode_rows=rows,
            decode_seq_lens=self.seq_lens[:b],
            logits_index=torch.arange(b, device=dev),
        )
        s = self.sampling
        sampling = SamplingTensors(
            s.temperature[:b], s.top_k[:b], s.top_p[:b], s.min_p[:b], s.seeds[:b], s.positions[:b]
        )
        return sample_and_record(
            r.model, r.kernels, batch, sampling, rows.long(), r.last_tokens, r.pool.k, r.pool.v, r.model.tp
        )

    @torch.inference_mode()
    def capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for b in reversed(self.buckets):  # largest first: smaller graphs reuse its memory
                for _ in range(2):  # warm up (Triton compiles, cuBLAS picks algorithms)
                    self._body(b)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    tokens, logprobs = self._body(b)
                self.graphs[b] = (graph, tokens, logprobs)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        log.info("captured decode CUDA graphs for batch sizes %s", self.buckets)

    def run(self, plan: StepPlan) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(plan.dec_rows)
        b = next(x for x in self.buckets if x >= n)
        r = self.runner
        host = SamplingTensors.from_states(plan.samplers, "cpu")

        def fill(buf: torch.Tensor, values, pad) -> None:
            buf[:n].copy_(torch.tensor(values, dtype=buf.dtype), non_blocking=True)
            if b > n:
                buf[n:b].fill_(pad)

        fill(self.rows, plan.dec_rows, r.dummy_row)
        fill(self.positions, plan.positions, 0)
        fill(self.slots, plan.slots, r.pool.scratch_slot)
        fill(self.seq_lens, plan.dec_lens, 1)
        s = self.sampling
        for name, pad in (("temperature", 0.0), ("top_k", 0), ("top_p", 1.0), ("min_p", 0.0), ("seeds", 0), ("positions", 0)):
            fill(getattr(s, name), getattr(host, name), pad)
        graph, tokens, logprobs = self.graphs[b]
        graph.replay()
        return tokens[:n], logprobs[:n]
