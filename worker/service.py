"""The worker's gRPC service: Init, the Step stream, Health.

A plain (threaded) grpc server: the model runs in the handler thread of the one Step stream.
"""

from __future__ import annotations

import logging
import queue
import threading

import grpc
import torch

from litelang.configs.schema import LitelangConfig
from litelang.proto import worker_pb2, worker_pb2_grpc
from litelang.utils.profiling import StepTrace, profiled
from litelang.worker.runner import ModelRunner, StepError

log = logging.getLogger("litelang.worker")


class WorkerService(worker_pb2_grpc.WorkerServicer):
    def __init__(self, cfg: LitelangConfig, rank: int):
        self.cfg, self.rank = cfg, rank
        self.runner: ModelRunner | None = None  # set once the weights are loaded
        self._step_lock = threading.Lock()  # one Step stream at a time

    def _ready_runner(self, context) -> ModelRunner:
        if self.runner is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"worker rank {self.rank} is still loading the model")
        return self.runner

    def Init(self, request, context):
        r = self._ready_runner(context)
        with self._step_lock:
            r.reset()
        return worker_pb2.InitResponse(
            kv_slots=r.pool.num_slots,
            vocab_size=r.model.spec.vocab_size,
            max_context=r.max_context,
            max_batch_size=r.max_batch_size,
            rank=self.rank,
            tp=self.cfg.tp,
            device=str(r.device),
            dtype=str(r.model.dtype).removeprefix("torch."),
            kernels=r.kernels.name,
            model_type=r.model.spec.model_type,
            architecture=r.model.spec.architecture,
        )

    def Step(self, request_iterator, context):
        """Launch each step as soon as it arrives. The previous step is answered once the next is
        launched, or once its GPU work is done and nothing new has come; never by waiting for the
        step just launched, so the scheduler's next step can be queued behind it on the GPU."""
        runner = self._ready_runner(context)
        if not self._step_lock.acquire(blocking=False):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "another scheduler already holds this worker's Step stream")
        inbox: queue.Queue = queue.Queue()  # StepRequests, StepDone markers, None at the end
        trace = StepTrace(f"worker{self.rank}")
        watcher = _DoneWatcher(inbox, trace)

        def read() -> None:
            try:
                for req in request_iterator:
                    trace.mark(req.step_id, "received")
                    inbox.put(req)
            except Exception:  # the stream broke: the scheduler went away
                pass
            finally:
                inbox.put(None)

        threading.Thread(target=read, daemon=True, name="step-reader").start()
        if runner.device.type == "cuda":
            torch.cuda.set_device(runner.device)
        pending = None
        try:
            with torch.no_grad(), profiled(f"worker{self.rank}"):
                while True:
                    item = inbox.get()
                    if item is None:
                        break
                    if isinstance(item, _StepDone):
                        if pending is not None and pending.step_id == item.step_id:
                            yield _answer(pending, trace)
                            pending = None
                        continue
                    trace.mark(item.step_id, "taken")
                    try:
                        launched = runner.launch(item)
                    except StepError as e:
                        log.error("bad step %d: %s", item.step_id, e)
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"step {item.step_id}: {e}")
                    trace.mark(item.step_id, "launched")
                    if pending is not None:
                        yield _answer(pending, trace)
                    pending = launched
                    watcher.watch(launched)
                if pending is not None:
                    yield _answer(pending, trace)
        finally:
            trace.close()
            watcher.stop()
            runner.reset()
            self._step_lock.release()

    def Health(self, request, context):
        if self.runner is None:
            return worker_pb2.HealthResponse(ready=False, message=f"rank {self.rank} loading")
        return worker_pb2.HealthResponse(ready=True, message=f"rank {self.rank} ready")


def _answer(pending, trace: StepTrace) -> worker_pb2.StepResponse:
    reply = pending.result()
    trace.mark(reply.step_id, "answered", reply.gpu_gap_ms)
    return reply


class _StepDone:
    def __init__(self, step_id: int):
        self.step_id = step_id


class _DoneWatcher:
    """A thread that waits for each launched step's GPU work and then posts a _StepDone marker,
    so the Step loop can block on one queue for 'next request' or 'previous step finished'."""

    def __init__(self, inbox: queue.Queue, trace: StepTrace):
        self.inbox, self.trace = inbox, trace
        self.todo: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True, name="step-done-watcher").start()

    def watch(self, step) -> None:
        self.todo.put(step)

    def stop(self) -> None:
        self.todo.put(None)

    def _run(self) -> None:
        while (step := self.todo.get()) is not None:
            step.wait()
            self.trace.mark(step.step_id, "gpu_done")
            self.inbox.put(_StepDone(step.step_id))
