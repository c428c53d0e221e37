"""CUDA graphs of decode-only steps, one per (batch-size bucket, sampling mode).

A decode step of a small model is hundreds of short kernels; launching them from Python costs
more than running them. Each bucket's whole step (slot-table write, forward, sampling, storing
the sampled tokens) is captured once and replayed with new inputs copied into two packed
static buffers (one host-to-device copy each, from pinned memory). Batches are padded to the
next bucket with a dummy row that reads and writes only the scratch KV slot. Three sampling
modes are captured: greedy (argmax only), greedy under structured outputs' token masks, and full
(penalties, filters, seeded sampling, masks), which gives the same tokens as the eager path for
any mix of parameters. The graphs keep the logits
their logprobs come from as an output, so a step where a request asks for top_logprobs takes
the top-N from them after the replay (a topk and a few small ops: only those steps pay). That
keeps sum(buckets) x vocab x 6 bytes (bf16 greedy, float32 full) of graph memory, which is
allocated before the KV pool is sized. The masked graphs read a static [max_batch, vocab / 32]
int32 bitmask buffer, all bits set except in the columns a step's masks fill (and the next step
resets); unconstrained greedy steps replay the plain greedy graph and pay nothing for masks.
"""

from __future__ import annotations

import gc
import logging

import numpy as np
import torch

from litelang.kernels.token_mask import ALL_ALLOWED, mask_words_for
from litelang.worker.forward_batch import ForwardBatch
from litelang.worker.runner import ModelRunner, StepPlan
from litelang.worker.sampler import (
    FULL_SAMPLING, GREEDY, MASKED_GREEDY, SamplingMode, SamplingTensors, sample_and_record,
)

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
        # structured outputs: each column's bitmask of allowed tokens (read by the masked modes)
        self.masks = torch.full((n, mask_words_for(runner.model.spec.vocab_size)), ALL_ALLOWED, dtype=torch.int32,
                                device=dev)
        self.mask_inputs = PinnedInputs(self.masks, depth=2)
        self._masked_rows = 0  # leading rows of `masks` a masked step wrote (the next unmasked one resets them)
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
            self.masks[:b] if mode.masked or not mode.greedy else None,
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
            for mode in (FULL_SAMPLING, MASKED_GREEDY, GREEDY):
                for b in reversed(self.buckets):  # largest first: smaller graphs reuse its memory
                    for _ in range(2):  # warm up (Triton compiles, cuBLAS picks algorithms)
                        self._body(b, mode)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool, stream=stream):
                        outputs = self._body(b, mode)
                    self.graphs[(b, mode)] = (graph, *outputs)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        log.info("captured decode CUDA graphs for batch sizes %s (greedy, masked greedy, full sampling)", self.buckets)

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
        self._set_masks(plan, b)
        graph, tokens, logprobs, scored = self.graphs[(b, graph_mode(mode))]
        graph.replay()
        return tokens[:n], logprobs[:n], scored[:n]

    def _set_masks(self, plan: StepPlan, b: int) -> None:
        """A masked step uploads its bucket's rows of the mask buffer whole (columns of a decode-only
        plan are its samplers in order: a mask's sampler index is its column; the others allow
        every token); the next unmasked step resets what it wrote."""
        if plan.token_masks:
            (host,) = self.mask_inputs.next()
            host[:b] = ALL_ALLOWED
            for column, allowed in plan.token_masks:
                host[column] = np.frombuffer(allowed, dtype=np.int32)
            self.mask_inputs.upload(self.masks[:b])
            self._masked_rows = max(self._masked_rows, b)
        elif self._masked_rows:
            self.masks[: self._masked_rows] = ALL_ALLOWED
            self._masked_rows = 0


def graph_mode(mode: SamplingMode) -> SamplingMode:
    """The captured mode that serves a step of this mode."""
    if not mode.greedy:
        return FULL_SAMPLING
    return MASKED_GREEDY if mode.masked else GREEDY


class PinnedInputs:
    """Pinned host buffers for the graphs' static inputs, used round-robin. A copy from pageable
    memory may first wait for the GPU work already queued on the stream, which would hold the
    launch of step N + 1 until step N is done; from pinned memory it is queued like a kernel.
    (Pinning each step's 600 KB of token masks afresh, as `to_device` does, costs ~2.5 ms per
    step: these buffers are pinned once.) A buffer is refilled only after the copy that last read
    it has run (its event)."""

    def __init__(self, *tensors: torch.Tensor, depth: int = 4):
        self.buffers = [([torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors], torch.cuda.Event())
                        for _ in range(depth)]
        self.index = 0

    def next(self) -> list:
        """The next buffers as numpy arrays (cheap element writes from Python lists)."""
        hosts, copied = self.buffers[self.index]
        copied.synchronize()  # at once in practice: the copy ran `depth` steps ago
        return [h.numpy() for h in hosts]

    def upload(self, *targets: torch.Tensor) -> None:
        """Copy the buffers last returned by next() into the device tensors (a target with fewer
        rows than its buffer takes the leading rows)."""
        hosts, copied = self.buffers[self.index]
        for host, target in zip(hosts, targets):
            target.copy_(host[: target.shape[0]], non_blocking=True)
        copied.record()
        self.index = (self.index + 1) % len(self.buffers)
