"""Incremental detokenization: turn a growing token list into text deltas.

A byte-level BPE token can end in the middle of a multi-byte UTF-8 character; decoding it
alone yields U+FFFD. We hold such tails back until the following tokens complete them, and
decode a small window (from `prefix_offset`) rather than the whole output every step.
"""

from __future__ import annotations

from litelang.scheduler.tokenizer import Tokenizer


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.tokens: list[int] = []
        self.prefix_offset = 0  # start of the window decoded for context
        self.read_offset = 0    # tokens before this are already turned into text

    def add(self, token_id: int) -> str:
        """Append one token and return the text it completes (possibly empty)."""
        self.tokens.append(token_id)
        decode = lambda ids: self.tokenizer.decode(ids, self.skip_special_tokens)  # noqa: E731
        prefix_text = decode(self.tokens[self.prefix_offset : self.read_offset])
        new_text = decode(self.tokens[self.prefix_offset :])
        if new_text.endswith("\ufffd") or len(new_text) <= len(prefix_text):
            return ""  # an incomplete character (or a token with no text): wait for more
        self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
        return new_text[len(prefix_text) :]
