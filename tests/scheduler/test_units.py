"""Fast unit and property tests, no processes: the slot allocator, incremental detokenization on
the real tokenizer, sampling validation, the admission peak estimate against a brute-force
simulation, the config schema, and the committed gRPC stubs against a fresh generation."""

from __future__ import annotations

import argparse
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from litelang.configs.schema import LitelangConfig, add_config_args, config_from_args
from litelang.proto import litelang_pb2 as pb
from litelang.scheduler.detokenizer import ByteLevelDetokenizer, IncrementalDetokenizer
from litelang.scheduler.engine.admission import PeakCheck, expected_remaining, future_peak
from litelang.scheduler.engine.kv.allocator import OutOfSlots, SlotAllocator
from litelang.scheduler.errors import InvalidRequest
from litelang.scheduler.frontend.validation import check_prompt
from litelang.scheduler.sampling_params import SamplingParams

# ------------------------------------------------------------------------------ SlotAllocator


def test_allocator_counts_and_out_of_slots():
    a = SlotAllocator(10)
    assert a.capacity == 10 and a.num_free == 10
    assert a.allocate(0) == [] and a.num_free == 10
    first = a.allocate(4)
    second = a.allocate(6)
    assert len(first) == 4 and len(second) == 6 and a.num_free == 0
    assert sorted(first + second) == list(range(10)), "every slot handed out exactly once"
    with pytest.raises(OutOfSlots):
        a.allocate(1)
    a.free(first)
    assert a.num_free == 4
    with pytest.raises(OutOfSlots):
        a.allocate(5)
    assert a.num_free == 4, "a failed allocation must not take anything"
    assert sorted(a.allocate(4)) == sorted(first)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 64), st.lists(st.tuples(st.booleans(), st.integers(0, 20)), max_size=60))
def test_allocator_never_hands_out_a_held_slot(capacity, ops):
    a = SlotAllocator(capacity)
    held: list[list[int]] = []
    for is_alloc, n in ops:
        if is_alloc or not held:
            if n > a.num_free:
                with pytest.raises(OutOfSlots):
                    a.allocate(n)
                continue
            got = a.allocate(n)
            assert len(got) == n
            flat = {s for h in held for s in h}
            assert not flat & set(got) and len(set(got)) == n
            assert all(0 <= s < capacity for s in got)
            held.append(got)
        else:
            a.free(held.pop(n % len(held)))
        assert a.num_free + sum(map(len, held)) == capacity


# ------------------------------------------------------------------------------ detokenizer


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from litelang.scheduler.tokenizer import Tokenizer

    return Tokenizer(default_model_dir)


@pytest.fixture(scope="module", params=["window", "byte_level"])
def make_detok(request, tokenizer):
    """Both detokenizers: the generic window one and the byte-table one the server uses for Qwen2."""
    if request.param == "window":
        return lambda skip: IncrementalDetokenizer(tokenizer, skip)
    assert isinstance(tokenizer.detokenizer(), ByteLevelDetokenizer)
    return tokenizer.detokenizer


def detokenize(make_detok, ids: list[int], skip_special_tokens: bool = False) -> list[str]:
    d = make_detok(skip_special_tokens)
    return [d.add(i) for i in ids]


SAMPLES = [
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "递归是一种在函数中调用自身的方法。生僻字：龘、靐、齉、爩。",
    "emoji: 🐱🐶🦄 👨‍👩‍👧‍👦 🏳️‍🌈 family",
    "mixed ünïcödé — «quotes» … ½ ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀",
    "日本語のテキストと한국어 텍스트",
    "<|im_start|>user\nhi<|im_end|>\n",
]


def check_deltas(tokenizer, make_detok, ids: list[int], skip_special_tokens: bool = False) -> list[str]:
    deltas = detokenize(make_detok, ids, skip_special_tokens)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens)
    for i, delta in enumerate(deltas):
        assert "\ufffd" not in delta, f"delta {i} carries a broken character: {delta!r}"
    return deltas


@pytest.mark.parametrize("text", SAMPLES)
def test_detokenizer_deltas_concatenate_to_the_decoded_text(tokenizer, make_detok, text):
    ids = tokenizer.encode(text)
    deltas = check_deltas(tokenizer, make_detok, ids)
    assert "".join(deltas) == text


def test_detokenizer_holds_back_split_characters(tokenizer, make_detok):
    """龘 is two byte-level tokens: the first yields nothing, the second the whole character."""
    ids = tokenizer.encode("龘")
    assert len(ids) >= 2 and "\ufffd" in tokenizer.decode(ids[:1])  # the premise of this test
    deltas = detokenize(make_detok, ids)
    assert deltas[0] == "" and "".join(deltas) == "龘"


def test_detokenizer_skip_special_tokens(tokenizer, make_detok):
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
    deltas = check_deltas(tokenizer, make_detok, ids, skip_special_tokens=True)
    assert "".join(deltas) == "user\nhi"


TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufffd"), max_size=40
)
PIECES = st.lists(
    st.sampled_from(["你好", "龘", "靐", "😀", "👨‍👩‍👧", "é", "\n", " def", "𝔘", "  ", "ab", "\t", "ا", "🇫🇷"]),
    max_size=12,
).map("".join)


@settings(max_examples=150, deadline=None)
@given(st.one_of(TEXT, PIECES, st.tuples(TEXT, PIECES).map("".join)))
@example("🦄🦄🦄")
@example("a龘b")
def test_detokenizer_property(tokenizer, make_detok, text):
    ids = tokenizer.encode(text)
    check_deltas(tokenizer, make_detok, ids)


# ------------------------------------------------------------------------------ validation


CFG = LitelangConfig(max_output_length=100)


def resolve(**fields):
    return SamplingParams.from_wire(pb.SamplingParams(**fields), CFG, default_seed=7)


@pytest.mark.parametrize(
    "fields, words",
    [
        (dict(temperature=-0.5), ["temperature", ">= 0"]),
        (dict(temperature=math.nan), ["temperature", "finite"]),
        (dict(temperature=math.inf), ["temperature", "finite"]),
        (dict(top_p=0.0), ["top_p", "(0, 1]"]),
        (dict(top_p=1.5), ["top_p", "(0, 1]"]),
        (dict(top_p=math.nan), ["top_p"]),
        (dict(top_k=-1), ["top_k"]),
        (dict(min_p=1.5), ["min_p"]),
        (dict(repetition_penalty=0.0), ["repetition_penalty"]),
        (dict(frequency_penalty=3.0), ["frequency_penalty"]),
        (dict(presence_penalty=-2.5), ["presence_penalty"]),
        (dict(max_new_tokens=0), ["max_new_tokens", ">= 1"]),
        (dict(max_new_tokens=-1), ["max_new_tokens", ">= 1"]),
        (dict(max_new_tokens=101), ["max_new_tokens", "max_output_length"]),
        (dict(max_new_tokens=10, min_new_tokens=11), ["min_new_tokens"]),
        (dict(min_new_tokens=-1), ["min_new_tokens"]),
        (dict(stop=["ok", ""]), ["stop"]),
        (dict(logprobs=True, top_logprobs=21), ["top_logprobs", "[0, 20]"]),
        (dict(logprobs=True, top_logprobs=-1), ["top_logprobs", "[0, 20]"]),
        (dict(top_logprobs=5), ["top_logprobs needs logprobs: true"]),
    ],
)
def test_resolve_sampling_rejects_with_a_message(fields, words):
    with pytest.raises(InvalidRequest) as info:
        resolve(**fields)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_resolve_sampling_defaults_and_values():
    s = resolve()
    assert s.temperature == 0.0 and s.top_p == 1.0 and s.top_k == 0
    assert s.max_new_tokens == min(256, CFG.max_output_length) and s.seed == 7
    s = resolve(temperature=0.7, top_p=1.0, top_k=5, max_new_tokens=100, min_new_tokens=3, stop=["\n\n"],
                stop_token_ids=[5], ignore_eos=True, seed=0, skip_special_tokens=True)
    assert (s.temperature, s.top_p, s.top_k, s.max_new_tokens, s.min_new_tokens) == (pytest.approx(0.7), 1.0, 5, 100, 3)
    assert s.stop == ["\n\n"] and s.stop_token_ids == [5] and s.ignore_eos and s.skip_special_tokens
    assert s.seed == 0, "an explicit seed 0 is a seed, not 'unset'"
    assert (resolve().top_logprobs, resolve(logprobs=True).top_logprobs) == (0, 0)
    assert resolve(logprobs=True, top_logprobs=20).top_logprobs == 20


def test_check_prompt():
    cfg = LitelangConfig(max_input_length=4)
    check_prompt([1, 2, 3, 4], cfg, vocab_size=10)
    with pytest.raises(InvalidRequest, match="empty"):
        check_prompt([], cfg, vocab_size=10)
    with pytest.raises(InvalidRequest, match="max_input_length 4"):
        check_prompt([1] * 5, cfg, vocab_size=10)
    with pytest.raises(InvalidRequest, match="vocabulary"):
        check_prompt([1, 10], cfg, vocab_size=10)
    with pytest.raises(InvalidRequest, match="vocabulary"):
        check_prompt([-1], cfg, vocab_size=10)


# ------------------------------------------------------------------------------ admission


def brute_force_peak(requests: list[tuple[int, int]]) -> int:
    """Every request decodes one token per step in parallel; a request with b tokens to go
    holds a + t slots after t steps and frees them all once it produced its last token."""
    held = [a for a, _ in requests]
    left = [b for _, b in requests]
    alive = [True] * len(requests)
    peak = sum(held)
    while any(alive):
        peak = max(peak, sum(h for h, on in zip(held, alive) if on))
        for i in range(len(requests)):
            if not alive[i]:
                continue
            if left[i] == 0:
                alive[i] = False  # done: frees everything after this step
            else:
                held[i] += 1
                left[i] -= 1
    return peak


REQS = st.lists(st.tuples(st.integers(0, 50), st.integers(0, 40)), max_size=10)


@settings(max_examples=300, deadline=None)
@given(REQS)
@example([])
@example([(5, 0)])
@example([(1, 10), (100, 1)])
def test_future_peak_matches_brute_force(requests):
    assert future_peak(requests) == brute_force_peak(requests)


@settings(max_examples=100, deadline=None)
@given(REQS, st.randoms(use_true_random=False))
def test_future_peak_ignores_order(requests, rnd):
    shuffled = list(requests)
    rnd.shuffle(shuffled)
    assert future_peak(shuffled) == future_peak(requests)


@settings(max_examples=200, deadline=None)
@given(REQS, st.lists(st.tuples(st.integers(0, 50), st.integers(0, 40), st.integers(0, 120)), max_size=8))
def test_peak_check_equals_future_peak_of_fresh_estimates(running, candidates):
    """PeakCheck (estimates made once per load level, admitted candidates appended) answers as
    future_peak over estimates made afresh for every candidate, as admission did before."""
    capacity, busy_scale = 120, 0.5
    check = PeakCheck(capacity, busy_scale, lambda: list(running))
    admitted = list(running)
    for held, remaining, used in candidates:
        est = lambda b: expected_remaining(b, used, capacity, busy_scale)  # noqa: E731
        fresh = future_peak([(a, est(b)) for a, b in admitted] + [(held, est(remaining))]) <= capacity
        assert check.fits(held, remaining, used) == fresh
        if fresh:
            check.add(held, remaining)
            admitted.append((held, remaining))


def test_expected_remaining_is_optimistic_only_when_lightly_used():
    assert expected_remaining(100, used=10, capacity=100, busy_scale=0.5) < 100
    assert expected_remaining(100, used=60, capacity=100, busy_scale=0.5) == 100
    assert expected_remaining(100, used=0, capacity=100, busy_scale=0.0) == 100  # busy_scale 0: never optimistic
    assert expected_remaining(7, used=0, capacity=100, busy_scale=1.0) >= 1  # never rounds a request away
    for remaining in range(0, 50):
        assert 0 <= expected_remaining(remaining, 0, 100, 0.5) <= remaining


# ------------------------------------------------------------------------------ config schema


def parse(argv: list[str]) -> LitelangConfig:
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    return config_from_args(parser.parse_args(argv))


def test_config_precedence_defaults_yaml_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("port: 1234\nmax_reqs: 7\nuse_radix_cache: false\nmem_usage: 0.5\nworkers: []\n")
    assert parse([]) == LitelangConfig()
    from_yaml = parse(["--config", str(path)])
    assert (from_yaml.port, from_yaml.max_reqs, from_yaml.use_radix_cache, from_yaml.mem_usage) == (1234, 7, False, 0.5)
    assert from_yaml.max_batch_size == LitelangConfig().max_batch_size  # untouched keys keep defaults
    both = parse(["--config", str(path), "--port", "999", "--use-radix-cache", "--kv-slots", "64"])
    assert (both.port, both.max_reqs, both.use_radix_cache, both.kv_slots) == (999, 7, True, 64)
    assert parse(["--no-cuda-graphs"]).cuda_graphs is False
    two = parse(["--tp", "2", "--workers", "h1:1", "h2:2"])
    assert two.worker_addresses() == ["h1:1", "h2:2"]
    assert parse(["--worker-base-port", "700", "--tp", "2"]).worker_addresses() == ["127.0.0.1:700", "127.0.0.1:701"]


def test_config_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("port: 1\nmax_request: 3\n")
    with pytest.raises(ValueError, match="max_request"):
        LitelangConfig.from_yaml(path)
    with pytest.raises(ValueError, match="max_request"):
        parse(["--config", str(path)])
    with pytest.raises(SystemExit):  # argparse: unknown flag
        parse(["--max-request", "3"])


@pytest.mark.parametrize("kwargs, word", [
    (dict(tp=0), "tp"), (dict(max_reqs=0), "max_reqs"), (dict(mem_usage=1.5), "mem_usage"),
    (dict(busy_scale=-0.1), "busy_scale"), (dict(device="tpu"), "device"), (dict(kv_slots=-1), "kv_slots"),
    (dict(tp=2, workers=["a:1"]), "workers"), (dict(openai_port=70000), "openai_port"), (dict(port=-1), "port"),
])
def test_config_invalid_values(kwargs, word):
    with pytest.raises(ValueError, match=word):
        LitelangConfig(**kwargs)


def test_default_yaml_is_valid():
    from helpers import REPO_ROOT

    cfg = LitelangConfig.from_yaml(REPO_ROOT / "configs" / "default.yaml")
    assert cfg.port == 50051 and cfg.host == "127.0.0.1"


# ------------------------------------------------------------------------------ proto stubs


def test_committed_stubs_match_a_fresh_generation(tmp_path):
    from litelang.tools.gen_proto import PROTO_DIR, generate

    written = generate(tmp_path)
    committed = sorted(p.name for p in PROTO_DIR.glob("*_pb2*.py*"))
    assert sorted(p.name for p in written) == committed
    stale = [p.name for p in written if p.read_bytes() != (PROTO_DIR / p.name).read_bytes()]
    assert not stale, f"stale generated stubs {stale}: run `make proto`"



def test_request_context_slices_prompt_then_output():
    """Request.context(start, end) equals (prompt + output)[start:end] for every range."""
    from litelang.scheduler.engine.request import Request

    r = Request(request_id="c", prompt_ids=[1, 2, 3, 4], sampling=SamplingParams())
    assert r.context() is r.prompt_ids  # no copy when it is the whole prompt
    r.output_ids = [5, 6]
    whole = r.prompt_ids + r.output_ids
    for start in range(len(whole) + 1):
        for end in range(start, len(whole) + 1):
            assert r.context(start, end) == whole[start:end]
    assert r.context() == whole


def test_engine_garbage_policy_collects_when_idle_and_every_busy_stretch():
    """The engine process turns automatic collection off; cyclic garbage is still collected,
    at the times the policy picks (idle, or after BUSY_STEPS steps)."""
    import collections
    import gc
    import weakref

    from litelang.scheduler.engine.process import _GarbagePolicy

    class Cycle:
        pass

    def garbage_cycle() -> weakref.ref:
        a, b = Cycle(), Cycle()
        a.other, b.other = b, a
        return weakref.ref(a)

    engine = argparse.Namespace(stats=collections.Counter())
    was_enabled = gc.isenabled()
    try:
        policy = _GarbagePolicy(engine)
        assert not gc.isenabled()
        ref = garbage_cycle()
        engine.stats["steps"] = 10
        policy.on_sent()  # busy, under BUSY_STEPS since the last pass: not collected
        assert ref() is not None
        policy.on_idle()
        assert ref() is None
        ref = garbage_cycle()
        policy.on_idle()  # no step since the last pass: nothing to collect for
        assert ref() is not None
        engine.stats["steps"] += policy.BUSY_STEPS
        policy.on_sent()
        assert ref() is None
    finally:
        if was_enabled:
            gc.enable()


def test_messages_without_a_chat_template_are_invalid_argument(tmp_path, default_model_dir):
    """A checkpoint whose tokenizer has no chat template: messages are the client's mistake
    (INVALID_ARGUMENT through InvalidRequest), not a server error."""
    import json
    import shutil

    from litelang.scheduler.tokenizer import Tokenizer

    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(default_model_dir / name, tmp_path / name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = Tokenizer(tmp_path)
    assert not tokenizer.has_chat_template
    with pytest.raises(InvalidRequest, match="no chat template"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert tokenizer.encode("hi") == Tokenizer(default_model_dir).encode("hi")


def test_token_filter_masks_against_a_plain_reading():
    """TokenFilter's mask, read bit by bit, against the sets it should allow: the allowed ids, less
    one-token bad words always, less a longer bad word's last token right after its prefix; ANDed
    with a format's mask when there is one."""
    from litelang.scheduler.engine.structured import TokenFilter

    def allowed_set(mask: bytes, vocab: int) -> set[int]:
        words = [int.from_bytes(mask[i:i + 4], "little") for i in range(0, len(mask), 4)]
        return {t for t in range(vocab) if words[t // 32] >> (t % 32) & 1}

    vocab = 100
    f = TokenFilter(vocab, [3, 5, 7, 8, 40, 64, 99], [[5], [7, 8], [1, 2, 64]])
    assert len(f.allowed()) == 4 * 4
    assert allowed_set(f.allowed(), vocab) == {3, 7, 8, 40, 64, 99}
    for token, banned in [(7, {8}), (3, set()), (1, set()), (2, {64}), (64, set())]:
        f.accept(token)
        assert allowed_set(f.allowed(), vocab) == {3, 7, 8, 40, 64, 99} - banned, token
    free = TokenFilter(vocab, [], [[0], [9, 9]])
    assert allowed_set(free.allowed(), vocab) >= set(range(1, vocab)) and 0 not in allowed_set(free.allowed(), vocab)

    class Format:  # a format allowing the even tokens
        def __init__(self):
            self.taken = []

        def allowed(self):
            return bytes.fromhex("55555555") * 4

        def accept(self, token):
            self.taken.append(token)
            return token % 2 == 0

        complete = True

    free.inner = Format()
    assert allowed_set(free.allowed(), vocab) == set(range(2, vocab, 2))
    free.accept(9)
    assert 9 not in allowed_set(free.allowed(), vocab) and free.inner.taken == [9] and free.complete


def test_bad_words_are_tokenized_as_written_and_after_a_space(tokenizer):
    from litelang.scheduler.engine.structured import bad_word_token_ids

    got = bad_word_token_ids(tokenizer.encode, ["return", "  fibonacci"])
    assert got == [tokenizer.encode("return"), tokenizer.encode(" return"), tokenizer.encode("fibonacci"),
                   tokenizer.encode(" fibonacci")]
    assert len(got[2]) == 2, "a word of two tokens keeps both"


FIM_PREFIX, FIM_SUFFIX = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))  # 你好\n"


def test_fill_in_the_middle_ids_match_hf_reading_the_fim_tokens(tokenizer, default_model_dir):
    """A suffix makes <|fim_prefix|> prompt <|fim_suffix|> suffix <|fim_middle|> (Qwen2.5-Coder's
    order). The oracle is HF tokenizing that text, splitting out the special tokens itself."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(default_model_dir))
    text = "<|fim_prefix|>" + FIM_PREFIX + "<|fim_suffix|>" + FIM_SUFFIX + "<|fim_middle|>"
    got = tokenizer.encode_fill_in_middle(FIM_PREFIX, FIM_SUFFIX)
    assert got == hf.encode(text, add_special_tokens=False)
    fim = [hf.convert_tokens_to_ids(t) for t in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")]
    assert list(tokenizer.fim_ids) == fim and len(set(fim)) == 3
    assert got[0] == fim[0] and got[-1] == fim[2] and got.count(fim[1]) == 1
    assert tokenizer.decode(got, skip_special_tokens=True) == FIM_PREFIX + FIM_SUFFIX


def test_fill_in_the_middle_without_fim_tokens_is_invalid_argument(tmp_path, default_model_dir):
    """A tokenizer without the three FIM tokens: a suffix is the client's mistake."""
    import json
    import shutil

    from litelang.scheduler.tokenizer import FIM_TOKENS, Tokenizer

    for name in ("tokenizer_config.json", "generation_config.json"):
        shutil.copy(default_model_dir / name, tmp_path / name)
    data = json.loads((default_model_dir / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in FIM_TOKENS]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    decoder = config.get("added_tokens_decoder", {})
    config["added_tokens_decoder"] = {k: v for k, v in decoder.items() if v["content"] not in FIM_TOKENS}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = Tokenizer(tmp_path)
    assert tokenizer.fim_ids is None
    with pytest.raises(InvalidRequest, match="no fill-in-the-middle tokens"):
        tokenizer.encode_fill_in_middle(FIM_PREFIX, FIM_SUFFIX)
    assert tokenizer.encode("hi") == Tokenizer(default_model_dir).encode("hi")


def test_the_test_dependencies_are_installed():
    """CI runs everything: modules that skip themselves where a package is missing (the OpenAI
    gateway's, on the device's GPU runs) must not be skipped here. `make test` installs these."""
    import importlib

    for name in ("openai", "fastapi", "uvicorn", "httptools", "hypothesis"):
        importlib.import_module(name)
