"""End to end: a server configured for longer contexts than the model has positions. The worker
caps its context at the model's max_position_embeddings and says so; the scheduler then rejects
longer prompts with INVALID_ARGUMENT and stops generation at the cap with LENGTH, instead of a
worker step failing on the RoPE table (which used to fail every request in flight)."""

from __future__ import annotations

import grpc
import pytest

from litelang.proto import litelang_pb2 as pb

pytestmark = pytest.mark.slow

POSITIONS = 512  # tests/helpers.py make_tiny_qwen2 (vocabulary 256)
# limits past the model's POSITIONS: the worker caps the context, the scheduler refuses and stops at the cap
SERVER_CONFIG = dict(max_input_length=1000, max_output_length=200, kv_slots=4096)


def ids(n: int) -> list[int]:
    return [3 + i % 200 for i in range(n)]


@pytest.fixture(scope="module")
def served_model(tiny_qwen2):
    """For `group`: the tiny model of POSITIONS positions (its vocabulary is enough for ids())."""
    return tiny_qwen2


def test_prompt_past_the_model_positions_is_invalid_argument(group):
    with pytest.raises(grpc.RpcError) as info:
        group.client.generate(ids(600), max_new_tokens=4)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"context holds {POSITIONS}" in info.value.details(), info.value.details()


def test_generation_stops_at_the_model_positions(group):
    prompt = ids(POSITIONS - 12)
    out = group.client.generate(prompt, max_new_tokens=100, ignore_eos=True)
    assert out.finish_reason == pb.FINISH_REASON_LENGTH, out
    assert len(prompt) + len(out.token_ids) == POSITIONS
    # the server is still healthy: a short request completes
    assert len(group.client.generate(ids(37), max_new_tokens=5, ignore_eos=True).token_ids) == 5
