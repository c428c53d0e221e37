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
from launcher import Launcher
from litelang.client.api import LitelangClient

pytestmark = pytest.mark.slow


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
            info = client.model_info()
            assert info.tp == 2
            assert info.model_type == "qwen2"  # what the workers loaded (InitResponse.model_type)
            got = [list(client.generate(p, max_new_tokens=12, temperature=0, ignore_eos=True).token_ids) for p in prompts]
        assert got == want
        launch.stop_and_check(signal.SIGTERM)
    finally:
        launch.cleanup()


@pytest.mark.gpu
def test_tp2_on_two_gpus_matches_hf(tmp_path_factory, tmp_path):
    """tp: 2 on CUDA, one GPU per rank: symmetric-memory all-reduces (these messages are all
    small), inside the CUDA-graph decode steps too, and the Triton kernels on each rank's shard
    give HF's greedy tokens. float32, so that the order
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
        # the decode steps' all-reduces went through symmetric memory (config symm_all_reduce)
        assert launch.output().count("through symmetric memory") == 2, launch.output()[-3000:]
        launch.stop_and_check(signal.SIGTERM)
    finally:
        launch.cleanup()


def teacher_forced_logprobs(hf, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """log_softmax of HF transformers' logits at each of tokens' positions [len(tokens), vocab],
    the prompt plus the generated tokens fed at once (CPU)."""
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits.float(), -1)


@pytest.mark.gpu
def test_tp2_bf16_on_two_gpus_close_to_hf(tmp_path_factory, tmp_path):
    """tp: 2 in bfloat16: each generated token's logprob against HF float32 fed the same tokens.
    The sums across ranks may reorder, so tokens are not compared one for one: the error must
    stay within twice HF's own bfloat16 error, and HF float32's top-1 must agree with the tokens
    (nearly) as often as HF bfloat16's does. head_dim 128, one kv head per rank, logits spread
    enough (initializer range 0.1) that top-1 means something."""
    from conftest import DEFAULT_MODEL_DIR
    from helpers import make_tiny_qwen2_with_tokenizer

    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs two GPUs (this machine has {torch.cuda.device_count()}): run on nvidia-h200-x2")
    tokenizer_dir = os.environ.get("LITELANG_TEST_TOKENIZER", str(DEFAULT_MODEL_DIR))
    model = make_tiny_qwen2_with_tokenizer(tmp_path_factory.mktemp("tiny_tp_bf16"), tokenizer_dir, hidden_size=512,
                                           intermediate_size=1024, num_attention_heads=4, num_key_value_heads=2,
                                           initializer_range=0.1)
    prompts, n = PROMPTS, 32
    launch = TPLauncher(model, tmp_path, tp=2, device="cuda", dtype="bfloat16", startup_timeout_s=600).start()
    try:
        launch.wait_line("litelang is serving", timeout=600)
        with LitelangClient(launch.address, timeout=300) as client:
            with ThreadPoolExecutor(len(prompts)) as pool:  # at once: decode steps of batch 2
                got = list(pool.map(lambda p: client.generate(p, max_new_tokens=n, temperature=0, ignore_eos=True,
                                                              logprobs=True), prompts))
        launch.stop_and_check(signal.SIGTERM)
    finally:
        launch.cleanup()
    ours_err = hf_bf16_err = 0.0
    ours_agree = hf_bf16_agree = 0
    hf_f32, hf_bf16_model = (AutoModelForCausalLM.from_pretrained(model, dtype=d).eval()
                             for d in (torch.float32, torch.bfloat16))
    for prompt, r in zip(prompts, got):
        tokens = list(r.token_ids)
        assert len(tokens) == len(r.logprobs) == n
        oracle = teacher_forced_logprobs(hf_f32, prompt, tokens)
        hf_bf16 = teacher_forced_logprobs(hf_bf16_model, prompt, tokens)
        ids = torch.tensor(tokens)[:, None]
        want = oracle.gather(1, ids)[:, 0]
        ours_err = max(ours_err, (torch.tensor(list(r.logprobs)) - want).abs().max().item())
        hf_bf16_err = max(hf_bf16_err, (hf_bf16.gather(1, ids)[:, 0] - want).abs().max().item())
        ours_agree += int((oracle.argmax(-1) == ids[:, 0]).sum())
        hf_bf16_agree += int((oracle.argmax(-1) == hf_bf16.argmax(-1)).sum())
    report = (f"tp 2 bf16: max |logprob error| {ours_err:.4f} (HF bf16 {hf_bf16_err:.4f}), "
              f"top-1 agreement {ours_agree}/{n * len(prompts)} (HF bf16 {hf_bf16_agree})")
    print(report)
    assert ours_err <= max(2 * hf_bf16_err, 0.02), report
    assert ours_agree >= hf_bf16_agree - 2, report
