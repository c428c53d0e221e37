"""CUDA graphs of decode-only steps, one per (batch-size bucket, sampling mode).

A decode step of a small model is hundreds of short kernels; launching them from Python costs
more than running them. Each bucket's whole step (slot-table write, forward, sampling, storing
the sampled tokens) is captured once and replayed with new inputs copied into two packed
static buffers (one host-to-device copy each, from pinned memory). Batches are padded to the
next bucket with a dummy row that reads and writes only the scratch KV slot. Two sampling
modes are captured: greedy (argmax only) and full (penalties, filters, seeded sampling), which
gives the same tokens as the eager path for any mix of parameters. The graphs keep the logits
their logprobs come from as an output, so a step where a request asks for top_logprobs takes
the top-N from them after the replay (a topk and a few small ops: only those steps pay). That
keeps sum(buckets) x vocab x 6 bytes (bf16 greedy, float32 full) of graph memory, which is
allocated before the KV pool is sized. Structured outputs' token masks go through the full graph
too: it applies a static [max_batch, vocab] bool buffer of allowed tokens, all True except the
columns a step's masks set (and the next step resets).
"""

from __future__ import annotations

import gc
import logging

import torch

from litelang.worker.forward_batch import ForwardBatch, to_device
from litelang.worker.runner import ModelRunner, StepPlan
from litelang.worker.sampler import FULL_SAMPLING, GREEDY, SamplingMode, SamplingTensors, mask_bits, sample_and_record

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
        self._fill_padding()
        # a padding column's values, broadcast over the unused columns of each step's inputs
        self._pad_ints = self.ints[:, :1].cpu().numpy()
        self._pad_floats = self.floats[:, :1].cpu().numpy()
        self.inputs = PinnedInputs(self.ints, self.floats)
        # structured outputs: which tokens each column may sample (full mode), and the columns
        # the last masked step set
        self.allowed = torch.ones((n, runner.model.spec.vocab_size), dtype=torch.bool, device=dev)
        self._masked_columns: torch.Tensor | None = None
        self.graphs: dict[tuple[int, SamplingMode], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def fits(self, batch_size: int) -> bool:
        return batch_size <= self.buckets[-1]

    def _fill_padding(self) -> None:
        """Every column a padding row: a dummy row that writes only the scratch slot."""
        r, ints, floats = self.runner, self.ints, self.floats
        ints[ROWS] = r.dummy_row
        ints[POSITIONS] = 0
        ints[SLOTS] = r.pool.scratch_slot
        ints[SEQ_LENS] = 1
        ints[4:] = 0
        floats[:] = 0.0
        floats[SamplingTensors.FLOATS.index("top_p")] = 1.0
        floats[SamplingTensors.FLOATS.index("repetition")] = 1.0

    def _body(self, b: int, mode: SamplingMode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """sample_and_record's (tokens, logprobs, scored logits) for bucket b."""
        r = self.runner
        dev = r.device
        rows = self.ints[ROWS, :b]
        batch = ForwardBatch(
            input_ids=None,  # each row's last sampled token: see sample_and_record
            positions=self.ints[POSITIONS, :b],
            slots=self.ints[SLOTS, :b],
            req_to_slot=r.req_to_slot,
            num_extend_tokens=0,
            extend_rows=torch.empty(0, dtype=torch.int32, device=dev),
            extend_cu_seqlens=torch.zeros(1, dtype=torch.int32, device=dev),
            extend_prefix_lens=torch.empty(0, dtype=torch.int32, device=dev),
            extend_max_new_len=0,
            decode_rows=rows,  # int64 views: no cast kernels in the graph
            decode_seq_lens=self.ints[SEQ_LENS, :b],
            logits_index=None,  # every row samples
        )
        sampling = SamplingTensors.from_packed(self.floats[:, :b], self.ints[4:, :b])
        return sample_and_record(
            r.model, r.kernels, batch, sampling, mode, rows, r.last_tokens, r.penalties, r.pool.k, r.pool.v,
            None if mode.greedy else self.allowed[:b],
        )

    @torch.inference_mode()
    def capture(self) -> None:
        # No garbage collection while capturing: a collected object holding pinned host memory or
        # CUDA events (another runner's, in a test process) releases them with CUDA calls that
        # are illegal during a capture and invalidate it (seen as cudaErrorStreamCaptureInvalidated
        # from a later launch, depending on when the collector happened to run).
        gc.collect()
        gc.disable()
        try:
            self._capture()
        finally:
            gc.enable()

    def _capture(self) -> None:
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
                        outputs = self._body(b, mode)
                    self.graphs[(b, mode)] = (graph, *outputs)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        log.info("captured decode CUDA graphs for batch sizes %s (greedy and full sampling)", self.buckets)

    def run(self, plan: StepPlan, mode: SamplingMode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Replay the bucket's graph: (tokens, logprobs, scored logits) of the plan's rows."""
        n = len(plan.dec_rows)
        b = next(x for x in self.buckets if x >= n)
        ints, floats = self.inputs.next()
        floats_list, ints_list = SamplingTensors.host_values(plan.samplers)
        for i, v in enumerate((plan.dec_rows, plan.dec_positions, plan.dec_slots, plan.dec_lens, *ints_list)):
            ints[i, :n] = v
        floats[:, :n] = floats_list
        ints[:, n:] = self._pad_ints
        floats[:, n:] = self._pad_floats
        self.inputs.upload(self.ints, self.floats)
        self._set_masks(plan)
        graph, tokens, logprobs, scored = self.graphs[(b, GREEDY if mode.greedy else FULL_SAMPLING)]
        graph.replay()
        return tokens[:n], logprobs[:n], scored[:n]

    def _set_masks(self, plan: StepPlan) -> None:
        """Columns of a decode-only plan are its samplers in order: a mask's sampler index is its column."""
        if self._masked_columns is not None:
            self.allowed[self._masked_columns] = True
            self._masked_columns = None
        if plan.token_masks:
            dev = self.runner.device
            columns = to_device(torch.tensor([i for i, _ in plan.token_masks], dtype=torch.long), dev)
            self.allowed[columns] = mask_bits([m for _, m in plan.token_masks], self.allowed.shape[1], dev)
            self._masked_columns = columns


class PinnedInputs:
    """Pinned host buffers for the graphs' packed inputs, used round-robin. A copy from pageable
    memory may first wait for the GPU work already queued on the stream, which would hold the
    launch of step N + 1 until step N is done; from pinned memory it is queued like a kernel.
    A buffer is refilled only after the copy that last read it has run (its event)."""

    def __init__(self, ints: torch.Tensor, floats: torch.Tensor, depth: int = 4):
        self.buffers = [(torch.empty(ints.shape, dtype=ints.dtype, pin_memory=True),
                         torch.empty(floats.shape, dtype=floats.dtype, pin_memory=True), torch.cuda.Event())
                        for _ in range(depth)]
        self.index = 0

    def next(self):
        """The next buffers as numpy arrays (cheap element writes from Python lists)."""
        ints, floats, copied = self.buffers[self.index]
        copied.synchronize()  # at once in practice: the copy ran `depth` steps ago
        return ints.numpy(), floats.numpy()

    def upload(self, ints: torch.Tensor, floats: torch.Tensor) -> None:
        """Copy the buffers last returned by next() into the device tensors."""
        host_ints, host_floats, copied = self.buffers[self.index]
        ints.copy_(host_ints, non_blocking=True)
        floats.copy_(host_floats, non_blocking=True)
        copied.record()
        self.index = (self.index + 1) % len(self.buffers)
