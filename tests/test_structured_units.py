"""Structured outputs' parts on their own: a format's validation and the grammar it becomes
(checked by xgrammar's string matcher against strings that must and must not match), and the
worker's unpacking of a token bitmask against a plain-Python reading of the bits."""

from __future__ import annotations

import json
import random

import pytest
import torch

from litelang.proto import litelang_pb2 as pb
from litelang.scheduler.structured import output_format, parse
from litelang.scheduler.validation import InvalidRequest
from litelang.kernels.token_mask import apply_token_mask_ref
from litelang.worker.sampler import mask_words

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
