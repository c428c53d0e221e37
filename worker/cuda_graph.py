"""CUDA graphs of decode-only steps, one per (batch-size bucket, sampling mode).

A decode step of a small model is hundreds of short kernels; launching them from Python costs
more than running them. Each bucket's whole step (slot-table write, forward, sampling, storing
the sampled tokens) is captured once and replayed with new inputs copied into two packed
static buffers (one host-to-device copy each). Batches are padded to the next bucket with a
dummy row that reads and writes only the scratch KV slot. Two sampling modes are captured:
greedy (argmax only) and full (penalties, filters, seeded sampling), which gives the same
tokens as the eager path for any mix of parameters.
"""

from __future__ import annotations

import logging

import torch

from litelang.worker.forward_batch import ForwardBatch
from litelang.worker.runner import ModelRunner, StepPlan
from litelang.worker.sampler import FULL_SAMPLING, GREEDY, SamplingMode, SamplingTensors, sample_and_record

log = logging.getLogger("litelang.worker")

# rows of the packed int64 input buffer
ROWS, POSITIONS, SLOTS, SEQ_LENS = range(4)


def batch_buckets(max_batch_size: int) -> list[int]:
    sizes = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512]
    return [s for s in sizes if s < max_batch_size] + [max_batch_size]


class DecodeGraphs:
    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self.buckets = batch_buckets(runner.max_batch_size)
        n = self.buckets[-1]
        dev = runner.device
        # [rows, positions, slots, seq_lens] then the sampling ints; floats are sampling params
        self.ints = torch.zeros((4 + len(SamplingTensors.INTS), n), dtype=torch.long, device=dev)
        self.floats = torch.zeros((len(SamplingTensors.FLOATS), n), dtype=torch.float32, device=dev)
        self._fill_padding(self.ints, self.floats, 0)
        self.graphs: dict[tuple[int, SamplingMode], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def fits(self, batch_size: int) -> bool:
        return batch_size <= self.buckets[-1]

    def _fill_padding(self, ints: torch.Tensor, floats: torch.Tensor, start: int) -> None:
        r = self.runner
        ints[ROWS, start:] = r.dummy_row
        ints[POSITIONS, start:] = 0
        ints[SLOTS, start:] = r.pool.scratch_slot
        ints[SEQ_LENS, start:] = 1
        ints[4:, start:] = 0
        floats[:, start:] = 0.0
        floats[SamplingTensors.FLOATS.index("top_p"), start:] = 1.0
        floats[SamplingTensors.FLOATS.index("repetition"), start:] = 1.0

    def _body(self, b: int, mode: SamplingMode) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.runner
        dev = r.device
        rows = self.ints[ROWS, :b]
        batch = ForwardBatch(
            input_ids=r.last_tokens[rows],
            positions=self.ints[POSITIONS, :b],
            slots=self.ints[SLOTS, :b],
            req_to_slot=r.req_to_slot,
            num_extend_tokens=0,
            extend_rows=torch.empty(0, dtype=torch.int32, device=dev),
            extend_cu_seqlens=torch.zeros(1, dtype=torch.int32, device=dev),
            extend_prefix_lens=torch.empty(0, dtype=torch.int32, device=dev),
            extend_max_new_len=0,
            decode_rows=rows.to(torch.int32),
            decode_seq_lens=self.ints[SEQ_LENS, :b].to(torch.int32),
            logits_index=torch.arange(b, device=dev),
        )
        sampling = SamplingTensors.from_packed(self.floats[:, :b], self.ints[4:, :b])
        return sample_and_record(
            r.model, r.kernels, batch, sampling, mode, rows, r.last_tokens, r.penalties, r.pool.k, r.pool.v
        )

    @torch.inference_mode()
    def capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for mode in (FULL_SAMPLING, GREEDY):
                for b in reversed(self.buckets):  # largest first: smaller graphs reuse its memory
                    for _ in range(2):  # warm up (Triton compiles, cuBLAS picks algorithms)
                        self._body(b, mode)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool, stream=stream):
                        tokens, logprobs = self._body(b, mode)
                    self.graphs[(b, mode)] = (graph, tokens, logprobs)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        log.info("captured decode CUDA graphs for batch sizes %s (greedy and full sampling)", self.buckets)

    def run(self, plan: StepPlan, mode: SamplingMode) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(plan.dec_rows)
        b = next(x for x in self.buckets if x >= n)
        pad = b - n
        r = self.runner
        floats, ints = SamplingTensors.host_values(plan.samplers)
        host_ints = torch.tensor(
            [plan.dec_rows + [r.dummy_row] * pad, plan.dec_positions + [0] * pad,
             plan.dec_slots + [r.pool.scratch_slot] * pad, plan.dec_lens + [1] * pad, *(v + [0] * pad for v in ints)],
            dtype=torch.long,
        )
        float_pad = {"top_p": 1.0, "repetition": 1.0}
        host_floats = torch.tensor(
            [v + [float_pad.get(name, 0.0)] * pad for name, v in zip(SamplingTensors.FLOATS, floats)],
            dtype=torch.float32,
        )
        self.ints[:, :b].copy_(host_ints, non_blocking=True)
        self.floats[:, :b].copy_(host_floats, non_blocking=True)
        graph, tokens, logprobs = self.graphs[(b, GREEDY if mode.greedy else FULL_SAMPLING)]
        graph.replay()
        return tokens[:n], logprobs[:n]
