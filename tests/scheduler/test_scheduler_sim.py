"""The real scheduler Engine against a fake worker: thousands of random requests, no GPU.

`FakeWorkerGroup` stands in for scheduler/engine/worker_client.WorkerGroup (same async interface). It
interprets StepRequest deltas like worker/runner.py (a row per rid, context length, releases,
prefix slots, chunked extends, decodes fed by the worker's own last sampled token) and runs a
deterministic "model": a token's KV is the chained hash of its whole context, and the next token
is a function of the hash of the full context. So:

- outputs depend only on what really sits in the KV slots the scheduler hands over: a reused,
  stale or wrongly shared slot changes the tokens (and the fake checks every prefix slot it is
  told to read: position, hash chain, and the token it must hold);
- the expected output of a request is computable alone, from its prompt (`expected_output`),
  and must equal what the engine streams, whatever batching, chunking, caching, retraction and
  overlap happened on the way;
- the fake refuses to let a new token's KV be written into a slot that a live request on the
  worker (one not yet released) still has in its context.

At every point where the engine awaits the worker, and after every processed reply, the slot
accounting must be exact (`check_engine`): free + cached + owned == capacity, each slot once.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
from dataclasses import dataclass, field

import grpc
import pytest

from litelang.configs.schema import LitelangConfig
from litelang.proto import litelang_pb2 as pb
from litelang.proto import worker_pb2
from litelang.scheduler.detokenizer import IncrementalDetokenizer
from litelang.scheduler.engine import loop as engine_loop
from litelang.scheduler.engine.loop import Engine
from litelang.scheduler.engine.request import Phase, Request
from litelang.scheduler.engine.worker_client import WorkerError
from litelang.scheduler.errors import RejectedError
from litelang.scheduler.sampling_params import SamplingParams

VOCAB = 48
EOS = (0, 1)
MASK = (1 << 64) - 1
H0 = 0x6A09E667F3BCC908  # hash of the empty context


def mix(h: int, token: int) -> int:
    """Hash of a context extended by one token (splitmix64 finaliser over h and the token)."""
    h = (h ^ ((token + 1) * 0x9E3779B97F4A7C15)) & MASK
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & MASK
    return h ^ (h >> 31)


def next_token(h: int) -> int:
    """The fake model's greedy choice after a context whose hash is h."""
    return (h >> 11) % VOCAB


def context_hash(ids) -> int:
    h = H0
    for t in ids:
        h = mix(h, t)
    return h


def expected_output(prompt: list[int], s: SamplingParams, max_context: int) -> tuple[list[int], int]:
    """What the fake model generates for this prompt alone, with the engine's stop rules."""
    h, out = context_hash(prompt), []
    while True:
        t = next_token(h)
        out.append(t)
        n = len(out)
        stop_token = (t in EOS and not s.ignore_eos) or t in s.stop_token_ids
        if stop_token and n > s.min_new_tokens:
            return out, pb.FINISH_REASON_EOS
        if n >= s.max_new_tokens or len(prompt) + n >= max_context:
            return out, pb.FINISH_REASON_LENGTH
        h = mix(h, t)


class FakeTokenizer:
    """Token i is the text "<i>"; EOS ids decode to nothing with skip_special_tokens."""

    eos_token_ids = list(EOS)
    has_chat_template = False

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join("" if skip_special_tokens and i in EOS else f"<{i}>" for i in ids)

    def encode(self, text: str) -> list[int]:
        return [int(x) for x in text.replace("<", " ").replace(">", " ").split()]

    def detokenizer(self, skip_special_tokens: bool = False) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, skip_special_tokens)


# ------------------------------------------------------------------------------------------
# The fake worker
# ------------------------------------------------------------------------------------------


@dataclass
class Row:
    prompt: list[int]
    slots: list[int] = field(default_factory=list)   # KV slot of each context position
    hashes: list[int] = field(default_factory=list)  # hash of the context up to each position
    last_token: int | None = None                    # the last token this worker sampled for it

    @property
    def h(self) -> int:
        return self.hashes[-1] if self.hashes else H0


class FakeWorkerGroup:
    """WorkerGroup's interface over an in-process fake worker with a hash 'model'."""

    def __init__(self, kv_slots: int, max_batch_size: int, rng: random.Random, max_context: int = 1 << 20):
        self.kv_slots, self.max_batch_size, self.max_context, self.rng = kv_slots, max_batch_size, max_context, rng
        self.info: worker_pb2.InitResponse | None = None
        self._connected = False
        self.broken = asyncio.Event()  # WorkerGroup's "a stream ended while idle" signal
        self.kv: list[tuple[int, int, int, int] | None] = [None] * kv_slots  # slot -> (pos, token, h_prev, h)
        self.refs = [0] * kv_slots           # live rows whose context holds the slot
        self.rows: dict[int, Row] = {}
        self.replies: collections.deque = collections.deque()
        self.steps = 0                       # steps received
        self.extend_tokens = 0               # tokens computed by extends (prefill and recompute)
        self.on_await = lambda: None         # called whenever the engine awaits us (its state is settled)
        # the test's oracle for a rid's prompt (the protocol sends it only when penalties need it)
        self.prompt_of: callable = lambda rid: None
        self.fail_at: list[int] = []         # step counts at which the worker "dies" (WorkerError)
        # the engine's pipeline rule, checked at every send: steps in flight (by prompt tokens read)
        self.pipeline_depth, self.long_step_tokens = 1 << 30, 1 << 30
        self.in_flight: collections.deque[int] = collections.deque()
        self.long_steps = 0                  # steps sent that read >= long_step_tokens

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> worker_pb2.InitResponse:
        self.rows.clear()
        self.replies.clear()
        self.in_flight.clear()
        self.refs = [0] * self.kv_slots
        self.info = worker_pb2.InitResponse(
            kv_slots=self.kv_slots, vocab_size=VOCAB, max_context=self.max_context,
            max_batch_size=self.max_batch_size, rank=0, tp=1, device="fake", dtype="none", kernels="fake",
        )
        self._connected = True
        return self.info

    async def send(self, step: worker_pb2.StepRequest) -> None:
        assert self._connected, "send before connect"
        if self.fail_at and self.steps >= self.fail_at[0]:
            self.fail_at.pop(0)
            self._connected = False  # like WorkerGroup: a broken stream closes the group
            raise WorkerError("fake worker died")
        assert len(self.in_flight) < self.pipeline_depth, "more than pipeline_depth steps in flight"
        assert not any(t >= self.long_step_tokens for t in self.in_flight), "a step was queued behind a long one"
        tokens = sum(len(e.token_ids) for e in step.extends)
        self.in_flight.append(tokens)
        self.long_steps += tokens >= self.long_step_tokens
        self.replies.append(self._run(step))  # "launch": the work is queued in order
        self.on_await()
        await self._yield()

    async def receive(self) -> worker_pb2.StepResponse:
        self.on_await()
        assert self.replies, "receive without a step in flight"
        await self._yield()
        self.in_flight.popleft()
        return self.replies.popleft()

    async def step(self, step: worker_pb2.StepRequest) -> worker_pb2.StepResponse:
        await self.send(step)
        return await self.receive()

    async def close(self) -> None:
        self._connected = False

    async def _yield(self) -> None:
        for _ in range(self.rng.choice((0, 1, 1, 2, 3))):
            await asyncio.sleep(0)

    # ---- the worker's side of the protocol

    def _run(self, step: worker_pb2.StepRequest) -> worker_pb2.StepResponse:
        self.steps += 1
        for rid in step.release:
            row = self.rows.pop(rid, None)
            if row is not None:
                self._check_context(rid, row)
                for s in row.slots:
                    self.refs[s] -= 1
        out = worker_pb2.StepResponse(step_id=step.step_id)
        for ext in step.extends:
            if ext.is_new:
                row = self._admit(ext)
            else:
                row = self.rows.get(ext.rid)
                assert row is not None, f"step {step.step_id}: extend for unknown request {ext.rid}"
            assert ext.prefix_len == len(row.slots), (
                f"step {step.step_id}: request {ext.rid} extends at {ext.prefix_len} but has {len(row.slots)} tokens"
            )
            assert len(ext.token_ids) == len(ext.slots) > 0, (
                f"request {ext.rid}: {len(ext.token_ids)} tokens, {len(ext.slots)} slots"
            )
            self.extend_tokens += len(ext.token_ids)
            for token, slot in zip(ext.token_ids, ext.slots):
                self._expect_token(ext.rid, row, len(row.slots), token, row.h)
                self._write(ext.rid, row, slot, token)
            if ext.sample:
                row.last_token = next_token(row.h)
                out.rids.append(ext.rid)
                out.token_ids.append(row.last_token)
        assert len(step.decode_rids) == len(step.decode_slots), f"step {step.step_id}: decode rids and slots differ in length"
        for rid, slot in zip(step.decode_rids, step.decode_slots):
            row = self.rows.get(rid)
            assert row is not None, f"step {step.step_id}: decode for unknown request {rid}"
            assert row.last_token is not None, f"decode for request {rid} before it sampled anything"
            self._write(rid, row, slot, row.last_token)
            row.last_token = next_token(row.h)
            out.rids.append(rid)
            out.token_ids.append(row.last_token)
        out.logprobs.extend([0.0] * len(out.rids))
        return out

    def _admit(self, ext: worker_pb2.Extend) -> Row:
        assert ext.rid not in self.rows, f"request {ext.rid} is already running on the worker"
        assert len(self.rows) < self.max_batch_size, f"more than max_batch_size={self.max_batch_size} live rows"
        assert len(ext.prefix_slots) == ext.prefix_len, (
            f"prefix_len {ext.prefix_len} != {len(ext.prefix_slots)} prefix slots"
        )
        prompt = self.prompt_of(ext.rid)
        assert prompt, f"request {ext.rid}: the test has no prompt for it"
        if ext.prompt_ids or ext.generated_ids:  # penalties: the whole context so far, for counting
            assert list(ext.prompt_ids) == prompt, f"request {ext.rid}: prompt_ids differ from its prompt"
            h = context_hash(prompt)
            for t in ext.generated_ids:
                assert t == next_token(h), f"request {ext.rid}: generated_ids are not its output so far"
                h = mix(h, t)
        sampling = ext.sampling
        if sampling.repetition_penalty not in (0.0, 1.0) or sampling.frequency_penalty or sampling.presence_penalty:
            assert list(ext.prompt_ids) == prompt, f"request {ext.rid}: penalties on, but no prompt for them"
        row = Row(prompt=list(prompt))
        for pos, slot in enumerate(ext.prefix_slots):  # read the cached prefix: it must be this context's KV
            assert 0 <= slot < self.kv_slots, f"prefix slot {slot} outside the pool"
            entry = self.kv[slot]
            assert entry is not None, f"request {ext.rid}: prefix slot {slot} (position {pos}) was never written"
            e_pos, e_token, e_prev, e_h = entry
            assert e_pos == pos and e_prev == row.h, (
                f"request {ext.rid}: prefix slot {slot} holds position {e_pos} of another context, "
                f"wanted position {pos}"
            )
            self._expect_token(ext.rid, row, pos, e_token, e_prev)
            row.slots.append(slot)
            row.hashes.append(e_h)
            self.refs[slot] += 1
        self.rows[ext.rid] = row
        return row

    @staticmethod
    def _expect_token(rid: int, row: Row, pos: int, token: int, h_prev: int) -> None:
        """A context is its prompt, then what this model sampled after each prefix of it."""
        want = row.prompt[pos] if pos < len(row.prompt) else next_token(h_prev)
        assert token == want, f"request {rid}: position {pos} holds token {token}, its context has {want}"

    def _write(self, rid: int, row: Row, slot: int, token: int) -> None:
        assert 0 <= slot < self.kv_slots, f"slot {slot} outside the pool of {self.kv_slots}"
        assert self.refs[slot] == 0, (
            f"request {rid} writes KV slot {slot}, which a live request on the worker still reads"
        )
        pos = len(row.slots)
        assert pos < self.max_context
        h = mix(row.h, token)
        self.kv[slot] = (pos, token, row.h, h)
        self.refs[slot] += 1
        row.slots.append(slot)
        row.hashes.append(h)

    def _check_context(self, rid: int, row: Row) -> None:
        for pos, (slot, h) in enumerate(zip(row.slots, row.hashes)):
            assert self.kv[slot] is not None and self.kv[slot][0] == pos and self.kv[slot][3] == h, (
                f"request {rid}: KV slot {slot} (position {pos}) was overwritten while the request was live"
            )


# ------------------------------------------------------------------------------------------
# Engine checks
# ------------------------------------------------------------------------------------------


def node_path_slots(node, root) -> list[int]:
    parts = []
    while node is not root:
        parts.append(node.slots)
        node = node.parent
    return [s for part in reversed(parts) for s in part]


def check_engine(engine: Engine, order: dict[str, int], fake: FakeWorkerGroup) -> None:
    """Exact slot accounting, overlap bookkeeping and queue discipline; valid whenever the
    engine loop is suspended (awaiting the worker) or has just processed a reply."""
    q, kv = engine.queue, engine.kv
    kv.check_invariant(q.running)
    cap = kv.capacity
    free = list(kv.allocator._free)
    cached = kv.cache.all_slots() if kv.cache is not None else []
    own = [s for r in q.running for s in r.slots[r.tree_prefix_len :]]
    every = free + cached + own
    assert len(every) == cap and len(set(every)) == cap and set(every) == set(range(cap)), (
        f"slots not a partition of the pool: {len(free)} free, {len(cached)} cached, {len(own)} owned, capacity {cap}"
    )
    assert len(q.running) <= engine.cfg.max_batch_size
    lock_count: collections.Counter = collections.Counter()
    in_flight = collections.Counter(rid for reply in fake.replies for rid in reply.rids)
    for r in q.running:
        assert r.phase is Phase.RUNNING and q.by_rid.get(r.rid) is r and q.by_id.get(r.request_id) is r
        assert r.pending_samples == in_flight[r.rid], (
            f"request {r.request_id}: pending_samples {r.pending_samples}, {in_flight[r.rid]} tokens in flight"
        )
        assert len(r.output_ids) + r.pending_samples <= r.sampling.max_new_tokens, (
            f"request {r.request_id}: sampling beyond max_new_tokens"
        )
        # every slot holds a known token, or one sampled in a step still in flight (the first
        # pending sample is the one whose slot comes with the next decode)
        assert len(r.slots) <= len(r.prompt_ids) + len(r.output_ids) + max(r.pending_samples - 1, 0), (
            f"request {r.request_id}: {len(r.slots)} slots for {len(r.prompt_ids)} prompt + {len(r.output_ids)} "
            f"output tokens and {r.pending_samples} in flight"
        )
        if kv.cache is None:
            assert r.tree_prefix_len == 0
        else:
            assert node_path_slots(r.tree_node, kv.cache.root) == r.slots[: r.tree_prefix_len], (
                f"request {r.request_id}: its locked tree path does not hold its prefix slots"
            )
            node = r.tree_node
            while node is not kv.cache.root:
                lock_count[id(node)] += 1
                node = node.parent
    if kv.cache is not None:
        stack, locked = [kv.cache.root], 0
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            if node is not kv.cache.root:
                assert node.lock == lock_count[id(node)], "a tree node's lock count != running requests through it"
                locked += len(node.key) if node.lock else 0
        assert kv.cache.locked_size == locked
    for r in q.waiting:
        assert r.phase is Phase.WAITING and r.slots == [] and r.tree_node is None
    seq = [(r.priority, order[r.request_id]) for r in q.waiting]
    assert seq == sorted(seq), "the waiting queue is not in (priority, arrival) order (retracted ones first)"


# ------------------------------------------------------------------------------------------
# The simulation
# ------------------------------------------------------------------------------------------


@dataclass
class Tracked:
    req: Request
    submit_step: int
    ahead: int                     # requests in the engine when it arrived
    abort_accepted: bool = False
    abort_step: int = -1           # worker steps received when abort() accepted it
    finish_steps: list[int] = field(default_factory=list)


class Sim:
    def __init__(self, seed: int, capacity: int, **cfg):
        self.rng = random.Random(seed)
        self.cfg = LitelangConfig(**cfg)
        self.fake = FakeWorkerGroup(capacity, self.cfg.max_batch_size, random.Random(seed + 1), self.cfg.max_context)
        self.engine = Engine(self.cfg, FakeTokenizer(), self.fake)
        self.fake.pipeline_depth = self.cfg.pipeline_depth
        self.order: dict[str, int] = {}
        self.tracked: dict[str, Tracked] = {}
        self.rejected_full = 0
        self.rejected_unavailable = 0
        self.processed = 0
        self.fake.on_await = self.check
        by_rid = self.engine.queue.by_rid
        self.fake.prompt_of = lambda rid: by_rid[rid].prompt_ids if rid in by_rid else None

        output = self.engine.output
        process, finish = output.process, output.finish

        def checked_process(reply):
            process(reply)
            self.processed += 1
            self.check()

        def counted_finish(r, *a, **kw):
            t = self.tracked.get(r.request_id)
            if t is not None and t.req is r:
                t.finish_steps.append(self.fake.steps)
            return finish(r, *a, **kw)

        output.process = checked_process
        output.finish = counted_finish

    def check(self) -> None:
        check_engine(self.engine, self.order, self.fake)

    def _raise_if_engine_died(self) -> None:
        task = self.engine._task
        if task is not None and task.done():
            exc = task.exception()
            raise AssertionError(f"the engine loop died: {exc!r}") from exc

    async def tick(self, n: int = 1) -> None:
        for _ in range(n):
            await asyncio.sleep(0)
        self._raise_if_engine_died()

    async def start(self) -> None:
        self.engine.start()
        while not self.engine.healthy:
            await self.tick()

    def submit(self, rid: str, prompt: list[int], sampling: SamplingParams, priority: int = 0) -> bool:
        req = Request(request_id=rid, prompt_ids=prompt, sampling=sampling, priority=priority)
        self.order[rid] = len(self.order)
        ahead = len(self.engine.queue.waiting) + len(self.engine.queue.running)
        full = len(self.engine.queue.waiting) >= self.cfg.max_reqs
        healthy = self.engine.healthy
        try:
            self.engine.submit(req)
        except RejectedError as e:
            if not healthy and e.code == grpc.StatusCode.UNAVAILABLE:  # the workers are restarting
                self.rejected_unavailable += 1
                return False
            assert full, f"request {rid} rejected ({e}) although the queue had room and it fits"
            assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert rid not in self.engine.queue.by_id
            self.rejected_full += 1
            return False
        assert not full, "a request was queued beyond max_reqs"
        self.tracked[rid] = Tracked(req, self.fake.steps, ahead)
        return True

    def abort(self, rid: str) -> None:
        if self.engine.abort(rid):
            t = self.tracked[rid]
            if not t.abort_accepted:
                t.abort_accepted, t.abort_step = True, self.fake.steps

    async def drain(self, max_steps: int) -> None:
        """Wait until every request has finished and the engine is idle."""
        start = self.fake.steps
        e, q = self.engine, self.engine.queue
        while q.running or q.waiting or e.inflight or any(
            t.req.phase is not Phase.FINISHED for t in self.tracked.values()
        ):
            assert self.fake.steps - start <= max_steps, (
                f"not idle after {max_steps} steps: {len(q.running)} running, {len(q.waiting)} waiting "
                f"(starvation or a stuck loop)"
            )
            await self.tick()
        await self.tick(5)  # let the loop reach its idle wait

    def verify(self, failures_expected: bool = False) -> dict[str, int]:
        """Every request ended exactly once, with the uninterrupted run's tokens; the pool is idle."""
        e, q, counts = self.engine, self.engine.queue, collections.Counter()
        tok = FakeTokenizer()
        for rid, t in self.tracked.items():
            r = t.req
            events = []
            while not r.events.empty():
                events.append(r.events.get_nowait())
            finals = [i for i, ev in enumerate(events) if ev.finish_reason != pb.FINISH_REASON_UNSPECIFIED or ev.error]
            assert finals == [len(events) - 1], (
                f"{rid}: final events at {finals} of {len(events)} (want exactly one, last)"
            )
            final = events[-1]
            tokens = [x for ev in events for x in ev.token_ids]
            text = "".join(ev.text for ev in events)
            want, reason = expected_output(r.prompt_ids, r.sampling, self.cfg.max_context)
            if final.error is not None:  # failed with the worker: UNAVAILABLE, after a correct partial output
                assert failures_expected, f"{rid}: failed with {final.error}"
                assert final.error[0] == grpc.StatusCode.UNAVAILABLE.value[0], final.error
                assert not t.finish_steps and tokens == want[: len(tokens)]
                counts["failed"] += 1
                continue
            assert len(t.finish_steps) == 1, f"{rid}: finished {len(t.finish_steps)} times"
            assert tokens == r.output_ids
            if t.abort_accepted:  # ends at once: ABORTED, or done by the step already in flight
                assert t.finish_steps[0] <= t.abort_step + 2, (
                    f"{rid}: aborted at step {t.abort_step}, still ran until step {t.finish_steps[0]}"
                )
            if final.finish_reason == pb.FINISH_REASON_ABORTED:
                assert t.abort_accepted, f"{rid}: ABORTED but never aborted"
                assert tokens == want[: len(tokens)] and len(tokens) < len(want), (
                    f"{rid} (aborted): streamed {tokens}, not a proper prefix of the expected {want}"
                )
                assert text == tok.decode(tokens)
                counts["aborted"] += 1
            else:
                assert tokens == want, (
                    f"{rid}: prompt {r.prompt_ids} max_new_tokens {r.sampling.max_new_tokens}: "
                    f"streamed {tokens}, an uninterrupted run gives {want}"
                )
                assert final.finish_reason == reason, f"{rid}: finish reason {final.finish_reason}, expected {reason}"
                assert text == tok.decode(want[:-1] if reason == pb.FINISH_REASON_EOS else want)
                counts["eos" if reason == pb.FINISH_REASON_EOS else "length"] += 1
            assert r.usage().completion_tokens == len(tokens)
            assert 0 <= r.cached_tokens <= len(r.prompt_ids)
            if e.kv.cache is None:
                assert r.cached_tokens == 0
        # the pool is idle: nothing running, every slot free or cached (unlocked)
        kv = e.kv.counts()
        assert not q.running and not q.waiting and not q.by_id and not q.by_rid and not e.inflight
        assert kv["free"] + kv["cached"] == kv["capacity"] and kv["in_use"] == 0, kv
        if e.kv.cache is not None:
            assert e.kv.cache.locked_size == 0 and e.kv.cache.evictable == e.kv.cache.size
        self.check()
        # the worker holds no request the scheduler forgot: only releases not yet sent
        assert set(self.fake.rows) == set(q.to_release), (
            f"worker rows {sorted(self.fake.rows)} vs pending releases {sorted(q.to_release)}"
        )
        return counts

    async def stop(self) -> None:
        await self.engine.stop()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------


def random_workload(rng: random.Random, n: int, capacity: int):
    """Prompts over a few shared 'system prompts' (so the radix cache hits), exact repeats,
    unrelated prompts; random max_new_tokens, some ignore_eos / stop_token_ids / min_new_tokens."""
    prefixes = [[rng.randrange(VOCAB) for _ in range(rng.randint(6, 30))] for _ in range(6)]
    seen: list[list[int]] = []
    for i in range(n):
        u = rng.random()
        if u < 0.55:
            prompt = rng.choice(prefixes) + [rng.randrange(VOCAB) for _ in range(rng.randint(0, 14))]
        elif u < 0.7 and seen:
            prompt = list(rng.choice(seen))
        else:
            prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 40))]
        seen.append(prompt)
        s = SamplingParams(max_new_tokens=rng.randint(1, 40))
        if rng.random() < 0.15:
            s.ignore_eos = True
        if rng.random() < 0.1:  # the fake model ignores penalties; the worker is sent the context
            s.repetition_penalty = 1.1
        if rng.random() < 0.1:
            s.stop_token_ids = [rng.randrange(2, VOCAB)]
            s.min_new_tokens = rng.randint(0, min(3, s.max_new_tokens))
        if len(prompt) + s.max_new_tokens > capacity:
            s.max_new_tokens = capacity - len(prompt)
        yield f"req{i}", prompt, s


async def simulate(seed: int, n_requests: int, use_radix_cache: bool, pipeline_depth: int = 3,
                   long_step_tokens: int | None = None) -> tuple[Sim, dict]:
    capacity = 160
    sim = Sim(
        seed, capacity, max_batch_size=8, max_prefill_tokens=24, max_reqs=24,
        busy_scale=0.6, use_radix_cache=use_radix_cache, pipeline_depth=pipeline_depth,
    )
    rng = sim.rng
    if long_step_tokens:
        sim.fake.long_step_tokens = long_step_tokens
    await sim.start()
    submitted: list[str] = []
    for rid, prompt, sampling in random_workload(rng, n_requests, capacity):
        # arrivals: mostly a few loop turns apart, sometimes bursts, sometimes lulls
        await sim.tick(rng.choice((0, 0, 1, 1, 2, 3, 5, 8, 40)))
        # a full queue: mostly wait for room, sometimes knock anyway (must be RESOURCE_EXHAUSTED at once)
        while len(sim.engine.queue.waiting) >= sim.cfg.max_reqs and rng.random() < 0.97:
            await sim.tick(3)
        if sim.submit(rid, prompt, sampling):
            submitted.append(rid)
        # aborts at random times: waiting, running, or already finished requests
        if rng.random() < 0.08 and submitted:
            sim.abort(rng.choice(submitted[-30:]))
    await sim.drain(max_steps=20_000)
    counts = sim.verify()
    await sim.stop()
    return sim, counts


def starvation_bound(t: Tracked, cfg: LitelangConfig, longest_prompt: int = 44, most_new: int = 40) -> int:
    """Steps within which a request must finish: as if it and every request ahead of it when it
    arrived ran alone, one after another (a batch only does better). A request alone needs at
    most ceil(prompt / max_prefill_tokens) prefill steps, max_new_tokens - 1 decode steps and
    the steps in flight behind its last one (plus a little slack)."""
    return (t.ahead + 1) * (math.ceil(longest_prompt / cfg.max_prefill_tokens) + most_new + cfg.pipeline_depth)


@pytest.mark.parametrize("pipeline_depth,long_step", [(2, None), (3, None), (3, 16)],
                         ids=["depth2", "depth3", "depth3-long-steps"])
@pytest.mark.parametrize("use_radix_cache", [True, False], ids=["radix", "no-radix"])
def test_random_traffic(use_radix_cache: bool, pipeline_depth: int, long_step: int | None, monkeypatch) -> None:
    """long_step: steps reading >= 16 prompt tokens count as long (production: 512, which these
    short prompts never reach), so nothing may be queued behind them."""
    if long_step:
        monkeypatch.setattr(engine_loop, "LONG_STEP_TOKENS", long_step)
    sim, counts = run(simulate(seed=1234 + use_radix_cache, n_requests=2000, use_radix_cache=use_radix_cache,
                               pipeline_depth=pipeline_depth, long_step_tokens=long_step))
    e = sim.engine
    if long_step:
        assert sim.fake.long_steps > 100, sim.fake.long_steps
    # the workload really exercised what it is meant to
    assert len(sim.tracked) >= 1800, f"only {len(sim.tracked)} requests accepted"
    assert counts["aborted"] >= 20 and counts["eos"] >= 200 and counts["length"] >= 200, counts
    assert sim.rejected_full > 0, "the queue never filled"
    assert e.stats["retractions"] > 0, "the pool never ran short in decode"
    assert any(
        len(t.req.prompt_ids) > sim.cfg.max_prefill_tokens and t.req.cached_tokens == 0 for t in sim.tracked.values()
    ), "no chunked prefill"
    if use_radix_cache:
        assert e.stats["cached_prompt_tokens"] > 0.1 * e.stats["prompt_tokens"], dict(e.stats)
    else:
        assert e.stats["cached_prompt_tokens"] == 0
    assert sim.processed > 2000
    # no starvation: nobody waited much longer than the requests ahead of it can explain
    late = [
        (rid, t.finish_steps[0] - t.submit_step, starvation_bound(t, sim.cfg))
        for rid, t in sim.tracked.items()
        if t.finish_steps[0] - t.submit_step > starvation_bound(t, sim.cfg)
    ]
    assert not late, f"requests finished later than their bound (id, steps, bound): {late[:5]}"


async def retraction_scenario(use_radix_cache: bool) -> Sim:
    """A pool too small for the requests admitted together: decode must retract and resume."""
    capacity = 64
    sim = Sim(7, capacity, max_batch_size=8, max_prefill_tokens=64, max_reqs=64, busy_scale=1.0,
              use_radix_cache=use_radix_cache)
    rng = sim.rng
    await sim.start()
    for i in range(40):
        prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(3, 8))]
        sim.submit(f"r{i}", prompt, SamplingParams(max_new_tokens=rng.randint(20, 40), ignore_eos=True))
    await sim.drain(max_steps=20_000)
    sim.verify()
    await sim.stop()
    return sim


def test_retraction_keeps_outputs() -> None:
    """Decode runs out of slots: the newest requests are retracted and resumed; outputs equal an
    uninterrupted run, and with the radix cache a resumed request reuses its kept KV."""
    with_cache, without = run(retraction_scenario(True)), run(retraction_scenario(False))
    for sim in (with_cache, without):
        assert sim.engine.stats["retractions"] > 0
        assert all(t.req.finish_reason == pb.FINISH_REASON_LENGTH for t in sim.tracked.values())
        assert all(len(t.req.output_ids) == t.req.sampling.max_new_tokens for t in sim.tracked.values())
    # without the cache every resume recomputes its whole context
    assert with_cache.fake.extend_tokens < without.fake.extend_tokens, (
        with_cache.fake.extend_tokens, without.fake.extend_tokens
    )


def test_request_that_can_never_fit_is_rejected_at_once() -> None:
    async def main():
        sim = Sim(3, 32, max_batch_size=4, max_prefill_tokens=16, max_reqs=8)
        await sim.start()
        with pytest.raises(RejectedError) as info:
            sim.engine.submit(Request("big", [5] * 20, SamplingParams(max_new_tokens=13)))
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "big" not in sim.engine.queue.by_id and not sim.engine.queue.waiting
        # exactly the whole pool is fine, and completes
        assert sim.submit("edge", [5] * 20, SamplingParams(max_new_tokens=12, ignore_eos=True))
        await sim.drain(max_steps=1000)
        sim.verify()
        await sim.stop()

    run(main())


def test_lower_priority_values_are_admitted_first() -> None:
    """One running slot, and requests of random priorities submitted before the engine runs: they
    are admitted in (priority, arrival) order, a stable sort of the submissions."""
    async def main():
        sim = Sim(11, 256, max_batch_size=1, max_prefill_tokens=64, max_reqs=64)
        await sim.start()
        submitted = []
        for i in range(24):
            priority = sim.rng.choice([-3, 0, 0, 0, 2, 7])
            assert sim.submit(f"p{i}", [i + 2, 7, 9], SamplingParams(max_new_tokens=3, ignore_eos=True), priority)
            submitted.append((priority, i))
        await sim.drain(max_steps=2000)
        admitted = sorted(sim.tracked, key=lambda rid: sim.tracked[rid].req.first_scheduled)
        assert admitted == [f"p{i}" for _, i in sorted(submitted)]
        sim.verify()
        await sim.stop()

    run(main())


def test_retraction_pauses_the_highest_priority_value() -> None:
    """A pool too small for everything admitted: the requests of priority 0 are never retracted
    while one of priority 9 runs, and every output still equals an uninterrupted run's."""
    async def main():
        sim = Sim(7, 64, max_batch_size=8, max_prefill_tokens=64, max_reqs=64, busy_scale=1.0)
        await sim.start()
        retracted = collections.Counter()
        retract = sim.engine.scheduler.retract

        def spy(r):
            running = [x.priority for x in sim.engine.queue.running]
            assert r.priority == max(running), (r.priority, running)
            retracted[r.priority] += 1
            retract(r)

        sim.engine.scheduler.retract = spy
        for i in range(16):
            prompt = [sim.rng.randrange(VOCAB) for _ in range(sim.rng.randint(3, 8))]
            sim.submit(f"r{i}", prompt, SamplingParams(max_new_tokens=sim.rng.randint(20, 40), ignore_eos=True),
                       priority=9 if i % 2 else 0)
        await sim.drain(max_steps=20_000)
        sim.verify()
        assert retracted[9] > 0, "the pool never ran short"
        await sim.stop()

    run(main())


def test_completions_of_one_request_are_queued_all_or_none() -> None:
    """A request's n completions go in together or not at all: a queue with room for one of two
    takes neither; a duplicate id among them takes none; with room for both, both run."""
    async def main():
        sim = Sim(4, 64, max_batch_size=2, max_prefill_tokens=16, max_reqs=3)
        await sim.start()
        assert sim.submit("first", [2, 7, 9], SamplingParams(max_new_tokens=5))
        assert sim.submit("second", [3, 7, 9], SamplingParams(max_new_tokens=5))
        pair = [Request(f"pair/{i}", [4, 7, 9], SamplingParams(max_new_tokens=5, ignore_eos=True)) for i in range(2)]
        with pytest.raises(RejectedError) as info:
            sim.engine.submit(*pair)
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "room for 1 of" in str(info.value)
        with pytest.raises(RejectedError) as info:
            sim.engine.submit(Request("third", [5, 7], SamplingParams(max_new_tokens=5)),
                              Request("first", [5, 7], SamplingParams(max_new_tokens=5)))
        assert info.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert [r.request_id for r in sim.engine.queue.waiting] == ["first", "second"]
        assert set(sim.engine.queue.by_id) == {"first", "second"}
        await sim.drain(max_steps=1000)
        sim.engine.submit(*pair)
        assert [r.request_id for r in sim.engine.queue.waiting] == ["pair/0", "pair/1"]
        await sim.drain(max_steps=1000)
        assert all(len(r.output_ids) == 5 for r in pair)
        sim.verify()
        await sim.stop()

    run(main())


def test_full_queue_is_rejected_at_once() -> None:
    async def main():
        sim = Sim(4, 64, max_batch_size=2, max_prefill_tokens=16, max_reqs=3)
        await sim.start()
        for i in range(3):  # no await in between: the engine loop cannot admit any yet
            assert sim.submit(f"q{i}", [i + 2, 7, 9], SamplingParams(max_new_tokens=5))
        with pytest.raises(RejectedError) as info:
            sim.engine.submit(Request("q3", [2, 3], SamplingParams(max_new_tokens=5)))
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "q3" not in sim.engine.queue.by_id and len(sim.engine.queue.waiting) == 3
        await sim.drain(max_steps=1000)
        assert sim.submit("q3", [2, 3], SamplingParams(max_new_tokens=5))  # room again
        await sim.drain(max_steps=1000)
        sim.verify()
        await sim.stop()

    run(main())


def test_worker_failure_fails_in_flight_requests_once_then_recovers() -> None:
    """The worker dies twice mid-run: every request in the engine then ends once with
    UNAVAILABLE, the KV state is rebuilt, and later requests are served with correct outputs."""

    async def main():
        capacity = 96
        sim = Sim(11, capacity, max_batch_size=6, max_prefill_tokens=16, max_reqs=16, use_radix_cache=True)
        sim.fake.fail_at = [120, 400]
        rng = sim.rng
        await sim.start()
        for rid, prompt, sampling in random_workload(rng, 300, capacity):
            await sim.tick(rng.choice((0, 1, 2, 4)))
            while len(sim.engine.queue.waiting) >= sim.cfg.max_reqs:
                await sim.tick(2)
            sim.submit(rid, prompt, sampling)
        await sim.drain(max_steps=20_000)
        counts = sim.verify(failures_expected=True)
        await sim.stop()
        return sim, counts

    sim, counts = run(main())
    assert not sim.fake.fail_at and counts["failed"] > 0 and counts["eos"] + counts["length"] > 200, counts


def test_fake_worker_rejects_bad_steps() -> None:
    """The fake's own checks fire: a prefix slot holding other tokens, a decode slot still read
    by a live request, an extend at the wrong position."""
    prompts = {1: [5, 6, 7, 8], 2: [5, 6, 9, 9], 3: [5, 6, 7, 8, 3]}

    def fresh() -> FakeWorkerGroup:
        fake = FakeWorkerGroup(16, 4, random.Random(0))
        fake.prompt_of = prompts.get
        asyncio.run(fake.connect())
        return fake

    def new(rid, tokens, slots, prefix=()):
        ext = worker_pb2.Extend(rid=rid, token_ids=tokens, slots=slots, prefix_slots=list(prefix),
                                prefix_len=len(prefix), sample=True, is_new=True)
        ext.sampling.repetition_penalty = 1.0
        return ext

    fake = fresh()
    reply = fake._run(worker_pb2.StepRequest(step_id=0, extends=[new(1, [5, 6, 7, 8], [0, 1, 2, 3])]))
    assert list(reply.token_ids) == [next_token(context_hash([5, 6, 7, 8]))]
    fake._run(worker_pb2.StepRequest(step_id=1, release=[1]))
    # request 3 may reuse request 1's KV for [5, 6, 7, 8]...
    fake._run(worker_pb2.StepRequest(step_id=2, extends=[new(3, [3], [4], prefix=[0, 1, 2, 3])]))
    # ...but request 2 ([5, 6, 9, 9]) may not read slots 0..2 as its [5, 6, 9]
    with pytest.raises(AssertionError, match="holds token"):
        fake._run(worker_pb2.StepRequest(step_id=3, extends=[new(2, [9], [5], prefix=[0, 1, 2])]))

    fake = fresh()
    fake._run(worker_pb2.StepRequest(step_id=0, extends=[new(1, [5, 6, 7, 8], [0, 1, 2, 3])]))
    with pytest.raises(AssertionError, match="live request"):  # slot 2 is request 1's, which is live
        fake._run(worker_pb2.StepRequest(step_id=1, extends=[new(2, [5, 6, 9, 9], [4, 5, 2, 6])]))

    fake = fresh()
    fake._run(worker_pb2.StepRequest(step_id=0, extends=[new(1, [5, 6, 7, 8], [0, 1, 2, 3])]))
    with pytest.raises(AssertionError, match="extends at"):
        fake._run(worker_pb2.StepRequest(step_id=1, extends=[
            worker_pb2.Extend(rid=1, token_ids=[1], slots=[9], prefix_len=3, sample=True)]))
