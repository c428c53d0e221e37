"""SamplingParams.top_logprobs end to end (real worker and scheduler processes, a tiny random
Qwen2 with the real tokenizer): each generated token comes with the N most likely tokens at its
position, HF transformers' log-softmax being the oracle; streaming and Chat carry the same;
bad values are INVALID_ARGUMENT."""

from __future__ import annotations

import threading

import grpc
import pytest
import torch


pytestmark = pytest.mark.slow

PROMPT = [785, 3974, 13876, 38835, 374]
NEW = 10
# a batch of several: requests that ask for alternatives share steps with ones that do not
SERVER_CONFIG = dict(kv_slots=512, max_batch_size=4, max_input_length=64, max_output_length=64)
ASK = dict(max_new_tokens=NEW, temperature=0, ignore_eos=True, logprobs=True, top_logprobs=5)


def hf_log_softmax(model_dir, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab]: HF's log-softmax after each prefix of ids."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def tops(messages) -> list[tuple[list[int], list[float]]]:
    return [(list(t.token_ids), list(t.logprobs)) for m in messages for t in m.top_logprobs]


def test_greedy_top_logprobs_match_hf(group, tiny_model):
    reply = group.client.generate(PROMPT, **ASK)
    ids, lps = list(reply.token_ids), list(reply.logprobs)
    assert len(ids) == len(lps) == len(reply.top_logprobs) == NEW
    want = hf_log_softmax(tiny_model, PROMPT + ids)
    for i, (top_ids, top_lps) in enumerate(tops([reply])):
        assert len(top_ids) == len(top_lps) == 5
        assert top_lps == sorted(top_lps, reverse=True), f"position {i}: most likely first"
        assert top_ids[0] == ids[i] and top_lps[0] == lps[i], f"position {i}: greedy token first, with its logprob"
        hf = want[len(PROMPT) - 1 + i].topk(5)
        assert top_ids == hf.indices.tolist(), f"position {i}"
        assert top_lps == pytest.approx(hf.values.tolist(), abs=1e-4), f"position {i}"


def test_stream_carries_what_unary_returns(group):
    whole = group.client.generate(PROMPT, **ASK)
    chunks = list(group.client.generate_stream(PROMPT, **ASK))
    assert [t for c in chunks for t in c.token_ids] == list(whole.token_ids)
    assert all(len(c.top_logprobs) == len(c.token_ids) for c in chunks)
    streamed, unary = tops(chunks), tops([whole])
    assert [ids for ids, _ in streamed] == [ids for ids, _ in unary]
    # values equal up to float rounding: the second run reads its prompt from the prefix cache
    assert [lp for _, lps in streamed for lp in lps] == pytest.approx([lp for _, lps in unary for lp in lps], abs=1e-5)


def hf_token_bytes(model_dir):
    """ids -> each one's bytes, by HF's tokenizer: its vocabulary entry through GPT-2's byte-level
    alphabet read backwards (an added token's entry is its text)."""
    from transformers import AutoTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    hf = AutoTokenizer.from_pretrained(str(model_dir))
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    added = {i: t.content for i, t in hf.added_tokens_decoder.items()}

    def spell(ids) -> list[bytes]:
        return [added[i].encode("utf-8") if i in added else bytes(byte_of[c] for c in hf.convert_ids_to_tokens(i))
                for i in ids]

    return spell


def test_replies_spell_each_token_and_alternative(group, tiny_model):
    """With logprobs, every stream chunk, the unary reply and a Chat turn carry each token's bytes
    and each alternative's (as HF's vocabulary spells the ids), and a scored prompt its own; the
    stream's bytes are the unary reply's. A request without logprobs gets none."""
    spell = hf_token_bytes(tiny_model)
    chunks = list(group.client.generate_stream(PROMPT, **ASK))
    assert sum(len(c.token_ids) for c in chunks) == NEW
    for c in chunks:
        assert list(c.token_bytes) == spell(c.token_ids)
        assert [list(t.token_bytes) for t in c.top_logprobs] == [spell(t.token_ids) for t in c.top_logprobs]
    whole = group.client.generate(PROMPT, **ASK, prompt_logprobs=2)
    assert list(whole.token_bytes) == [b for c in chunks for b in c.token_bytes]
    assert [list(t.token_bytes) for t in whole.top_logprobs] == [spell(t.token_ids) for t in whole.top_logprobs]
    assert list(whole.prompt_token_bytes) == spell(PROMPT)
    assert [list(t.token_bytes) for t in whole.prompt_top_logprobs] == [spell(t.token_ids)
                                                                        for t in whole.prompt_top_logprobs]
    plain = group.client.generate(PROMPT, max_new_tokens=3, temperature=0, ignore_eos=True)
    assert len(plain.token_ids) == 3 and not plain.token_bytes
    chat = group.client.chat(max_new_tokens=4, temperature=0, ignore_eos=True)
    try:
        turn = [m.chunk for m in chat.send("hello", logprobs=True, top_logprobs=2) if m.WhichOneof("msg") == "chunk"]
    finally:
        chat.close()
    assert sum(len(c.token_ids) for c in turn) == 4
    assert all(list(c.token_bytes) == spell(c.token_ids) for c in turn)
    assert all(list(t.token_bytes) == spell(t.token_ids) for c in turn for t in c.top_logprobs)


def test_only_requests_that_ask_get_alternatives(group):
    """A request beside one that asks gets none, and the same tokens and logprobs as alone (its
    steps left the greedy kernel for the full sampling path)."""
    plain = dict(max_new_tokens=NEW, temperature=0, ignore_eos=True, logprobs=True)
    alone = group.client.generate([11, 22, 33], **plain)
    results = {}

    def run(name, prompt, params):
        results[name] = group.client.generate(prompt, **params)

    threads = [threading.Thread(target=run, args=("asks", PROMPT, dict(ASK, max_new_tokens=NEW + 6))),
               threading.Thread(target=run, args=("plain", [11, 22, 33], plain))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results["asks"].top_logprobs) == NEW + 6
    assert not results["plain"].top_logprobs
    assert list(results["plain"].token_ids) == list(alone.token_ids)
    assert list(results["plain"].logprobs) == pytest.approx(list(alone.logprobs), abs=1e-5)


def test_chat_turn_chunks_carry_logprobs_and_alternatives(group):
    chat = group.client.chat(max_new_tokens=6, temperature=0, ignore_eos=True)
    try:
        msgs = list(chat.send("hello", logprobs=True, top_logprobs=3))
        chunks = [m.chunk for m in msgs if m.WhichOneof("msg") == "chunk"]
        assert msgs[-1].WhichOneof("msg") == "end"
        ids = [t for c in chunks for t in c.token_ids]
        assert len(ids) == 6 == len([lp for c in chunks for lp in c.logprobs]) == len(tops(chunks))
        for token, (top_ids, _) in zip(ids, tops(chunks)):
            assert len(top_ids) == 3 and top_ids[0] == token
        bad = list(chat.send("again", top_logprobs=3))  # without logprobs: an in-band error
        assert bad[-1].WhichOneof("msg") == "error"
        assert bad[-1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "needs logprobs" in bad[-1].error.message
    finally:
        chat.close()


@pytest.mark.parametrize("params, words", [
    (dict(logprobs=True, top_logprobs=21), "[0, 20]"),
    (dict(logprobs=True, top_logprobs=-3), "[0, 20]"),
    (dict(top_logprobs=2), "top_logprobs needs logprobs: true"),
])
def test_bad_top_logprobs_are_invalid_argument(group, params, words):
    for call in (group.client.generate, lambda *a, **k: list(group.client.generate_stream(*a, **k))):
        with pytest.raises(grpc.RpcError) as info:
            call(PROMPT, max_new_tokens=2, **params)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in info.value.details()
