"""Incremental detokenization: turn a growing token list into text deltas.

A byte-level BPE token can end in the middle of a multi-byte UTF-8 character; decoding it
alone yields U+FFFD. Both detokenizers here hold such tails back until the following tokens
complete them.

- ByteLevelDetokenizer (Qwen2 and other byte-level BPE tokenizers): each token id maps to a
  fixed byte string, looked up in a table built once; an incremental UTF-8 decoder does the
  rest. O(1) per token, no tokenizer call: the scheduler runs this for every token of every
  running request between two GPU steps.
- IncrementalDetokenizer (any tokenizer): decodes a small window of recent tokens with the
  tokenizer and emits what is new.
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litelang.scheduler.tokenizer import Tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: every byte as one printable character (GPT-2's scheme)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def byte_level_table(hf_tokenizer) -> tuple[list[bytes], set[int]] | None:
    """(bytes of every token id, ids of special tokens), or None if the tokenizer is not plain
    byte-level BPE (then the generic detokenizer is used)."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.decoder).__name__ != "ByteLevel":
        return None
    if getattr(hf_tokenizer, "clean_up_tokenization_spaces", False):
        return None
    char_to_byte = {c: b for b, c in _bytes_to_unicode().items()}
    added = {i: t for i, t in hf_tokenizer.added_tokens_decoder.items()}
    table: list[bytes] = []
    for i, piece in enumerate(hf_tokenizer.convert_ids_to_tokens(list(range(len(hf_tokenizer))))):
        if i in added:
            table.append(added[i].content.encode("utf-8"))
        elif piece is None:
            table.append(b"")
        else:
            try:
                table.append(bytes(char_to_byte[c] for c in piece))
            except KeyError:
                return None
    return table, {i for i, t in added.items() if t.special}


class ByteLevelDetokenizer:
    def __init__(self, table: list[bytes], special_ids: set[int], skip_special_tokens: bool = False):
        self.table, self.special_ids, self.skip = table, special_ids, skip_special_tokens
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        """Append one token and return the text it completes (possibly empty)."""
        if self.skip and token_id in self.special_ids:
            return ""
        piece = self.table[token_id] if 0 <= token_id < len(self.table) else b""
        return self.decoder.decode(piece)


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
