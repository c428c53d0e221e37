"""Structured outputs' parts on their own: a format's validation and the grammar it becomes
(checked by xgrammar's string matcher against strings that must and must not match), and the
worker's unpacking of a token bitmask against a plain-Python reading of the bits, and masks shared
within a step (same_as) from the engine's side and the worker's."""

from __future__ import annotations

import json
import random

import pytest
import torch

from helpers import make_tiny_qwen2
from litelang.configs.schema import LitelangConfig
from litelang.kernels.token_mask import apply_token_mask_ref
from litelang.proto import litelang_pb2 as pb
from litelang.proto import worker_pb2
from litelang.scheduler.engine.step_writer import add_token_mask
from litelang.scheduler.errors import InvalidRequest
from litelang.scheduler.output_format import output_format, parse
from litelang.worker.runner import StepError
from litelang.worker.sampler import mask_words
from litelang.worker.setup import build_runner

xgr_testing = pytest.importorskip("xgrammar.testing")


def accepts(fmt, text: str) -> bool:
    return xgr_testing._is_grammar_accept_string(parse(fmt), text)


def test_choices_are_matched_exactly_whatever_their_characters():
    choices = ['say "hi"', "back\\slash", "naïve ✓", "a|b", "line\nbreak"]
    fmt = output_format(pb.StructuredOutput(choice=pb.ChoiceList(choices=choices)))
    for c in choices:
        assert accepts(fmt, c), c
    for other in ['say "hi', "backslash", "a", "b", "naïve", ""]:
        assert not accepts(fmt, other), other


def test_json_object_is_any_object_and_nothing_else():
    fmt = output_format(pb.StructuredOutput(json_object=True))
    assert accepts(fmt, json.dumps({"a": [1, 2], "b": {"c": None}}))
    for other in ["[1]", '"x"', "3", "{"]:
        assert not accepts(fmt, other), other


def test_json_schema_and_regex():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    fmt = output_format(pb.StructuredOutput(json_schema=json.dumps(schema)))
    assert accepts(fmt, '{"n": 12}') and not accepts(fmt, '{"n": "12"}') and not accepts(fmt, '{"m": 1}')
    regex = output_format(pb.StructuredOutput(regex=r"[0-9]{2}-[a-z]"))
    assert accepts(regex, "12-x") and not accepts(regex, "12-xy") and not accepts(regex, "1-x")


@pytest.mark.parametrize("spec, words", [
    (pb.StructuredOutput(), "empty"),
    (pb.StructuredOutput(json_object=False), "must be true"),
    (pb.StructuredOutput(choice=pb.ChoiceList(choices=["a", ""])), "non-empty"),
    (pb.StructuredOutput(regex="(a"), "regex does not parse"),
    (pb.StructuredOutput(json_schema="[1, 2"), "not JSON"),
    (pb.StructuredOutput(grammar='root ::= "a" | '), "grammar does not parse"),
])
def test_bad_formats_name_the_problem(spec, words):
    with pytest.raises(InvalidRequest, match=words):
        output_format(spec)


def test_mask_words_reads_each_bit():
    rng = random.Random(0)
    vocab, rows = 77, 5  # not a multiple of 32: the last word's high bits are padding
    masked = {1: [rng.random() < 0.3 for _ in range(vocab)], 3: [rng.random() < 0.7 for _ in range(vocab)]}
    words = (vocab + 31) // 32

    def pack(bits: list[bool]) -> bytes:
        values = [sum(1 << j for j in range(32) if 32 * i + j < vocab and bits[32 * i + j]) for i in range(words)]
        return b"".join(v.to_bytes(4, "little") for v in values)

    packed = mask_words([(row, pack(bits)) for row, bits in masked.items()], rows, vocab, torch.device("cpu"))
    got = apply_token_mask_ref(torch.zeros(rows, vocab), packed) == 0  # True where a token survives
    want = torch.tensor([masked.get(row, [True] * vocab) for row in range(rows)])
    assert torch.equal(got, want)


def only(token: int, vocab: int) -> bytes:
    """A TokenMask.allowed that allows one token."""
    words = [0] * ((vocab + 31) // 32)
    words[token // 32] = 1 << (token % 32)
    return b"".join(w.to_bytes(4, "little") for w in words)


def test_equal_masks_in_a_step_are_sent_once():
    step, seen = worker_pb2.StepRequest(), {}
    a, b = only(5, 100), only(7, 100)
    for rid, mask in [(1, a), (2, b), (3, a), (4, a)]:
        add_token_mask(step, rid, mask, seen)
    got = [(m.rid, m.allowed, m.same_as) for m in step.token_masks]
    assert got == [(1, a, 0), (2, b, 0), (3, b"", 1), (4, b"", 1)]


@pytest.fixture(scope="module")
def cpu_runner(tmp_path_factory):
    tiny = make_tiny_qwen2(tmp_path_factory.mktemp("masks") / "m")
    return build_runner(LitelangConfig(model=str(tiny), device="cpu", kv_slots=256, max_batch_size=4,
                                       max_input_length=32, max_output_length=32), rank=0)


def test_the_worker_applies_a_shared_mask_to_each_request_and_refuses_a_forward_reference(cpu_runner):
    vocab = cpu_runner.model.spec.vocab_size
    req = worker_pb2.StepRequest(step_id=1)
    for rid in (1, 2, 3):
        req.extends.add(rid=rid, token_ids=[3, 4, rid], slots=range(3 * rid, 3 * rid + 3), sample=True, is_new=True,
                        sampling=worker_pb2.Sampling(temperature=0.0))
    step = worker_pb2.StepRequest()
    add_token_mask(step, 1, only(11, vocab), {})
    req.token_masks.extend(step.token_masks)
    req.token_masks.add(rid=2, same_as=1)
    req.token_masks.add(rid=3, allowed=only(13, vocab))
    reply = cpu_runner.step(req)
    assert dict(zip(reply.rids, reply.token_ids)) == {1: 11, 2: 11, 3: 13}
    cpu_runner.step(worker_pb2.StepRequest(step_id=2, release=[1, 2, 3]))

    bad = worker_pb2.StepRequest(step_id=3)
    bad.extends.add(rid=9, token_ids=[3], slots=[0], sample=True, is_new=True, sampling=worker_pb2.Sampling())
    bad.token_masks.add(rid=9, same_as=1)  # mask 0 refers to itself
    with pytest.raises(StepError, match="not an earlier one"):
        cpu_runner.step(bad)
