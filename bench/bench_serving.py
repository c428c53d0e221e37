"""Serving benchmarks through the full gRPC path (client -> scheduler -> worker), on a GPU.

    python -m litelang.bench.bench_serving --shape qwen2-1.5b --tokenizer DIR [--only single,batch128,prefix,poisson]
        [--tp 1,2]   (--only also takes `top`: the cost of top_logprobs; `n`: n completions per request;
                      `openai`: the same streams through the OpenAI-compatible gateway against gRPC)

Launches real processes with litelang-launch on a random-weight checkpoint at the given shape
(the tokenizer files are copied in from DIR), drives them with the asyncio client, and prints
markdown rows for BENCHMARKS.md. EOS is ignored so every request produces all its tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from litelang.bench.shapes import random_checkpoint
from litelang.client.api import AsyncLitelangClient, LitelangClient
from litelang.scheduler.launch import http_ok, is_serving

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    device = "cuda"
    overrides: dict = {}

    def __init__(self, model: Path, **overrides):
        self.port = free_port()
        self.openai_port = overrides.get("openai_port", 0)
        cfg = dict(model=str(model), device=self.device, port=self.port, worker_base_port=free_port(),
                   dist_port=free_port(), max_batch_size=160, max_input_length=4096, max_output_length=2048,
                   max_prefill_tokens=8192, max_reqs=1024, mem_usage=0.8, log_level="warning")
        cfg.update(self.overrides)
        cfg.update(overrides)
        self.cfg_file = Path(f"/tmp/litelang-bench-{self.port}.yaml")
        self.cfg_file.write_text(yaml.safe_dump(cfg))
        self.proc = subprocess.Popen([sys.executable, "-m", "litelang.scheduler.launch", str(self.cfg_file)], start_new_session=True)
        self.address = f"127.0.0.1:{self.port}"
        deadline = time.time() + 300
        while not is_serving(self.address):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("server did not come up")
            time.sleep(1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def gpu_idle_share(before, after) -> str:
    busy = after.gpu_busy_ms - before.gpu_busy_ms
    gap = after.gpu_gap_ms - before.gpu_gap_ms
    steps = after.steps - before.steps
    return f"{100 * gap / max(busy + gap, 1e-9):.1f}% idle over {steps} steps ({busy / max(steps, 1):.2f} ms GPU/step)"


async def stream_one(client: AsyncLitelangClient, ids: list[int], new: int, record: dict, **sampling) -> None:
    t0 = time.perf_counter()
    times = []
    async for chunk in client.generate_stream(ids, max_new_tokens=new, ignore_eos=True, temperature=0, **sampling):
        now = time.perf_counter()
        times.extend([now] * len(chunk.token_ids))
        if chunk.finish_reason:
            record.setdefault("cached", []).append(chunk.usage.cached_tokens)
            record.setdefault("server_ttft", []).append(chunk.timings.ttft_ms / 1000)
            record.setdefault("server_queue", []).append(chunk.timings.queue_ms / 1000)
    record.setdefault("ttft", []).append(times[0] - t0)
    record.setdefault("itl", []).extend(b - a for a, b in zip(times, times[1:]))
    record.setdefault("tokens", []).append(len(times))
    record.setdefault("end", []).append(times[-1])


def rand_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1000, 150000) for _ in range(n)]


async def run_concurrent(address: str, prompts: list[list[int]], new: int, arrivals: list[float] | None = None,
                         **sampling) -> dict:
    record: dict = {}
    async with AsyncLitelangClient(address) as client:
        t0 = time.perf_counter()

        async def delayed(i, p):
            if arrivals:
                await asyncio.sleep(arrivals[i])
            await stream_one(client, p, new, record, **sampling)

        await asyncio.gather(*(delayed(i, p) for i, p in enumerate(prompts)))
        record["wall"] = time.perf_counter() - t0
    return record


async def run_concurrent_http(base_url: str, prompts: list[list[int]], new: int) -> dict:
    """run_concurrent through the OpenAI gateway: streamed /v1/completions with token-id prompts
    (httpx; tokens counted from the usage event, inter-token gaps from the text events)."""
    import json

    import httpx

    record: dict = {}

    async def one(client: httpx.AsyncClient, ids: list[int]) -> None:
        body = {"prompt": ids, "max_tokens": new, "temperature": 0, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        t0, times, tokens = time.perf_counter(), [], 0
        async with client.stream("POST", f"{base_url}/v1/completions", json=body) as reply:
            reply.raise_for_status()
            async for line in reply.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                elif event["choices"]:
                    times.append(time.perf_counter())
        record.setdefault("ttft", []).append(times[0] - t0)
        record.setdefault("itl", []).extend(b - a for a, b in zip(times, times[1:]))
        record.setdefault("tokens", []).append(tokens)

    limits = httpx.Limits(max_connections=len(prompts) + 8, max_keepalive_connections=len(prompts) + 8)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, p) for p in prompts))
        record["wall"] = time.perf_counter() - t0
    return record


def _http_in_process(args: tuple[str, list[list[int]], int]) -> dict:
    return asyncio.run(run_concurrent_http(*args))


def run_http_clients(base_url: str, prompts: list[list[int]], new: int, processes: int) -> dict:
    """run_concurrent_http split over client processes, so one Python client does not limit
    what the gateway is measured at; the records joined, wall = the slowest process's."""
    if processes == 1:
        return asyncio.run(run_concurrent_http(base_url, prompts, new))
    from concurrent.futures import ProcessPoolExecutor

    parts = [prompts[k::processes] for k in range(processes)]
    with ProcessPoolExecutor(processes) as pool:
        records = list(pool.map(_http_in_process, [(base_url, part, new) for part in parts]))
    joined: dict = {key: [x for r in records for x in r[key]] for key in ("ttft", "itl", "tokens")}
    joined["wall"] = max(r["wall"] for r in records)
    return joined


def bench_openai(server: Server, rows: list[str], batches: tuple[int, ...] = (1, 128)) -> None:
    """The same greedy streams (32-token prompts, 256 new) through gRPC and through the OpenAI
    gateway in front of the same server, alternating: what HTTP, JSON and SSE cost."""
    base_url = f"http://127.0.0.1:{server.openai_port}"
    deadline = time.time() + 120
    while not http_ok(f"{base_url}/health"):
        if time.time() > deadline:
            raise RuntimeError("the gateway did not come up")
        time.sleep(0.5)
    rng = random.Random(5)
    for batch in batches:
        prompts = [rand_ids(rng, 32) for _ in range(batch)]
        asyncio.run(run_concurrent(server.address, prompts, 16))  # warm up both paths
        asyncio.run(run_concurrent_http(base_url, prompts, 16))
        for rnd in range(2):
            runs = [("gRPC", lambda: asyncio.run(run_concurrent(server.address, prompts, 256))),
                    ("OpenAI HTTP", lambda: run_http_clients(base_url, prompts, 256, 1))]
            if batch >= 64:
                runs.append(("OpenAI HTTP, 4 client processes", lambda: run_http_clients(base_url, prompts, 256, 4)))
            for name, run in runs:
                rec = run()
                assert sum(rec["tokens"]) == 256 * batch, (name, sum(rec["tokens"]))
                rows.append(f"| {batch} stream{'s' if batch > 1 else ''}, 32-token prompts, 256 new, via {name} "
                            f"(round {rnd + 1}) | {sum(rec['tokens']) / rec['wall']:,.0f} out tok/s, p50 ITL "
                            f"{pct(rec['itl'], 0.5) * 1000:.2f} ms, p50 TTFT {pct(rec['ttft'], 0.5) * 1000:.1f} ms | |")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bench_single(server: Server, rows: list[str]) -> None:
    rng = random.Random(0)
    with LitelangClient(server.address) as c:
        asyncio.run(run_concurrent(server.address, [rand_ids(rng, 32)], 32))  # warm up
        before = c.stats()
        rec = asyncio.run(run_concurrent(server.address, [rand_ids(rng, 32)], 256))
        after = c.stats()
    decode_rate = (rec["tokens"][0] - 1) / sum(rec["itl"])
    total_rate = rec["tokens"][0] / rec["wall"]
    rows.append(f"| single stream, 32-token prompt, 256 new (client-side) | {decode_rate:,.0f} tok/s decode "
                f"({1000 / decode_rate:.2f} ms/token), {total_rate:,.0f} tok/s incl. TTFT {rec['ttft'][0] * 1000:.1f} ms "
                f"| GPU {gpu_idle_share(before, after)} |")


def bench_batch(server: Server, rows: list[str], batch: int) -> None:
    rng = random.Random(1)
    with LitelangClient(server.address) as c:
        asyncio.run(run_concurrent(server.address, [rand_ids(rng, 32) for _ in range(batch)], 16))
        before = c.stats()
        rec = asyncio.run(run_concurrent(server.address, [rand_ids(rng, 32) for _ in range(batch)], 256))
        after = c.stats()
    rows.append(f"| {batch} concurrent streams, 32-token prompts, 256 new | {sum(rec['tokens']) / rec['wall']:,.0f} out tok/s, "
                f"p50 ITL {pct(rec['itl'], 0.5) * 1000:.1f} ms | GPU {gpu_idle_share(before, after)} |")


def bench_top_logprobs(server: Server, rows: list[str], batch: int = 16) -> None:
    """The cost of asking for alternatives: the same greedy batch with logprobs alone, then with
    top_logprobs=5 (every step leaves the greedy kernel and takes a top-k after its graph)."""
    for asked in (dict(logprobs=True), dict(logprobs=True, top_logprobs=5)):
        rng = random.Random(3)
        with LitelangClient(server.address) as c:
            asyncio.run(run_concurrent(server.address, [rand_ids(rng, 32) for _ in range(batch)], 16, **asked))
            before = c.stats()
            rec = asyncio.run(run_concurrent(server.address, [rand_ids(rng, 32) for _ in range(batch)], 256, **asked))
            after = c.stats()
        label = ", ".join(f"{k}={v}" for k, v in asked.items())
        rows.append(f"| {batch} concurrent streams, 32-token prompts, 256 new, {label} | "
                    f"{sum(rec['tokens']) / rec['wall']:,.0f} out tok/s, p50 ITL {pct(rec['itl'], 0.5) * 1000:.1f} ms "
                    f"| GPU {gpu_idle_share(before, after)} |")


def bench_n(server: Server, rows: list[str], prompts: int = 16, n: int = 8) -> None:
    """n completions per request (RL-style rollouts): 16 prompts of 1,000 tokens, n = 8, 128 new
    tokens each, against the same 128 completions sent as separate requests."""
    rng = random.Random(4)

    async def run(batch: list[list[int]], per_request: int) -> float:
        """Wall time of n completions of each prompt, per_request of them in each request."""
        async with AsyncLitelangClient(server.address) as client:
            t0 = time.perf_counter()
            await asyncio.gather(*(client.generate(p, max_new_tokens=128, temperature=0.8, ignore_eos=True,
                                                   n=per_request)
                                   for p in batch for _ in range(n // per_request)))
            return time.perf_counter() - t0

    asyncio.run(run([rand_ids(rng, 1000) for _ in range(2)], n))  # warm up
    for label, per_request in ((f"n = {n}", n), (f"{n} separate requests each", 1)):
        with LitelangClient(server.address) as c:
            before = c.stats()
            wall = asyncio.run(run([rand_ids(rng, 1000) for _ in range(prompts)], per_request))
            after = c.stats()
        cached = after.cached_prompt_tokens - before.cached_prompt_tokens
        rows.append(f"| {prompts} prompts of 1,000 tokens, {label}, 128 new | {prompts * n * 128 / wall:,.0f} out tok/s, "
                    f"{prompts * n / wall:.1f} completions/s | {cached:,} prompt tokens from the prefix cache; "
                    f"GPU {gpu_idle_share(before, after)} |")


def bench_prefix(model: Path, rows: list[str], modes: tuple[bool, ...] = (True, False)) -> None:
    rng = random.Random(2)
    system = rand_ids(rng, 2000)
    prompts = [system + rand_ids(rng, 100) for _ in range(128)]
    for cache in modes:
        server = Server(model, use_radix_cache=cache)
        try:
            asyncio.run(run_concurrent(server.address, [rand_ids(rng, 2100)], 4))  # warm up (other prefix)
            with LitelangClient(server.address) as c:
                before = c.stats()
                rec = asyncio.run(run_concurrent(server.address, prompts, 128))
                after = c.stats()
        finally:
            server.stop()
        rows.append(f"| shared prefix 128 × (2,000 shared + 100) in, 128 out, radix cache {'on' if cache else 'off'} | "
                    f"mean TTFT {statistics.mean(rec['ttft']) * 1000:,.0f} ms (server-side {statistics.mean(rec['server_ttft']) * 1000:,.0f} ms, "
                    f"in queue {statistics.mean(rec['server_queue']) * 1000:,.0f} ms), {sum(rec['tokens']) / rec['wall']:,.0f} out tok/s, "
                    f"{sum(rec['cached'])} cached prompt tokens | GPU {gpu_idle_share(before, after)} |")


def bench_poisson(server: Server, rows: list[str], rates: list[float], n: int) -> None:
    for rate in rates:
        rng = random.Random(int(rate * 100))
        t, arrivals = 0.0, []
        for _ in range(n):
            t += rng.expovariate(rate)
            arrivals.append(t)
        prompts = [rand_ids(rng, 1024) for _ in range(n)]
        rec = asyncio.run(run_concurrent(server.address, prompts, 1024, arrivals))
        rows.append(f"| Poisson {rate:g} req/s, {n} requests, 1,024 in / 1,024 out | {sum(rec['tokens']) / rec['wall']:,.0f} out tok/s; "
                    f"TTFT p50 {pct(rec['ttft'], 0.5) * 1000:,.0f} / p99 {pct(rec['ttft'], 0.99) * 1000:,.0f} ms; "
                    f"ITL p50 {pct(rec['itl'], 0.5) * 1000:.1f} / p99 {pct(rec['itl'], 0.99) * 1000:.1f} ms | |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2-1.5b")
    ap.add_argument("--tokenizer", required=True, help="directory with tokenizer.json etc.")
    ap.add_argument("--dir", default="/tmp/litelang-bench")
    ap.add_argument("--only", default="single,batch1,batch128,prefix,poisson")
    ap.add_argument("--rates", default="4,8")
    ap.add_argument("--poisson-requests", type=int, default=64)
    ap.add_argument("--model", help="use this checkpoint instead of a random one at --shape")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prefix-cache", default="on,off", help="radix cache settings for the prefix workload")
    ap.add_argument("--stream-interval", type=int, default=1, help="server's tokens per stream message")
    ap.add_argument("--tp", default="1", help="tensor-parallel sizes, comma-separated: the single, batch and "
                                              "Poisson workloads run on a server of each (one GPU per rank); "
                                              "a size ending in 'nccl' (2nccl) keeps every all-reduce on NCCL")
    args = ap.parse_args()
    Server.device = args.device
    Server.overrides = {"stream_interval": args.stream_interval}
    model = Path(args.model) if args.model else random_checkpoint(args.shape, Path(args.dir) / args.shape)
    for name in TOKENIZER_FILES:
        src = Path(args.tokenizer) / name
        if src.exists():
            shutil.copy(src, model / name)
    only = args.only.split(",")
    tps = args.tp.split(",")
    rows = ["| workload (full gRPC path) | litelang | notes |", "| --- | --- | --- |"]
    for tp in tps if {"single", "batch1", "batch128", "poisson", "top", "n"} & set(only) else []:
        server = Server(model, tp=int(tp.removesuffix("nccl")), symm_all_reduce=not tp.endswith("nccl"))
        start = len(rows)
        try:
            if "single" in only:
                bench_single(server, rows)
            if "batch128" in only:
                bench_batch(server, rows, 128)
            if "poisson" in only:
                bench_poisson(server, rows, [float(r) for r in args.rates.split(",")], args.poisson_requests)
            if "top" in only:
                bench_top_logprobs(server, rows)
            if "n" in only:
                bench_n(server, rows)
        finally:
            server.stop()
        if tps != ["1"]:  # label the rows with their server's tp
            rows[start:] = [row.replace("| ", f"| tp {tp}: ", 1) for row in rows[start:]]
    if "openai" in only:
        server = Server(model, openai_port=free_port())
        try:
            bench_openai(server, rows)
        finally:
            server.stop()
    if "prefix" in only:
        bench_prefix(model, rows, tuple(m == "on" for m in args.prefix_cache.split(",")))
    print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
