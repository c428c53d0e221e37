"""End to end on the real default checkpoint: greedy completions served by litelang (real worker
and scheduler processes, real gRPC on loopback) equal HF transformers' greedy completions;
concurrency doesn't change greedy tokens; streaming text equals unary text and never carries a
broken multi-byte character."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from litelang.proto import litelang_pb2 as pb

pytestmark = pytest.mark.slow

NEW_TOKENS = 32
# concurrent requests (test_concurrent_requests_match_solo) and PROMPTS' longest prompt and reply
SERVER_CONFIG = dict(kv_slots=2048, max_batch_size=8, max_input_length=512, max_output_length=256, max_reqs=32)

PROMPTS: dict[str, str | list[dict[str, str]] | tuple[str, str]] = {
    "fibonacci": "def fibonacci(n):",
    "numpy": "import numpy as np\n",
    "long": (
        "class LRUCache:\n"
        '    """A least-recently-used cache with a fixed capacity.\n\n'
        "    get(key) returns the stored value or -1 when the key is missing;\n"
        "    put(key, value) inserts or updates the key and, when the cache is full,\n"
        "    evicts the entry that was used least recently.\n"
        '    """\n\n'
        "    def __init__(self, capacity: int):\n"
    ),
    "chat": [{"role": "user", "content": "Write a Python function that checks whether a number is prime."}],
    # a reply that ends well before NEW_TOKENS: both sides must stop at the same EOS
    "chat_short": [{"role": "user", "content": "What is the capital of France? Answer with one word."}],
    # (prompt, suffix): fill in the middle
    "fim": ("def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"),
}

# a chat reply whose text starts with a character the tokenizer splits over two tokens (龘)
CJK_CHAT = [{"role": "user", "content": "请写出五个生僻汉字，例如：龘、靐、齉"}]


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(default_model_dir))


@pytest.fixture(scope="module")
def eos_ids(default_model_dir) -> set[int]:
    import json

    eos = json.loads((default_model_dir / "generation_config.json").read_text())["eos_token_id"]
    return set(eos if isinstance(eos, list) else [eos])


def hf_prompt_ids(tokenizer, prompt) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer(prompt).input_ids
    if isinstance(prompt, tuple):  # HF reads the FIM tokens out of the text itself
        return tokenizer("<|fim_prefix|>" + prompt[0] + "<|fim_suffix|>" + prompt[1] + "<|fim_middle|>").input_ids
    return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"])


@pytest.fixture(scope="module")
def hf_greedy(default_model_dir, tokenizer) -> dict[str, tuple[list[int], list[int]]]:
    """name -> (prompt ids, HF greedy completion ids). HF stops at generation_config.json's EOS
    ids and includes the EOS token, as litelang does."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(default_model_dir), dtype=torch.float32).eval()
    out = {}
    with torch.no_grad():
        for name, prompt in PROMPTS.items():
            ids = hf_prompt_ids(tokenizer, prompt)
            x = torch.tensor([ids])
            gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS, do_sample=False)
            out[name] = (ids, gen[0, len(ids):].tolist())
        # vLLM's bad_words and allowed_token_ids, against HF's bad_words_ids and prefix_allowed_tokens_fn
        ids = hf_prompt_ids(tokenizer, PROMPTS["fibonacci"])
        x = torch.tensor([ids])
        bad = [tokenizer.encode(w, add_special_tokens=False) for word in BAD_WORDS for w in (word, " " + word)]
        gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS, do_sample=False,
                             bad_words_ids=bad)
        out["bad_words"] = (ids, gen[0, len(ids):].tolist())
        allowed = sorted(set(out["fibonacci"][1]) - {out["fibonacci"][1][0]})  # not the first token it chose
        gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS, do_sample=False,
                             prefix_allowed_tokens_fn=lambda batch, prefix: allowed)
        out["allowed"] = (allowed, gen[0, len(ids):].tolist())
    del model
    return out


@pytest.fixture(scope="module")
def served_model(default_model_dir, hf_greedy):
    """The real checkpoint for `group`; hf_greedy first: the HF model is freed before the worker
    loads its copy."""
    return default_model_dir


@pytest.fixture(scope="module")
def solo(group) -> dict[str, pb.GenerateResponse]:
    """Each prompt sent alone (one after the other), greedy."""
    def send(prompt) -> pb.GenerateResponse:
        if isinstance(prompt, tuple):
            return group.client.generate(prompt[0], suffix=prompt[1], max_new_tokens=NEW_TOKENS, temperature=0)
        return group.client.generate(prompt, max_new_tokens=NEW_TOKENS, temperature=0)

    return {name: send(p) for name, p in PROMPTS.items()}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_greedy_matches_hf(name, solo, hf_greedy, tokenizer, eos_ids):
    prompt_ids, expected = hf_greedy[name]
    got = solo[name]
    assert got.usage.prompt_tokens == len(prompt_ids), "litelang tokenized the prompt differently from HF"
    assert list(got.token_ids) == expected, (
        f"litelang: {tokenizer.decode(got.token_ids)!r}\nHF:       {tokenizer.decode(expected)!r}"
    )
    assert got.usage.completion_tokens == len(expected)
    if expected[-1] in eos_ids:
        assert got.finish_reason == pb.FINISH_REASON_EOS
        assert got.text == tokenizer.decode(expected[:-1])  # the EOS token is not part of the text
    else:
        assert len(expected) == NEW_TOKENS
        assert got.finish_reason == pb.FINISH_REASON_LENGTH
        assert got.text == tokenizer.decode(expected)


def test_short_chat_reply_stops_at_eos(solo, eos_ids):
    """Makes the EOS case of test_greedy_matches_hf non-vacuous: this reply does end early."""
    got = solo["chat_short"]
    assert got.finish_reason == pb.FINISH_REASON_EOS, got
    assert 0 < len(got.token_ids) < NEW_TOKENS and got.token_ids[-1] in eos_ids
    assert "Paris" in got.text


def test_fill_in_the_middle_writes_the_middle(group, solo, hf_greedy, tokenizer):
    """Makes the fim case of test_greedy_matches_hf non-vacuous: the server's prompt is HF's FIM
    prompt, and the reply fills the gap (the sum the suffix's print expects), then ends at an EOS."""
    prompt_ids = hf_greedy["fim"][0]
    assert prompt_ids[0] == tokenizer.convert_tokens_to_ids("<|fim_prefix|>")
    assert list(group.client.tokenize(*PROMPTS["fim"]).token_ids) == prompt_ids
    got = solo["fim"]
    assert got.finish_reason == pb.FINISH_REASON_EOS and got.text.startswith("a + b"), got.text


BAD_WORDS = ["return", "fibonacci"]  # one token each way, and two tokens as written


def test_bad_words_match_hf_bad_words_ids(group, solo, hf_greedy, tokenizer):
    """The free reply writes the words; with bad_words it does not, and it equals HF's greedy
    reply with those words' ids (each as written and after a space) as bad_words_ids."""
    free = list(solo["fibonacci"].token_ids)
    banned = [tokenizer.encode(w, add_special_tokens=False) for word in BAD_WORDS for w in (word, " " + word)]
    assert any(free[i:i + len(b)] == b for b in banned for i in range(len(free))), "the free reply has none of them"
    got = group.client.generate(PROMPTS["fibonacci"], max_new_tokens=NEW_TOKENS, temperature=0, bad_words=BAD_WORDS)
    assert list(got.token_ids) == hf_greedy["bad_words"][1], tokenizer.decode(got.token_ids)
    ids = list(got.token_ids)
    assert not any(ids[i:i + len(b)] == b for b in banned for i in range(len(ids)))


def test_allowed_token_ids_match_hf_prefix_allowed_tokens(group, hf_greedy, tokenizer):
    """Only the allowed ids (the free reply's, less its first token), as HF's
    prefix_allowed_tokens_fn gives them; no EOS among them, so the reply runs to its limit."""
    allowed, want = hf_greedy["allowed"]
    got = group.client.generate(PROMPTS["fibonacci"], max_new_tokens=NEW_TOKENS, temperature=0,
                                allowed_token_ids=allowed)
    assert list(got.token_ids) == want, tokenizer.decode(got.token_ids)
    assert set(got.token_ids) <= set(allowed) and got.finish_reason == pb.FINISH_REASON_LENGTH


def test_ignore_eos_runs_past_eos(group, solo):
    n = len(solo["chat_short"].token_ids) + 3
    got = group.client.generate(PROMPTS["chat_short"], max_new_tokens=n, temperature=0, ignore_eos=True)
    assert got.finish_reason == pb.FINISH_REASON_LENGTH
    assert len(got.token_ids) == n
    assert list(got.token_ids[: n - 3]) == list(solo["chat_short"].token_ids)


def test_concurrent_requests_match_solo(group, solo, tokenizer):
    """Prompts of different lengths, sent concurrently and staggered (so prefills of newcomers mix
    with decodes of running requests), give exactly the tokens each gives alone."""
    names = ["long", "fibonacci", "chat", "numpy"]
    results: dict[str, pb.GenerateResponse | BaseException] = {}
    max_running = 0
    done = threading.Event()

    def send(i: int, name: str) -> None:
        time.sleep(0.4 * i)
        try:
            results[name] = group.client.generate(PROMPTS[name], max_new_tokens=NEW_TOKENS, temperature=0)
        except BaseException as e:  # noqa: BLE001 - reported below
            results[name] = e

    def watch() -> None:
        nonlocal max_running
        while not done.is_set():
            max_running = max(max_running, group.client.stats().running)
            time.sleep(0.05)

    threads = [threading.Thread(target=send, args=(i, n)) for i, n in enumerate(names)]
    watcher = threading.Thread(target=watch)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    done.set()
    watcher.join()
    assert all(not t.is_alive() for t in threads), "a concurrent request hung"
    for name in names:
        got = results[name]
        assert not isinstance(got, BaseException), f"{name}: {got!r}"
        assert list(got.token_ids) == list(solo[name].token_ids), (
            f"{name} concurrently: {tokenizer.decode(got.token_ids)!r}\nalone: {solo[name].text!r}"
        )
        assert got.text == solo[name].text
    assert max_running >= 2, f"the requests never ran in one batch (max running {max_running})"


def test_stream_concatenation_equals_generate(group, solo):
    chunks = list(group.client.generate_stream(PROMPTS["long"], max_new_tokens=NEW_TOKENS, temperature=0))
    assert len(chunks) > 1, "expected the completion in several chunks"
    assert "".join(c.text for c in chunks) == solo["long"].text
    assert [t for c in chunks for t in c.token_ids] == list(solo["long"].token_ids)
    assert all(c.finish_reason == pb.FINISH_REASON_UNSPECIFIED for c in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason == solo["long"].finish_reason
    assert last.usage.completion_tokens == len(solo["long"].token_ids)
    assert last.usage.prompt_tokens == solo["long"].usage.prompt_tokens
    assert len({c.request_id for c in chunks}) == 1 and chunks[0].request_id


def test_stream_never_splits_a_multibyte_character(group, tokenizer, eos_ids):
    chunks = list(group.client.generate_stream(CJK_CHAT, max_new_tokens=16, temperature=0))
    ids = [t for c in chunks for t in c.token_ids]
    text = "".join(c.text for c in chunks)
    # the test only means something if the reply has CJK text with a character split over tokens
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text), text
    assert any("\ufffd" in tokenizer.decode([t]) for t in ids), "no generated token ends mid-character"
    for i, c in enumerate(chunks):
        assert "\ufffd" not in c.text, f"chunk {i} carries a broken character: {c.text!r}"
    if ids[-1] in eos_ids:
        ids = ids[:-1]
    assert text == tokenizer.decode(ids)


def test_async_client_concurrent_streams_match_solo(group, solo, tokenizer):
    """The asyncio client: two streams and a unary call at once give the solo greedy tokens."""
    import asyncio

    from litelang.client.api import AsyncLitelangClient

    n = 8

    async def main():
        async with AsyncLitelangClient(group.address, timeout=180) as client:
            async def stream(name):
                ids, text = [], []
                async for chunk in client.generate_stream(PROMPTS[name], max_new_tokens=n, temperature=0):
                    ids.extend(chunk.token_ids)
                    text.append(chunk.text)
                return ids, "".join(text)

            async def unary(name):
                reply = await client.generate(PROMPTS[name], max_new_tokens=n, temperature=0)
                return list(reply.token_ids), reply.text

            return await asyncio.gather(stream("numpy"), stream("chat"), unary("long"))

    for name, (ids, text) in zip(["numpy", "chat", "long"], asyncio.run(main())):
        assert ids == list(solo[name].token_ids[:n]), name
        assert text == tokenizer.decode(ids), name
