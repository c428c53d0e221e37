"""`stream_interval`: with N > 1, stream messages carry N tokens (the last may carry fewer), and the
stream still adds up to the unary completion."""

from __future__ import annotations

import pytest

from helpers import ServerGroup

pytestmark = pytest.mark.slow


def test_stream_interval_groups_tokens(tiny_model, tmp_path):
    with ServerGroup(tiny_model, tmp_path / "logs", kv_slots=512, stream_interval=4,
                     max_input_length=64, max_output_length=64) as group:
        prompt = [785, 3974, 13876, 38835, 374]
        whole = group.client.generate(prompt, max_new_tokens=18, temperature=0, ignore_eos=True, logprobs=True)
        chunks = list(group.client.generate_stream(prompt, max_new_tokens=18, temperature=0, ignore_eos=True, logprobs=True))
    sizes = [len(c.token_ids) for c in chunks]
    assert sizes == [4, 4, 4, 4, 2], sizes
    assert [t for c in chunks for t in c.token_ids] == list(whole.token_ids)
    assert "".join(c.text for c in chunks) == whole.text
    assert [lp for c in chunks for lp in c.logprobs] == pytest.approx(list(whole.logprobs))
    assert chunks[-1].finish_reason == whole.finish_reason != 0
