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
        )

    def Step(self, request_iterator, context):
        """Launch each step as soon as it arrives; answer step N after step N+1 is launched when
        the scheduler has already sent it, so the GPU never waits on the host between steps."""
        runner = self._ready_runner(context)
        if not self._step_lock.acquire(blocking=False):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "another scheduler already holds this worker's Step stream")
        inbox: queue.Queue = queue.Queue()

        def read() -> None:
            try:
                for req in request_iterator:
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
            with torch.no_grad():
                while True:
                    if pending is None:
                        req = inbox.get()
                    else:
                        try:
                            req = inbox.get_nowait()
                        except queue.Empty:
                            yield pending.result()
                            pending = None
                            continue
                    if req is None:
                        break
                    try:
                        launched = runner.launch(req)
                    except StepError as e:
                        log.error("bad step %d: %s", req.step_id, e)
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"step {req.step_id}: {e}")
                    if pending is not None:
                        yield pending.result()
                    pending = launched
                if pending is not None:
                    yield pending.result()
        finally:
            runner.reset()
            self._step_lock.release()

    def Health(self, request, context):
        if self.runner is None:
            return worker_pb2.HealthResponse(ready=False, message=f"rank {self.rank} loading")
        return worker_pb2.HealthResponse(ready=True, message=f"rank {self.rank} ready")
