"""Tensor parallelism on CPU: two worker processes (gloo) under litelang-launch give the same
greedy tokens as HF transformers on the same checkpoint, and stop cleanly."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from helpers import free_ports, health_status
from litelang.client import LitelangClient
from test_launch import Launcher

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, default_model_dir):
    from helpers import make_tiny_qwen2_with_tokenizer

    return make_tiny_qwen2_with_tokenizer(tmp_path_factory.mktemp("tiny_tp"), default_model_dir)


class TPLauncher(Launcher):
    def __init__(self, model, tmp, tp: int, **config):
        """config: more deploy.yaml keys (LitelangConfig fields)."""
        super().__init__(model, tmp)
        cfg = yaml.safe_load(self.config.read_text())
        base = free_ports(1)[0]
        while not _free_consecutive(base, tp):
            base = free_ports(1)[0]
        self.worker_port = base
        cfg.update(tp=tp, worker_base_port=base, dist_port=free_ports(1)[0], **config)
        self.config.write_text(yaml.safe_dump(cfg))


def _free_consecutive(base: int, n: int) -> bool:
    import socket

    for port in range(base, base + n):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


PROMPTS = [[9707, 11, 1879, 0, 220, 17], [785, 3974, 13876, 38835, 374, 264, 1632, 315, 6195, 11, 1221]]


def hf_greedy(model, prompts: list[list[int]], n: int) -> list[list[int]]:
    """The oracle: HF transformers' n greedy tokens for each prompt, float32 on CPU."""
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    return [hf.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, len(p):].tolist()
            for p in prompts]


def test_tp2_greedy_matches_hf_and_stops_cleanly(tiny_model, tmp_path):
    prompts = PROMPTS
    want = hf_greedy(tiny_model, prompts, 12)
    launch = TPLauncher(tiny_model, tmp_path, tp=2).start()
    try:
        launch.wait_line("litelang is serving")
        for rank in range(2):
            assert health_status(f"127.0.0.1:{launch.worker_port + rank}") == "SERVING"
        workers = [c for c in launch.children().values() if "litelang.worker.main" in c]
        assert len(workers) == 2, launch.output()
        with LitelangClient(launch.address, timeout=120) as client:
            assert client.model_info().tp == 2
            got = [list(client.generate(p, max_new_tokens=12, temperature=0, ignore_eos=True).token_ids) for p in prompts]
        assert got == want
        launch.stop_and_check(signal.SIGTERM)
    finally:
        launch.cleanup()


@pytest.mark.gpu
def test_tp2_on_two_gpus_matches_hf(tmp_path_factory, tmp_path):
    """tp: 2 on CUDA, one GPU per rank: NCCL all-reduces inside the CUDA-graph decode steps and
    the Triton kernels on each rank's shard give HF's greedy tokens. float32, so that the order
    of the sums across ranks cannot flip a token. The tokenizer files come from
    LITELANG_TEST_TOKENIZER (the device machine has no default model), else the default model."""
    from conftest import DEFAULT_MODEL_DIR
    from helpers import make_tiny_qwen2_with_tokenizer

    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs two GPUs (this machine has {torch.cuda.device_count()}): run on nvidia-h200-x2")
    tokenizer_dir = os.environ.get("LITELANG_TEST_TOKENIZER", str(DEFAULT_MODEL_DIR))
    # head_dim 64, and one kv head per rank
    model = make_tiny_qwen2_with_tokenizer(tmp_path_factory.mktemp("tiny_tp_gpu"), tokenizer_dir, hidden_size=256,
                                           intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
    prompts = PROMPTS
    want = hf_greedy(model, prompts, 24)
    launch = TPLauncher(model, tmp_path, tp=2, device="cuda", dtype="float32", startup_timeout_s=600).start()
    try:
        launch.wait_line("litelang is serving", timeout=600)
        with LitelangClient(launch.address, timeout=300) as client:
            assert client.model_info().tp == 2
            with ThreadPoolExecutor(len(prompts)) as pool:  # at once: decode steps of batch 2
                got = list(pool.map(lambda p: list(client.generate(p, max_new_tokens=24, temperature=0,
                                                                   ignore_eos=True).token_ids), prompts))
        assert got == want, launch.output()[-3000:]
        launch.stop_and_check(signal.SIGTERM)
    finally:
        launch.cleanup()
